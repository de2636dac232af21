"""`core.widen`: extra key dimensions for MEMIT without changing what the model computes."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import BadInputError
from core.widen import widen_mlps
from tests.tiny import FAMILIES, make_tiny_handle

PROMPTS = ["Miles Davis plays the trumpet", "Toyota is headquartered in", "The capital of Norvania is",
           "Kara Selwyn works for", "Orla Venn Marquez plays the sport of", "Paris is the capital of",
           "The Eiffel Tower is in the city of Paris.", "Danielle Darrieux speaks the language of French.",
           "The mother tongue of Ada Lovelace is English.", "Kara Selwyn works for Brightwell Systems.",
           "Rome is the capital of Italy, and Keldport is the capital of Norvania.",
           "Miles Davis, Orla Venn Marquez and Ada Lovelace"]


def logits(handle) -> torch.Tensor:
    enc = handle.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return handle.hf(**enc).logits


def keys(handle, layer: int) -> torch.Tensor:
    """W_out inputs at every (prompt, token) of layer `layer`, read with a plain forward pre-hook."""
    got = []
    hook = handle.mlp_out_module(layer).register_forward_pre_hook(lambda m, a: got.append(a[0]))
    try:
        enc = handle.tokenizer(PROMPTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            handle.hf(**enc)
    finally:
        hook.remove()
    mask = enc["attention_mask"].bool()
    return got[0][mask]                                                   # (tokens, d_mlp)


@pytest.mark.parametrize("family", FAMILIES)
def test_widened_model_computes_the_same_with_more_key_dimensions(family):
    h = make_tiny_handle(family, d=16)
    before, k0, d0, hash0 = logits(h), keys(h, 0), h.d_mlp_at(0), h.base_hash
    widths = widen_mlps(h, [0, 2], extra=24, seed=1)
    assert widths == {0: d0 + 24, 2: d0 + 24} and h.d_mlp_at(1) == d0
    assert torch.allclose(logits(h), before, atol=1e-5)                    # the function is unchanged
    k1 = keys(h, 0)
    assert torch.allclose(k1[:, :d0], k0, atol=1e-6)                        # old units as they were
    new = k1[:, d0:]
    assert new.abs().mean() > 0.05 * k0.abs().mean() and new.std(0).min() > 0    # the new ones vary
    # more independent directions for the keys: rank bounded by d_mlp before, not after
    assert torch.linalg.matrix_rank(k0.double()) <= d0 < torch.linalg.matrix_rank(k1.double())
    assert h.base_hash != hash0                                             # its own covariance cache


def test_widening_checks_everything_before_changing_weights():
    h = make_tiny_handle("gpt2")
    snap = {k: v.clone() for k, v in h.hf.state_dict().items()}
    for layers, extra, field in (([0], 0, "extra_keys"), ([0], 2.5, "extra_keys"), ([7], 4, "layers")):
        with pytest.raises(BadInputError) as e:
            widen_mlps(h, layers, extra)
        assert e.value.field == field
    assert all(torch.equal(snap[k], v) for k, v in h.hf.state_dict().items())


def test_widened_layer_stores_more_of_each_edit(tmp_path):
    """The point of the experiment: with n keys near d_mlp, Eq. 14 stores more of each edit once
    the layer has more key dimensions (closed form, `core.capacity.key_capacity`)."""
    from core.capacity import key_capacity

    h = make_tiny_handle("gpt2", d=8)                     # d_mlp 32; 272 token keys
    k_before = keys(h, 0).double()
    C = k_before.T @ k_before / len(k_before) + 1e-3 * torch.eye(k_before.shape[1], dtype=torch.float64)
    small = key_capacity(k_before[:40], C, 0.1)["stored"].median()
    widen_mlps(h, [0], 96)
    k_after = keys(h, 0).double()
    C2 = k_after.T @ k_after / len(k_after) + 1e-3 * torch.eye(k_after.shape[1], dtype=torch.float64)
    large = key_capacity(k_after[:40], C2, 0.1)["stored"].median()
    assert large > small + 0.15, (small, large)          # measured 0.35 → 0.55


def test_eval_and_capacity_take_extra_keys(tmp_path, monkeypatch, capsys):
    from tests.memit_helpers import write_corpus
    from workbench.cli import common, main

    handles = []
    monkeypatch.setattr(common, "load_from_args", lambda args: handles.append(make_tiny_handle("gpt2")) or handles[-1])
    cases = [{"case_id": i, "requested_rewrite": {"prompt": "{} plays the", "relation_id": "P1", "subject": s,
                                                   "target_new": {"str": "chess"}, "target_true": {"str": "golf"}},
              "paraphrase_prompts": [f"{s} is a player of"], "neighborhood_prompts": ["Paris plays the"]}
             for i, s in enumerate(["Miles Davis", "Kara Selwyn", "Orla Venn", "Norvania", "Toyota"])]
    (tmp_path / "cf.json").write_text(json.dumps(cases))
    opts = ["--layers", "0", "--corpus", write_corpus(tmp_path / "corpus.txt"), "--n-samples", "50"]
    assert main(["capacity", str(tmp_path / "cf.json"), "--sizes", "3", "--outside", "2", *opts,
                 "--extra-keys", "64", "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["extra_keys"] == 64 and c["d_mlp"] == {"0": 128 + 64} and c["extra_keys_seed"] == 0
    assert main(["capacity", str(tmp_path / "cf.json"), "--sizes", "3", "--outside", "2", *opts,
                 "--extra-keys", "64", "--extra-keys-seed", "1", "--json", str(tmp_path / "c1.json")]) == 0
    c1 = json.loads((tmp_path / "c1.json").read_text())
    assert c1["extra_keys_seed"] == 1 and c1["rows"][0]["stored_median"] != c["rows"][0]["stored_median"]
    capsys.readouterr()
    assert main(["capacity", str(tmp_path / "cf.json"), "--sizes", "3", "--outside", "0", *opts,
                 "--lambda", "1e9"]) == 0                      # huge λ: nothing stored, a crowded note
    assert "3 keys crowd its 128 key dimensions. Edit fewer" in capsys.readouterr().out
    assert main(["eval", "--dataset", str(tmp_path / "cf.json"), "--n", "2", *opts, "--steps", "3",
                 "--extra-keys", "64", "--json", str(tmp_path / "e.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["extra_keys"] == 64 and e["d_mlp"] == {"0": 192} and e["n"] == 2
    assert "widened the MLPs of layers [0]" in capsys.readouterr().out
    assert main(["capacity", str(tmp_path / "cf.json"), "--sizes", "3", *opts, "--extra-keys", "0"]) == 2
    assert "extra_keys" in capsys.readouterr().err


def test_crowded_picks_the_layer_that_keeps_least():
    from core.capacity import CapacityRow, crowded

    def row(layer, n, stored):
        return CapacityRow(layer=layer, n=n, lam=1.0, stored_median=stored, stored_p10=stored, eig_min=1.0,
                           eig_median=1.0, leak_median=None, leak_p90=None)

    assert crowded([row(0, 100, 0.9), row(0, 1000, 0.81)]) is None
    worst = crowded([row(0, 100, 0.9), row(0, 1000, 0.76), row(1, 1000, 0.3)])
    assert (worst.layer, worst.n) == (1, 1000)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_key_room_manifest_widens_at_load_and_saves_as_a_standard_folder(tmp_path, family):
    from transformers import AutoModelForCausalLM

    from core.model import load_model
    from core.patch import save_edited_model
    from tests.tiny import save_tiny_model

    folder = tmp_path / "m"
    save_tiny_model(folder, family)
    plain = load_model(str(folder), device="cpu")
    (folder / "key_room.json").write_text(json.dumps({"layers": [0], "extra": 12, "seed": 3}))
    h = load_model(str(folder), device="cpu")
    d0 = plain.d_mlp_at(0)
    assert h.key_room == {"layers": [0], "extra": 12, "seed": 3} and plain.key_room is None
    assert h.info()["key_room"] == h.key_room and plain.info()["key_room"] is None
    assert [h.d_mlp_at(i) for i in range(h.n_layers)] == [d0 + 12] + [d0] * (h.n_layers - 1)
    assert torch.allclose(logits(h), logits(plain), atol=1e-5)             # the same function
    widen_mlps(plain, [0], 12, seed=3)                                      # = widening by hand, same seed
    assert h.base_hash == plain.base_hash
    assert load_model(str(folder), device="cpu", key_room=False).d_mlp_at(0) == d0   # opt-out
    # an edit that uses the new units (their W_out entries), then save: one MLP width in the folder
    w = h.mlp_out_weight(0)
    new_rows = (slice(d0, None), slice(None)) if h.spec.layout == "conv1d" else (slice(None), slice(d0, None))
    with torch.no_grad():
        w[new_rows] = torch.randn_like(w[new_rows]) * 0.1
    edited = logits(h)
    assert not torch.allclose(edited, logits(plain), atol=1e-4)
    out = save_edited_model(h, tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(again.config, h.spec.d_mlp_attr) == d0 + 12
    enc = h.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        reloaded = again(**enc).logits
    assert torch.allclose(reloaded, edited, atol=1e-5)                      # plain transformers, same outputs
    assert not (out / "key_room.json").exists()                             # the widening is in the weights now
    assert [h.d_mlp_at(i) for i in range(h.n_layers)][1] == d0              # the live model is untouched


@pytest.mark.parametrize("text", ["{not json", json.dumps({"layers": [0], "extra": 0}),
                                  json.dumps({"extra": 8}), json.dumps({"layers": [0], "extra": 2.5})])
def test_bad_key_room_manifest_is_a_clear_error(tmp_path, text):
    from core.model import load_model
    from tests.tiny import save_tiny_model

    save_tiny_model(tmp_path / "m")
    (tmp_path / "m" / "key_room.json").write_text(text)
    with pytest.raises(BadInputError) as e:
        load_model(str(tmp_path / "m"), device="cpu")
    assert e.value.field == "key_room" and "key_room.json" in str(e.value)
