"""AppTest of the Causal trace page's example buttons on a tiny model: a wrapping row of buttons
as wide as their whole prompt (in equal columns the first label was cut off with an ellipsis),
the full fact in the tooltip, and one click fills the form."""

from __future__ import annotations

from tests.app_helpers import open_page, unescape
from workbench import trace_flow



def find_block(node, key: str):
    """The block whose element id carries `key` (st.container(key=...))."""
    for child in getattr(node, "children", {}).values():
        proto = getattr(child, "proto", None)
        if proto is not None and key in getattr(proto, "id", ""):
            return child
        found = find_block(child, key)
        if found is not None:
            return found
    return None


def test_example_buttons_show_whole_prompts_in_a_wrapping_row(tiny_app):
    facts = trace_flow.example_facts(4)
    assert len(facts) == 4 and len(facts[0].prompt) > 30              # the label that was cut off
    at = open_page("trace")
    row = find_block(at.main, "trace_examples")
    assert row is not None
    flex = row.proto.flex_container
    assert flex.direction == flex.HORIZONTAL and flex.wrap       # next line instead of narrow columns
    buttons = [c for c in row.children.values() if c.type == "button"]
    assert [unescape(b.label) for b in buttons] == [f.prompt for f in facts]
    for b, f in zip(buttons, facts):
        assert b.proto.wrap                                           # a too-long label wraps, never "…"
        assert unescape(b.help) == f"Subject: {f.subject} · the model should answer {f.answer}"
    assert at.button[0].key == f"example_{facts[0].known_id}"        # still the page's first button
    at.button[0].click().run()
    assert at.text_input(key="trace_prompt").value == facts[0].prompt
    assert at.text_input(key="trace_subject").value == facts[0].subject
