"""Shared UI helpers for the pages: errors, progress, the model handle, safe text, downloads.

Pages stay thin by going through these:
- `guard()` turns any error from core into a readable `st.error` (never a traceback);
- `progress()` adapts core's `progress(done, total, phase)` callbacks to `st.progress`;
- `require_handle()` returns the session's (shared, cached) model handle or stops the page with
  a message that says what to do;
- user text is only ever shown through `st.text`, dataframes, or `escape_md` (Markdown with
  every markup character escaped; Streamlit never renders raw HTML unless told to, and we never
  tell it to).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import re
import time
from pathlib import Path

import streamlit as st

from core.errors import WorkbenchError
from workbench import loader, state
from workbench.charts.labels import plot_safe  # noqa: F401 (re-exported for pages)

LOG = logging.getLogger("workbench.app")
PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>:~$=^&\"'])")


def page_path(name: str) -> str:
    """Absolute path of a page script (for st.page_link / st.switch_page)."""
    return str(PAGES_DIR / f"{name}.py")


# ---- errors ---------------------------------------------------------------------------------

def show_error(err: BaseException, what: str = "") -> None:
    """A readable error box: the message for WorkbenchError, type + message for anything else."""
    prefix = f"{what}: " if what else ""
    if isinstance(err, WorkbenchError):
        st.error(escape_md(f"{prefix}{err}"), icon=":material/error:")
        problems = getattr(err, "problems", None)
        if problems:
            st.dataframe(problems_frame(problems), hide_index=True)
    else:
        LOG.exception("unexpected error %s", what)
        text = f"{prefix}unexpected {type(err).__name__}: {err}. The server log has the details."
        st.error(escape_md(text), icon=":material/report:")


@contextlib.contextmanager
def guard(what: str = ""):
    """`with ui.guard("Tracing"): ...` — errors become an st.error; the page keeps running.

    Streamlit's own control flow (st.stop, st.rerun) derives from BaseException and passes.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 (the point: nothing reaches the user as a traceback)
        show_error(err, what)


def problems_frame(problems):
    """Row problems (objects with row/field/message) as a table the user can read."""
    import pandas as pd

    return pd.DataFrame([{"row": getattr(p, "row", None), "field": getattr(p, "field", ""),
                          "problem": getattr(p, "message", str(p))} for p in problems])


# ---- progress -------------------------------------------------------------------------------

@contextlib.contextmanager
def progress(label: str):
    """Yields a `progress(done, total, phase)` callback that drives an st.progress bar."""
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int, phase: str = "") -> None:
        frac = 0.0 if not total else min(max(done / total, 0.0), 1.0)
        text = f"{label} — {phase} ({done}/{total})" if phase else f"{label} ({done}/{total})"
        bar.progress(frac, text=text)

    try:
        yield update
    finally:
        bar.empty()


# ---- model ----------------------------------------------------------------------------------

def current_key(s: state.WorkbenchState) -> tuple:
    return loader.model_key(s.model_name, s.device, s.dtype, s.trust_remote_code)


def require_handle(s: state.WorkbenchState | None = None):
    """The session's model handle, loading it once (cached for all sessions); stops the page
    with a readable message when it cannot be loaded."""
    s = s or state.get()
    try:
        with st.spinner(f"Loading model '{s.model_name}' (once per server) …"):
            return loader.get_handle(current_key(s))
    except Exception as err:  # noqa: BLE001
        show_error(err, "Model")
        st.page_link(page_path("model"), label="Choose another model on the Model page",
                     icon=":material/memory:")
        st.stop()


def empty_state(message: str, page: str | None = None, label: str | None = None) -> None:
    """What to do next, with a link to the page that does it."""
    st.info(message, icon=":material/lightbulb:")
    if page:
        st.page_link(page_path(page), label=label or f"Go to {page}", icon=":material/arrow_forward:")


# ---- safe text ------------------------------------------------------------------------------

def escape_md(text: str) -> str:
    """User text made inert for st.markdown: every markup character backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def word_diff(before: str, after: str) -> list[tuple[str, bool]]:
    """Words of `after`, each with whether it differs from `before` (difflib on word lists)."""
    a, b = str(before).split(), str(after).split()
    out: list[tuple[str, bool]] = []
    for op, _i1, _i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        out += [(w, op != "equal") for w in b[j1:j2]]
    return out


def diff_markdown(before: str, after: str, colour: str = "orange") -> str:
    """`after` as escaped Markdown with the words that changed from `before` highlighted."""
    parts = []
    for word, changed in word_diff(before, after):
        w = escape_md(word)
        parts.append(f":{colour}-background[{w}]" if changed else w)
    return " ".join(parts) if parts else "*(empty)*"


# ---- downloads ------------------------------------------------------------------------------

def csv_bytes(df) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


def png_download(fig, file_name: str, key: str, label: str = "Chart as PNG") -> None:
    """A download button that renders the plotly figure to PNG only when clicked (disabled, with
    the reason, when there is no Chrome/Chromium for kaleido to render with)."""
    from workbench.charts.export import figure_to_png, find_browser

    ok = find_browser() is not None
    st.download_button(label, data=lambda: figure_to_png(fig), file_name=file_name,
                       mime="image/png", key=key, on_click="ignore", icon=":material/image:",
                       disabled=not ok, help=None if ok else "PNG export needs Chrome or Chromium "
                       "(e.g. `apt-get install chromium`); the chart's own camera icon still works.")


# ---- model card -----------------------------------------------------------------------------

def model_facts(handle) -> dict:
    """What the model card shows, as label → value."""
    info = handle.info()
    return {
        "Family": info["family"],
        "Layers": info["n_layers"],
        "Hidden width (d_model)": info["d_model"],
        "MLP width (d_mlp)": info["d_mlp"],
        "Parameters": f"{info['n_params']:,}",
        "Vocabulary": f"{info['vocab_size']:,}",
        "Context": info["max_length"],
        "Device / dtype": f"{info['device']} / {info['dtype']}",
        "Edited module": info["mlp_out_path"],
    }


def sidebar_card(s: state.WorkbenchState) -> None:
    """Compact model card in the sidebar; never loads a model that failed before."""
    st.caption("MODEL")
    try:
        with st.spinner("Loading model …"):
            handle = loader.get_handle(current_key(s))
    except Exception:  # noqa: BLE001 (the Model page shows the full error)
        st.warning(f"'{escape_md(s.model_name)}' is not loaded", icon=":material/error:")
        return
    info = handle.info()
    st.markdown(f"**{escape_md(s.model_name)}** · {escape_md(info['family'])}")
    room = info.get("key_room")
    st.caption(f"{info['n_layers']} layers · d={info['d_model']} · {info['n_params'] / 1e6:.1f} M params"
               + (f" · key room +{room['extra']:,} at layer {', '.join(map(str, room['layers']))}" if room else ""),
               help="Key room (key_room.json in the model folder): dormant MLP units added at load — "
               "zero output weights, so the model computes the same — that give MEMIT more key "
               "dimensions to store edits apart. See the demo model's card." if room else None)
    st.caption(f"Edit state: {edit_state_text(handle)}")


SESSIONS_SHOWN = 8


def sessions_menu(s: state.WorkbenchState) -> None:
    """A small menu of saved sessions, most recent first, each with Open and Delete (asks first);
    lists only while open. The tab's own session can be neither; one open in another tab opens
    as a copy and cannot be deleted."""
    menu = st.popover("Sessions", icon=":material/folder_open:", key="sessions_menu", on_change="rerun",
                      help="Each session's traces, edit runs, evaluations, tour progress and edit "
                      "table are saved in the workspace on every change, under the id in the URL: "
                      "a reload restores them. Open or delete an earlier session here. "
                      + state.retention_text())
    if not menu.open:
        return
    with menu:
        saved = state.saved_sessions(limit=SESSIONS_SHOWN)
        if not saved:
            st.caption("Nothing saved yet: a session is saved once you trace, edit or type a row.")
        elsewhere = state.owners().held(but=state.tab_id())
        for sid, when, summary in saved:
            if sid == s.session_id:
                text, now = st.columns([4, 2], vertical_alignment="center")
                text.caption(session_label(when, summary))
                now.caption("open now")
                continue
            text, open_col, delete_col = st.columns([4, 1, 1], vertical_alignment="center")
            text.caption(session_label(when, summary))
            other = sid in elsewhere
            open_col.button("Open", key=f"open_session_{sid}", on_click=state.open_session, args=(sid,),
                            type="tertiary", help=f"Continue session {sid} in this tab" + (
                                " (it is open in another tab, so this tab gets a copy)." if other else "."))
            delete_col.button("", key=f"delete_session_{sid}", icon=":material/delete:", type="tertiary",
                              on_click=_ask_delete, args=(s, sid), disabled=other,
                              help="Open in another tab: close it there first." if other else
                              f"Delete session {sid} (asks first).")
            if s.delete_pending == sid:
                st.warning("Delete this session? Its traces, edit runs and table are gone for good; "
                           "applied edit batches stay in the History page's ledger.",
                           icon=":material/delete:")
                row = st.container(horizontal=True, gap="small")
                row.button("Delete", key="confirm_delete_session", type="primary",
                           on_click=state.delete_saved, args=(sid,))
                row.button("Cancel", key="cancel_delete_session", on_click=_ask_delete, args=(s, None))


def _ask_delete(s: state.WorkbenchState, session_id: str | None) -> None:
    s.delete_pending = session_id


def session_label(when: float, summary: dict) -> str:
    """'12 Mar 14:03 · demo · 2 traces · R [3, 4] · 1 run · 3 rows' (escaped Markdown)."""
    parts = [time.strftime("%d %b %H:%M", time.localtime(when))]
    if isinstance(summary.get("model"), str):
        parts.append(Path(summary["model"]).name or summary["model"])
    for key, word in (("traces", "trace"), ("layers", "R"), ("runs", "run"),
                      ("evaluations", "evaluation"), ("draft_rows", "row")):
        v = summary.get(key)
        if key == "layers" and isinstance(v, list) and v:
            parts.append(f"R {v}")
        elif isinstance(v, int) and v > 0:
            parts.append(f"{v} {word}{'' if v == 1 else 's'}")
    return escape_md(" · ".join(parts))


def edit_state_text(handle) -> str:
    """'clean' or 'N batches applied' (from the workspace's edit ledger)."""
    n = loader.applied_batches(handle)
    return "no edit batches applied" if n == 0 else f"{n} edit batch{'es' if n != 1 else ''} applied"


# ---- charts ---------------------------------------------------------------------------------

def plot_safe_result(result):
    """A copy of a trace result whose user-derived strings (tokens, prompt, answer) are plot-safe."""
    import dataclasses

    return dataclasses.replace(result, tokens=[plot_safe(t) for t in result.tokens],
                               prompt=plot_safe(result.prompt), subject=plot_safe(result.subject),
                               answer=plot_safe(result.answer))


def model_export(handle, key: str) -> None:
    """The edited model: a zip download for small models, else saved to a folder the user names."""
    from workbench import results_flow

    size = results_flow.model_size_bytes(handle)
    if size <= results_flow.MODEL_ZIP_LIMIT:
        st.download_button("Edited model (zip)", lambda: results_flow.model_zip_bytes(handle),
                           file_name="edited-model.zip", mime="application/zip", key=key,
                           on_click="ignore", icon=":material/folder_zip:",
                           help="save_pretrained of the model as it is now (all applied batches); "
                           "loads in plain transformers.")
        return
    folder = st.text_input("Save edited model to folder", key=f"{key}_folder",
                           help=f"The model has {size / 2**30:.1f} GiB: too big to zip in the browser.")
    if st.button("Save model", key=f"{key}_save", disabled=not folder):
        from core.patch import save_edited_model

        with guard("Save model"), st.spinner("Saving …"):
            out = save_edited_model(handle, folder)
            st.success(f"Saved to {escape_md(out)}", icon=":material/check_circle:")
