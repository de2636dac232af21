"""The shipped demo model shows the paper's picture (ROME/MEMIT Figures 2-3), averaged over 100
known facts of its world: the MLP indirect effect at the last subject token peaks in the first
two thirds of the layers and exceeds every other subject token's, and severing the MLPs of that
token visibly lowers the effect of restoring its hidden state."""

from __future__ import annotations

import numpy as np
import pytest

from core.trace_avg import average_traces, load_facts
from core.tracing import TraceSettings
from core.world_io import world_dir


@pytest.fixture(scope="module")
def averaged(demo_handle):
    facts = load_facts(world_dir() / "knowns.json")
    return average_traces(demo_handle, facts, n=100, kinds=("mlp",), severed=True,
                          settings=TraceSettings(samples=3))


@pytest.mark.slow
def test_last_subject_token_mlp_peak(averaged):
    assert averaged.n_facts == 100
    mlp, L = averaged.effects["mlp"], averaged.n_layers
    last = mlp["last_subject"]
    peak = int(np.argmax(last))
    assert peak < 2 * L / 3
    others = max(mlp["first_subject"].max(), mlp["middle_subject"].max())
    assert last[peak] > others + 0.2, (last, others)           # shipped model: 0.785 vs 0.039


@pytest.mark.slow
def test_mlp_severed_gap_is_visible_and_picks_r(averaged):
    sev, L = averaged.severed, averaged.n_layers
    gap = sev.normal - sev.mlp_severed
    # Shipped model: 0.049 at layer 0 (normal 0.785, MLP-severed 0.736), 0.035 at layer 1, ~0 from
    # layer 3 on. Modest because its lookup sits in MLP 0, before the first restorable hidden
    # state; the earlier models had 0.018 (d_mlp 1,024) and 0.036 (the first world).
    assert gap.max() > 0.01, gap
    assert gap[:3].mean() > 3 * abs(gap[3:]).mean(), gap
    assert int(np.argmax(gap)) < 2 * L / 3
    layers = averaged.suggestion.layers
    assert layers and layers == sorted(layers) and layers[-1] - layers[0] == len(layers) - 1
    assert int(np.argmax(gap)) in layers or max(layers) < 2 * L / 3
    assert averaged.suggestion.note == ""          # backed: best window ≥ 3 % of the total effect


def test_answers_of_several_tokens_are_named_and_partial_characters_refused(demo_handle):
    from core.errors import BadInputError
    from core.tracing import answer_note, answer_tokens

    prompt = "Clara Lee Walwell was born in"
    ids = answer_tokens(demo_handle, prompt, "Harbor Norvik")
    assert len(ids) >= 2 and demo_handle.tokenizer.decode(ids).strip() == "Harbor Norvik"
    note = answer_note(demo_handle, prompt, "Harbor Norvik")
    first = demo_handle.tokenizer.decode([ids[0]]).strip()
    assert f"is {len(ids)} tokens" in note and f"'{first}'" in note
    assert answer_note(demo_handle, prompt, first) is None            # one token: nothing to say
    assert answer_note(demo_handle, prompt, None) is None
    with pytest.raises(BadInputError, match="part of a character") as err:
        answer_tokens(demo_handle, prompt, "漢字🙂")                      # byte pieces only
    assert err.value.field == "answer"
