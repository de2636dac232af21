"""Model handle, architecture table and subject locator."""

from __future__ import annotations

import json

import pytest
import torch

from core.arch import ARCHITECTURES, get_path, spec_for
from core.errors import BadInputError, ModelLoadError, UnsupportedArchitectureError
from core.model import load_model, position_ids_for
from core.subject import locate_subject, locate_subjects
from tests.tiny import FAMILIES, make_tokenizer, save_tiny_model


def test_table_covers_all_families():
    assert set(FAMILIES) == set(ARCHITECTURES)


def test_spec_paths_resolve_and_nnsight_forward_equals_hf(family_handle):
    h = family_handle
    spec = h.spec
    assert spec.family == h.config.model_type
    layers = get_path(h.hf, spec.layers)
    assert len(layers) == h.n_layers == 3
    for path in (spec.embed, spec.final_norm, spec.lm_head):
        assert isinstance(get_path(h.hf, path), torch.nn.Module)
    for path in (spec.mlp, spec.mlp_out, spec.attn, spec.attn_out, *spec.mlp_in):
        assert isinstance(get_path(layers[0], path), torch.nn.Module)
    assert spec.mlp_in and all(p.startswith(spec.mlp + ".") for p in spec.mlp_in)
    w = h.mlp_out_weight(1)
    expected = (h.d_mlp, h.d_model) if spec.layout == "conv1d" else (h.d_model, h.d_mlp)
    assert tuple(w.shape) == expected
    assert h.d_mlp == 4 * h.d_model

    enc = h.tokenize(["Miles Davis plays the trumpet", "Paris is"])  # second row is left-padded
    with h.lock, torch.no_grad(), h.model.trace(enc):
        hidden = h.layer(1).output.save()
        logits = h.lm_head.output.save()
    ref = h.hf(**enc, position_ids=position_ids_for(enc["attention_mask"]),
               output_hidden_states=True)
    mask = enc["attention_mask"].bool()
    assert torch.allclose(logits[mask], ref.logits[mask], atol=1e-5)
    assert torch.allclose(hidden[mask], ref.hidden_states[2][mask], atol=1e-5)


def test_load_from_local_folder_and_info(tmp_path):
    save_tiny_model(tmp_path / "m", "llama")
    h = load_model(str(tmp_path / "m"), device="cpu")
    info = h.info()
    assert info["family"] == "llama" and info["n_layers"] == 3 and info["d_model"] == 32
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["n_params"] == sum(p.numel() for p in h.hf.parameters())
    # weights hash is a function of the weights alone
    assert load_model(str(tmp_path / "m"), device="cpu").base_hash == h.base_hash


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"model '\./nonexistent_dir': no such folder"):
        load_model("./nonexistent_dir")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        load_model(str(tmp_path / "f"))
    with pytest.raises(ModelLoadError, match="could not be fetched"):
        load_model("someone/no-such-model-xyz")


def test_unsupported_architecture_lists_supported(tmp_path):
    save_tiny_model(tmp_path / "m", "gpt2")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((UnsupportedArchitectureError, ModelLoadError)) as e:
        load_model(str(tmp_path / "m"))
    assert "gpt2" in str(e.value)
    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox, gptj, llama, mistral, qwen2"):
        spec_for("falcon")


@pytest.mark.parametrize("device, message", [
    ("tpu9", "device: 'tpu9' is not a device"),
    ("meta", "device: 'meta' is not supported"),
    ("cuda:99", "device: 'cuda:99'"),
])
def test_bad_device_is_a_clear_error_before_anything_loads(tmp_path, device, message):
    save_tiny_model(tmp_path / "m", "gpt2")
    with pytest.raises(BadInputError) as e:
        load_model(str(tmp_path / "m"), device=device)
    assert str(e.value).startswith(message) and e.value.field == "device"


def test_cuda_without_cuda_is_a_clear_error(tmp_path, monkeypatch):
    from core.model import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadInputError, match="device: 'cuda': CUDA is not available"):
        check_device("cuda")
    assert check_device("cpu") == "cpu"


def test_bad_dtype_and_layers(tmp_path, tiny_handle):
    save_tiny_model(tmp_path / "m", "gpt2")
    with pytest.raises(BadInputError, match="dtype"):
        load_model(str(tmp_path / "m"), dtype="int3")
    with pytest.raises(BadInputError, match="layers"):
        tiny_handle.check_layers([1, 7])
    assert tiny_handle.check_layers([2, 0, 2]) == [0, 2]


# ---- subject locator -----------------------------------------------------------------------

def _tokens(tok, prompt, span):
    ids = tok(prompt)["input_ids"][span.start:span.end]
    return tok.decode(ids)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("prompt,subject", [
    ("Miles Davis plays the trumpet", "Miles Davis"),                       # start
    ("The mother tongue of Ada Lovelace is", "Ada Lovelace"),               # middle
    ("The tower everyone visits is the Eiffel Tower", "Eiffel Tower"),      # end
    ("Toyota is headquartered in", "Toyota"),                               # single word at start
    ("Paris is the capital of France, and Rome is", "Rome"),               # after punctuation
])
def test_locate_subject_table(bos, prompt, subject):
    tok = make_tokenizer(bos=bos)
    span = locate_subject(tok, prompt, subject)
    assert _tokens(tok, prompt, span).strip() == subject
    ids = tok(prompt)["input_ids"]
    if bos:
        assert ids[0] == tok.bos_token_id and span.start >= 1
    # the token before the span does not carry subject characters, the last one ends the subject
    offsets = tok(prompt, return_offsets_mapping=True)["offset_mapping"]
    c1 = prompt.index(subject) + len(subject)
    assert offsets[span.last][1] == c1


def test_repeated_words_pick_the_requested_occurrence():
    tok = make_tokenizer()
    prompt = "Paris is near Paris"
    first = locate_subject(tok, prompt, "Paris")
    second = locate_subject(tok, prompt, "Paris", occurrence=1)
    assert first.start == 0 and second.start > first.end
    assert _tokens(tok, prompt, second).strip() == "Paris"


def test_left_padding_shifts_spans():
    tok = make_tokenizer()
    tok.padding_side = "left"
    prompts = ["Miles Davis plays the trumpet", "Rome is"]
    enc, spans = locate_subjects(tok, prompts, ["Miles Davis", "Rome"])
    for row, (p, sp) in enumerate(zip(prompts, spans)):
        ids = enc["input_ids"][row, sp.start:sp.end].tolist()
        assert tok.decode(ids).strip() == ["Miles Davis", "Rome"][row]
        assert enc["attention_mask"][row, sp.start:].all()


def test_subject_errors():
    tok = make_tokenizer()
    with pytest.raises(BadInputError, match="subject.*does not occur") as err:
        locate_subject(tok, "Miles Davis plays", "Coltrane")
    assert "capitalisation" not in str(err.value)
    with pytest.raises(BadInputError, match="other capitalisation it does: 'Miles Davis'"):
        locate_subject(tok, "Miles Davis plays", "miles davis")
    with pytest.raises(BadInputError, match="prompt"):
        locate_subject(tok, "", "x")
    with pytest.raises(BadInputError, match="subject"):
        locate_subject(tok, "abc", "  ")


def test_python_dash_m_workbench_runs_the_cli():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "workbench", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "usage: workbench" in out.stdout and "capacity" in out.stdout
