"""AppTest of the History page's pickers and patch uploader on a tiny model: the export picker
starts again from the batches applied now whenever the ledger changes (undo, a batch from another
session), keeps the user's own choice while it does not, and an applied patch leaves the
uploader empty so a second click cannot apply it twice. Method names read as on the other pages."""

from __future__ import annotations

from tests.app_helpers import handle_of, open_page, same_weights, weights
from tests.ledger_helpers import record_seeded


def applied_ids(ledger, handle) -> list[int]:
    """Applied batches of this model, newest first (the History table's order)."""
    return sorted((b.id for b in ledger.batches(handle.base_hash, status="applied")), reverse=True)


def undo_all(ledger, handle) -> None:
    while ledger.batches(handle.base_hash, status="applied"):
        ledger.undo(handle)


def test_export_picker_follows_the_ledger_and_keeps_a_choice_meanwhile(tiny_app):
    from workbench import loader

    handle = handle_of(tiny_app)
    ledger = loader.get_ledger()
    undo_all(ledger, handle)
    start = weights(handle)
    try:
        first = record_seeded(ledger, handle, [0], 11)
        second = record_seeded(ledger, handle, [1], 12)
        first_id, second_id = first.id, second.id
        at = open_page("history")
        assert not at.exception, at.exception
        assert at.multiselect(key="export_pick").value == [second_id, first_id]

        at.multiselect(key="export_pick").set_value([first_id]).run()     # the user's own choice
        at.run()                                                           # kept while nothing changes
        assert at.multiselect(key="export_pick").value == [first_id]

        at.button(key="undo").click().run()                                # the second batch undone
        assert not at.exception, at.exception
        assert at.multiselect(key="export_pick").value == [first_id]
        assert at.selectbox(key="revert_pick").options == [f"{first_id} · MEMIT · 1 edit(s) · Miles Davis"]

        third = record_seeded(ledger, handle, [2], 13)                     # another session edits
        at.run()
        assert at.multiselect(key="export_pick").value == [third.id, first_id]
        assert second_id not in at.multiselect(key="export_pick").value   # undone: not exported

        assert at.multiselect(key="export_pick").format_func(first_id) == f"{first_id} · MEMIT · 1 edit(s)"
        shown = at.dataframe[0].value                                     # the History table
        assert set(shown["method"]) == {"MEMIT"}                           # not 'memit'
        assert [str(o) for o in at.radio(key="export_mode").options] == ["one ΔW per batch",
                                                                         "summed ΔW per layer"]
    finally:
        undo_all(ledger, handle)
    assert same_weights(start, weights(handle))


def test_an_applied_patch_leaves_the_uploader_empty(tiny_app, tmp_path):
    import core.patch as patch_mod
    from workbench import loader

    handle = handle_of(tiny_app)
    ledger = loader.get_ledger()
    undo_all(ledger, handle)
    start = weights(handle)
    try:
        batch = record_seeded(ledger, handle, [0, 1], 21)
        patch = patch_mod.export_patch(ledger, [batch.id], tmp_path / "one.safetensors")
        undo_all(ledger, handle)
        n_batches = len(ledger.batches())
        at = open_page("history")
        at.get("file_uploader")[0].set_value(("one.safetensors", patch.read_bytes(),
                                              "application/octet-stream")).run()
        at.button(key="apply_patch").click().run()
        assert not at.exception, at.exception
        assert any("Applied one.safetensors: 1 batch(es)" in s.value.replace("\\", "")
                   for s in at.success), [s.value for s in at.success]
        assert len(ledger.batches()) == n_batches + 1
        assert len(applied_ids(ledger, handle)) == 1
        # the uploader is a fresh, empty one: no file, no Apply button to press a second time
        assert at.get("file_uploader")[0].value is None
        assert not [b for b in at.button if b.key == "apply_patch"]
        at.run()
        assert len(ledger.batches()) == n_batches + 1
        # the new batch is picked for export at once
        assert at.multiselect(key="export_pick").value == applied_ids(ledger, handle)
    finally:
        undo_all(ledger, handle)
    assert same_weights(start, weights(handle))
