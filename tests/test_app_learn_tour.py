"""AppTest of the Learn tour's honesty on a tiny model: step 3 says so when the trace is too weak
to pick R (as the Causal trace page does) instead of presenting the least bad window as the
answer, and the tour warns when the model already carries edits that are not its own."""

from __future__ import annotations

import dataclasses

from tests.app_helpers import handle_of, open_page, same_weights, unescape, weights
from tests.ledger_helpers import record_seeded
from workbench.lessons import STEPS
from workbench.state import STATE_KEY


def to_step(at, index: int):
    s = at.session_state[STATE_KEY]
    s.learn_step = index
    at.session_state["learn_pick"] = STEPS[index].title
    return at.run()


def test_step_three_says_when_the_evidence_is_too_weak(tiny_app):
    at = to_step(open_page("learn"), 2)
    assert not at.exception, at.exception
    at.button(key="learn_trace").click().run()
    assert not at.exception, at.exception
    L = at.session_state[STATE_KEY].learn
    full = L["trace"]
    strong = dataclasses.replace(full.suggestion, layers=[1, 2], note="")
    weak = dataclasses.replace(full.suggestion, layers=[0, 1],
                               note="weak evidence: the best window's mean is tiny")

    L["trace"] = dataclasses.replace(full, suggestion=strong)
    at.run()
    assert at.button(key="learn_use_layers").label == "Use these layers for editing"
    assert any("The gap is largest over layers **[1, 2]**" in unescape(m.value) for m in at.markdown)
    assert not [w for w in at.warning if "weak evidence" in unescape(w.value)]

    L["trace"] = dataclasses.replace(full, suggestion=weak)
    at.run()
    assert not at.exception, at.exception
    assert [unescape(w.value) for w in at.warning if "weak evidence" in unescape(w.value)] == \
        ["weak evidence: the best window's mean is tiny"]
    assert not any("The gap is largest" in unescape(m.value) for m in at.markdown)
    assert any("only the least bad window" in unescape(m.value) for m in at.markdown)
    at.button(key="learn_use_layers").click().run()
    assert at.button(key="learn_use_layers").label == "Use these layers anyway"
    assert at.session_state[STATE_KEY].edit_layers == [0, 1]       # still the user's choice to make


def test_the_tour_warns_about_edits_it_did_not_make(tiny_app):
    from workbench import loader

    handle = handle_of(tiny_app)
    ledger = loader.get_ledger()
    while ledger.batches(handle.base_hash, status="applied"):
        ledger.undo(handle)
    start = weights(handle)
    at = open_page("learn")
    assert not [w for w in at.warning if "carries" in w.value]
    try:
        record_seeded(ledger, handle, [0], 31)
        record_seeded(ledger, handle, [1], 32)
        at.run()
        notes = [unescape(w.value) for w in at.warning if "carries" in unescape(w.value)]
        assert len(notes) == 1 and notes[0].startswith("The model carries 2 edit batches already."), notes
        ledger.undo(handle)
        at.run()
        notes = [unescape(w.value) for w in at.warning if "carries" in unescape(w.value)]
        assert len(notes) == 1 and notes[0].startswith("The model carries 1 edit batch already."), notes
    finally:
        while ledger.batches(handle.base_hash, status="applied"):
            ledger.undo(handle)
    at.run()
    assert not [w for w in at.warning if "carries" in w.value]
    assert same_weights(start, weights(handle))
