"""The app's per-session state: one typed object in `st.session_state`, created once per session.

Every page reads and writes `get()`; nothing else goes into `st.session_state` except widget
keys. Results (traces, edit runs) live here, per browser session, so two sessions never see each
other's results. What a user *made* survives a browser reload or an app restart:
- the edit table draft is written to the workspace (`<workspace>/app/draft.json`) on every change
  and a new session starts from it;
- applied batches are in the edit ledger (`core.ledger`), which the History page reads.
The model itself is shared by all sessions (see `workbench.loader`).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from core.paths import workspace_dir

STATE_KEY = "workbench_state"
DEFAULT_MODEL_ENV = "WORKBENCH_DEFAULT_MODEL"
DRAFT_COLUMNS = ["subject", "relation", "prompt", "target_new", "target_true",
                 "paraphrase_prompts", "neighborhood_prompts", "generation_prompts"]


def default_model_name() -> str:
    """The model the app opens with: `WORKBENCH_DEFAULT_MODEL` or the shipped demo model."""
    return os.environ.get(DEFAULT_MODEL_ENV) or "demo"


@dataclass
class RunRecord:
    """One edit run of this session, as the Results page shows it."""

    method: str
    requests: list                        # list[core.requests.EditRequest]
    result: Any                           # core.memit.EditResult
    applied: Any                          # core.editing.AppliedEdit (None once undone)
    metrics_pre: Any = None               # pandas.DataFrame, per edit, before the edit
    metrics_post: Any = None              # pandas.DataFrame, per edit, after the edit
    generations: Any = None               # pandas.DataFrame: prompt, kind, before, after
    batch_id: Any = None                  # ledger id once recorded
    model_key: tuple = ()                 # loader key of the model the edit was applied to
    seconds: float = 0.0                  # wall time of the whole run
    after_trace: Any = None               # trace of one of its facts after the edit


@dataclass
class WorkbenchState:
    """Everything a session has chosen or computed."""

    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # model choice (the handle itself is cached and shared; see workbench.loader)
    model_name: str = field(default_factory=default_model_name)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    # trace page
    trace_prompt: str = ""
    trace_subject: str = ""
    trace: Any = None                     # core.tracing result (hidden / mlp / attn)
    severed: Any = None                   # severed-path result
    trace_avg: Any = None                 # averaged trace over facts
    suggestion: Any = None                # suggested layer range with its evidence
    edit_layers: list[int] | None = None  # chosen with "use these layers for editing"
    # edit page: the editor shows `draft_base` under a key that changes with `draft_version`
    # (a new base resets the editor); `draft_rows` is the table as the user sees it now.
    draft_rows: list[dict] = field(default_factory=list)
    draft_base: list[dict] = field(default_factory=list)
    draft_version: int = 0
    method: str = "memit"
    capacity: Any = None                  # DataFrame from edit_flow.capacity_table (derived, not saved)
    capacity_for: Any = None              # edit_flow.capacity_signature of the batch it was read for
    # results
    runs: list[RunRecord] = field(default_factory=list)
    # evaluate page
    comparison: Any = None                # core.scaling.Comparison
    scaling: Any = None                   # DataFrame from core.scaling.run_scaling
    # one-shot message shown after a rerun (e.g. "Batch 3 undone")
    flash: str | None = None
    # learn page
    learn_step: int = 0
    learn: dict = field(default_factory=dict)

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None

    @property
    def editor_key(self) -> str:
        return f"edit_table_{self.draft_version}"

    def set_draft(self, rows: list[dict]) -> None:
        """Replace the whole table (examples, upload, clear) and persist it."""
        self.draft_rows = [clean_row(r) for r in rows]
        self.draft_base = list(self.draft_rows)
        self.draft_version += 1
        save_draft(self.draft_rows)

    def update_draft(self, rows: list[dict]) -> None:
        """The user edited the table: persist what it shows now (the editor keeps its base)."""
        rows = [clean_row(r) for r in rows]
        if rows != self.draft_rows:
            self.draft_rows = rows
            save_draft(rows)


def clean_row(row: dict) -> dict:
    """A draft row with exactly the table's columns, as stripped strings ('' when missing)."""
    out = {}
    for c in DRAFT_COLUMNS:
        v = row.get(c)
        out[c] = "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()
    return out


def draft_path() -> Path:
    path = workspace_dir() / "app"
    path.mkdir(parents=True, exist_ok=True)
    return path / "draft.json"


def save_draft(rows: list[dict]) -> None:
    """Atomic write (temp file + rename): a crash never leaves half a draft."""
    path = draft_path()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".draft-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    os.replace(tmp, path)


def load_draft() -> list[dict]:
    """The last saved draft ([] when none or unreadable)."""
    try:
        data = json.loads(draft_path().read_text())
        return [clean_row(r) for r in data.get("rows", []) if isinstance(r, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def get() -> WorkbenchState:
    """This session's state, created on first use (with the persisted draft)."""
    if STATE_KEY not in st.session_state:
        draft = load_draft()
        st.session_state[STATE_KEY] = WorkbenchState(draft_rows=draft, draft_base=list(draft))
    return st.session_state[STATE_KEY]
