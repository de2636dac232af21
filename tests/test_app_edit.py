"""AppTest: the edit page (table, upload, apply, undo) and the evaluate page's method comparison.
Helpers and the app's model: tests/app_helpers.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.app_helpers import (
    array, errors, handle_of, new_app, open_page, plotly_specs, same_weights, unescape, weights,
)
from workbench.state import STATE_KEY


# ---- edit page ----------------------------------------------------------------------------------

THREE_ROWS = [
    {"subject": "Nils Jean Wexcroft", "relation": "", "prompt": "{} works as a", "target_new": "librarian",
     "target_true": "poet"},
    {"subject": "Wanda Hope Kesthwaite", "relation": "sport", "prompt": "", "target_new": "chess",
     "target_true": "swimming"},
    {"subject": "Caldador", "relation": "", "prompt": "{} is located in the continent of",
     "target_new": "Europe", "target_true": "America"},
]


def type_rows(at: AppTest, rows: list[dict]) -> None:
    """Type rows into the (empty) edit table, as the data editor reports them."""
    key = at.session_state[STATE_KEY].editor_key
    at.session_state[key] = {"edited_rows": {}, "added_rows": rows, "deleted_rows": []}
    at.run()


def fast_hparams(at: AppTest) -> None:
    at.number_input(key="hp_n_samples").set_value(300)
    at.number_input(key="hp_v_steps").set_value(5)
    at.number_input(key="hp_n_context").set_value(2)


def test_edit_three_rows_then_metrics_and_delta_norm_chart_then_undo(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("edit")
    at.button(key="clear_table").click().run()
    assert any("table is empty" in i.value for i in at.info)
    type_rows(at, THREE_ROWS)
    assert not errors(at), errors(at)
    assert any("3 edit(s) ready" in x.value for x in at.success)
    fast_hparams(at)
    at.run()
    at.button(key="run_edit").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    s = at.session_state[STATE_KEY]
    run = s.last_run
    assert run is not None and len(run.requests) == 3
    assert (run.result.hparams["v_steps"], run.result.hparams["n_context"]) == (5, 2)   # the page's values
    changed = [i for i in before if not torch.equal(before[i], handle.mlp_out_weight(i))]
    assert changed == sorted(run.result.layers)
    # a browser reload is a new session: the table draft and the history are still there
    reloaded = open_page("history")
    assert [r["subject"] for r in reloaded.session_state[STATE_KEY].draft_rows] == \
        [r["subject"] for r in THREE_ROWS]
    history = [d.value for d in reloaded.dataframe if "status" in d.value.columns][0]
    assert history["id"].tolist()[0] == run.batch_id and history["status"].tolist()[0] == "applied"
    # the Results page shows the metrics table and the ΔW norm chart of this run
    assert at.metric or at.dataframe
    metric_tables = [d.value for d in at.dataframe if "metric" in d.value.columns]
    assert metric_tables and {"before", "after"} <= set(metric_tables[0].columns)
    assert {"Score S (%)", "NS, neighbours the batch does not edit (%)"} <= set(metric_tables[0]["metric"])
    per_edit = [d.value for d in at.dataframe if "stored" in d.value.columns]
    assert per_edit and per_edit[0]["stored"].tolist() == pytest.approx(run.result.per_edit["stored"].tolist())
    norm_charts = [sp for sp in plotly_specs(at) if "norm" in json.dumps(sp.get("layout", {})).lower()]
    assert norm_charts
    xs = sorted({int(x) for tr in norm_charts[0]["data"] for x in array(tr["x"]).tolist()})
    assert xs == sorted(run.result.layers)
    # the downloads: a patch of this batch, and the edited model as a zip
    import io
    import zipfile

    from core.patch import read_patch
    from workbench import loader, results_flow

    patch_file = Path(os.environ["WORKBENCH_HOME"]) / "test-download.patch.safetensors"
    patch_file.write_bytes(results_flow.patch_bytes(loader.get_ledger(), [run.batch_id]))
    manifest = read_patch(patch_file).manifest
    assert manifest["n_edits"] == 3 and manifest["base_hash"] == handle.base_hash
    names = zipfile.ZipFile(io.BytesIO(results_flow.model_zip_bytes(handle))).namelist()
    assert {"edited-model/config.json", "edited-model/model.safetensors"} <= set(names)
    edited = weights(handle)
    # an app restart: the model is loaded again from disk and the ledger replayed onto it
    import streamlit as st

    st.cache_resource.clear()
    restarted = new_app().run()
    handle = handle_of(app_model)
    assert same_weights(edited, weights(handle))
    assert any("1 edit batch applied" in m.value for m in restarted.markdown if "Edit state" in m.value)
    # undo on the History page → clean state, weights bit-exact
    at.switch_page("../pages/history.py").run()
    at.button(key="undo").click().run()
    assert not at.exception, at.exception
    assert same_weights(before, weights(handle))
    assert any("undone, bit-exact" in x.value for x in at.success)
    # apply the exported patch on the History page → the edited weights again, as a new batch
    at.get("file_uploader")[0].set_value(("p.safetensors", patch_file.read_bytes(),
                                          "application/octet-stream")).run()
    at.button(key="apply_patch").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    assert same_weights(edited, weights(handle))
    at.button(key="undo").click().run()
    assert same_weights(before, weights(handle))
    at.switch_page("../pages/model.py").run()
    assert any("no edit batches applied" in m.value for m in at.markdown if "Edit state" in m.value)

def test_upload_counterfact_records_fill_the_table(app_model):
    from core.world_io import world_dir

    records = json.loads((world_dir() / "counterfact.json").read_text())[:4]
    at = open_page("edit")
    at.get("file_uploader")[0].set_value(("cf.json", json.dumps(records).encode(), "application/json")).run()
    assert not errors(at), errors(at)
    at.button(key="upload_replace").click().run()
    rows = at.session_state[STATE_KEY].draft_rows
    assert [r["subject"] for r in rows] == [c["requested_rewrite"]["subject"] for c in records]
    assert all(r["neighborhood_prompts"] for r in rows)               # kept for the NS metric
    assert any("4 edit(s) ready" in x.value for x in at.success)


def test_upload_csv_with_bad_rows_lists_errors_and_leaves_weights(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("edit")
    rows_before = list(at.session_state[STATE_KEY].draft_rows)
    csv = ("subject,relation,object\n"
           "Nils Jean Wexcroft,{} works as a,librarian\n"
           ",{} plays the sport of,chess\n"
           "Wanda Hope Kesthwaite,no template here,chess\n"
           "Caldador,{} is located in the continent of,\n")
    at.get("file_uploader")[0].set_value(("bad.csv", csv.encode(), "text/csv")).run()
    assert not at.exception, at.exception
    msgs = errors(at)
    assert msgs and "3 problems" in msgs[0], msgs
    problems = [d.value for d in at.dataframe if "problem" in d.value.columns][0]
    assert problems["row"].tolist() == [2, 3, 4]
    assert problems["field"].tolist() == ["subject", "relation", "object"]
    assert at.session_state[STATE_KEY].draft_rows == rows_before      # table unchanged
    assert same_weights(before, weights(handle))                        # model unchanged

def editor_table(at: AppTest):
    """The edit table as the data editor shows it (its index is the row number the user sees)."""
    key = at.session_state[STATE_KEY].editor_key
    shown = [d for d in at.dataframe if d.proto.id.endswith(key) or key in d.proto.id]
    assert len(shown) == 1, [d.proto.id for d in at.dataframe]
    return shown[0]


def problems_shown(at: AppTest):
    return [d.value for d in at.dataframe if "problem" in d.value.columns][0]


def test_typed_rows_are_numbered_as_problems_and_warnings_name_them(app_model):
    """A typed row gets its number in the table at once; problems and warnings, conflicts included,
    name the rows by the numbers the table shows, also after a row is deleted or blanked."""
    at = open_page("edit")
    at.button(key="clear_table").click().run()
    nils, wanda, caldador = (dict(r) for r in THREE_ROWS)
    type_rows(at, [nils, wanda, {**caldador, "target_new": ""}])
    assert not at.exception, at.exception
    editor = editor_table(at)
    assert editor.proto.placeholder == ""                           # empty cells show empty, not "None"
    table = editor.value
    assert table.index.tolist() == [1, 2, 3] and table.loc[3, "subject"] == "Caldador"
    assert table.loc[2, "prompt"] == ""
    problems = problems_shown(at)
    assert problems["row"].tolist() == [3] and problems["field"].tolist() == ["object"]
    # delete row 1, type a row that conflicts with Wanda's (now row 1) and one whose new object is
    # its true object: the table renumbers, and so do the problems
    key = at.session_state[STATE_KEY].editor_key
    at.session_state[key] = {"edited_rows": {}, "deleted_rows": [0],
                             "added_rows": [{**wanda, "target_new": "golf"}]}
    at.run()
    assert not at.exception, at.exception
    table = editor_table(at).value
    assert table.index.tolist() == [1, 2, 3]
    assert table["subject"].tolist() == ["Wanda Hope Kesthwaite", "Caldador", "Wanda Hope Kesthwaite"]
    problems = problems_shown(at)
    assert problems["row"].tolist() == [2, 3]
    assert problems["problem"].tolist()[1] == ("conflicts with row 1: 'Wanda Hope Kesthwaite' under 'P641' "
                                               "cannot become both 'chess' and 'golf'")
    # blank row 1, fix row 2, make row 3 keep its true object: one warning, row 3, and 2 edits ready
    key = at.session_state[STATE_KEY].editor_key
    at.session_state[key] = {"edited_rows": {0: {c: "" for c in table.columns},
                                             1: {"target_new": "Europe"},
                                             2: {"target_new": "swimming"}},
                             "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception, at.exception
    assert editor_table(at).value.index.tolist() == [1, 2, 3]     # cell edits keep the numbering
    assert not errors(at), errors(at)
    assert any("2 edit(s) ready" in x.value for x in at.success)
    warnings = [unescape(w.value) for w in at.warning if "true object already" in unescape(w.value)]
    assert len(warnings) == 1 and warnings[0].startswith("row 3: the new object 'swimming'"), warnings


def test_evaluate_compares_methods_on_a_small_batch(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("evaluate")
    at.number_input(key="cmp_n").set_value(2)
    at.number_input(key="cmp_gen").set_value(0)
    at.multiselect(key="cmp_methods").set_value(["memit", "ft"])
    at.button(key="run_compare").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    table = at.session_state[STATE_KEY].comparison.table
    assert table["method"].tolist() == ["unedited", "memit", "ft"]
    bars = [sp for sp in plotly_specs(at) if sp["data"] and sp["data"][0]["type"] == "bar"]
    assert len(bars) == 1 and len(bars[0]["data"]) == 3               # one bar group per method
    assert same_weights(before, weights(handle))                      # each method was undone


def test_hyperparameters_follow_the_chosen_range(app_model):
    """Changing R in the expander re-derives the preset for that R (on the demo model: its λ)."""
    from core.hparams import preset_for

    handle = handle_of(app_model)
    at = open_page("edit")
    lam = [n for n in at.number_input if n.key.startswith("hp_mom2_weight")]
    assert lam and lam[0].value == preset_for(handle).mom2_weight
    at.multiselect(key="hp_layers").set_value([0, 1]).run()
    assert not at.exception, at.exception
    lam = [n for n in at.number_input if n.key.startswith("hp_mom2_weight")]
    assert lam[0].value == preset_for(handle, layers=[0, 1]).mom2_weight
    if app_model == "demo":
        assert lam[0].value == 100.0


def test_capacity_check_reads_the_batch_keys_and_changes_nothing(app_model):
    handle = handle_of(app_model)
    before = weights(handle)
    at = open_page("edit")
    at.button(key="examples_10").click().run()
    assert not at.exception, at.exception
    at.button(key="check_capacity").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    s = at.session_state[STATE_KEY]
    table = s.capacity
    assert table["edits"].tolist() == [10] * len(table) and len(table) >= 1
    assert ((0 < table["stored (median)"]) & (table["stored (median)"] < 1)).all()
    assert (table["stored (worst 10 %)"] <= table["stored (median)"]).all()
    shown = [d.value for d in at.dataframe if "stored (median)" in d.value.columns]
    assert shown and shown[0]["stored (median)"].tolist() == table["stored (median)"].tolist()
    assert s.runs == [] and same_weights(before, weights(handle))
    assert not [i for i in at.info if "changed since this check" in i.value]
    at.multiselect(key="hp_layers").set_value([0, 1]).run()             # other R: the table is stale
    assert [i for i in at.info if "changed since this check" in i.value]
