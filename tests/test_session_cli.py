"""`workbench session` end to end on a tiny model folder: three batches listed, the last undone,
exported as a patch, applied by a fresh process onto a fresh model (identical logits), replayed
and saved after a "restart"; a patch for other weights is refused with exit code 2."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from core.ledger import Ledger
from core.model import load_model
from tests.ledger_helpers import record_seeded
from tests.tiny import save_tiny_model
from workbench.cli import main


def logits(hf, tok):
    enc = tok(["Miles Davis plays the", "Paris is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return hf(**enc).logits


def test_session_commands(tmp_path, capsys):
    model = tmp_path / "model"
    save_tiny_model(model)
    ws, ws2 = str(tmp_path / "ws"), str(tmp_path / "ws2")
    live = load_model(str(model), device="cpu")
    ledger = Ledger(ws)
    for seed, layers in enumerate([[1, 2], [0], [1]]):
        record_seeded(ledger, live, layers, seed)
    ledger.undo(live)                                    # the live model: batches 1 and 2

    assert main(["session", "list", "--workspace", ws, "--json", str(tmp_path / "list.json")]) == 0
    listed = json.loads((tmp_path / "list.json").read_text())["batches"]
    assert [(b["id"], b["status"]) for b in listed] == [(1, "applied"), (2, "applied"), (3, "reverted")]
    patch = str(tmp_path / "edits.safetensors")
    assert main(["session", "export", "1", "2", "--out", patch, "--workspace", ws]) == 0

    common = ["--model", str(model), "--device", "cpu"]
    assert main(["session", "apply", patch, "--workspace", ws2, *common]) == 0
    assert "recorded as batch(es) [1, 2]" in capsys.readouterr().out
    saved = tmp_path / "saved"
    assert main(["session", "replay", "--workspace", ws2, "--save", str(saved), *common]) == 0   # a restart
    out = capsys.readouterr().out
    assert "replayed batches [1, 2]" in out and "match the weights recorded" in out
    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert torch.equal(logits(reloaded, live.tokenizer), logits(live.hf, live.tokenizer))

    assert main(["session", "undo", "--workspace", ws2]) == 0
    assert main(["session", "revert", "1", "--workspace", ws2]) == 0
    assert [b.status for b in Ledger(ws2).batches()] == ["reverted", "reverted"]
    assert main(["session", "delete", "2", "--workspace", ws2]) == 0
    assert [b.id for b in Ledger(ws2).batches()] == [1]

    other = tmp_path / "other"
    save_tiny_model(other, family="gpt_neox")
    assert main(["session", "apply", patch, "--workspace", ws2, "--model", str(other), "--device", "cpu"]) == 2
    assert "the patch was made for" in capsys.readouterr().err
    assert main(["session", "revert", "9", "--workspace", ws2]) == 2


def test_workbench_edit_records_into_the_workspace(tmp_path, capsys):
    from core.hparams import MemitHparams
    from tests.tiny import TRAIN_TEXT

    model, ws = tmp_path / "model", str(tmp_path / "ws")
    save_tiny_model(model)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAIN_TEXT) + "\n")
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(MemitHparams(layers=[0, 1], corpus=str(corpus), n_samples=50, v_steps=3,
                                          n_context=0).to_dict()))
    edits = tmp_path / "edits.csv"
    edits.write_text("subject,relation,object\nMiles Davis,{} plays the,chess\n")
    args = ["--workspace", ws, "--model", str(model), "--device", "cpu", "--hparams", str(hp)]
    assert main(["edit", str(edits), *args]) == 0
    assert "recorded as batch 1" in capsys.readouterr().out
    edits.write_text("subject,relation,object\nParis,{} is the capital of,Rome\n")
    assert main(["edit", str(edits), *args]) == 0
    out = capsys.readouterr().out
    assert "on top of the workspace's batches [1]" in out and "recorded as batch 2" in out
    ledger = Ledger(ws)
    assert [b.requests[0]["subject"] for b in ledger.batches()] == ["Miles Davis", "Paris"]
    rep = ledger.replay(load_model(str(model), device="cpu"))
    assert rep.batch_ids == [1, 2] and rep.matches_recorded is True
    assert main(["edit", str(edits), *args, "--no-record"]) == 0
    assert len(Ledger(ws).batches()) == 2


def test_session_bad_workspaces_and_outputs_exit_2_and_change_nothing(tmp_path, capsys):
    from tests.tiny import make_tiny_handle

    ws = tmp_path / "ws"
    record_seeded(Ledger(ws), make_tiny_handle("gpt2"), [1], 0)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "ledger.sqlite").write_text("garbage")
    (tmp_path / "outdir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    nomodel = ["--model", "./nonexistent_dir"]          # each case fails before a model is needed
    cases = [
        (["session", "list", "--workspace", str(tmp_path / "typo")], f"workspace: no such folder: {tmp_path / 'typo'}"),
        (["session", "undo", "--workspace", str(tmp_path / "typo")], "workspace: no such folder"),
        (["session", "list", "--workspace", str(tmp_path / "afile")], "workspace: "),
        (["session", "list", "--workspace", str(tmp_path / "damaged")],
         f"the ledger database {tmp_path / 'damaged' / 'ledger.sqlite'} is damaged"),
        (["session", "export", "1", "--out", str(tmp_path / "outdir"), "--workspace", str(ws)],
         f"--out: {tmp_path / 'outdir'} is a folder; give a file name"),
        (["session", "replay", "--save", str(tmp_path / "afile"), "--workspace", str(ws), *nomodel],
         f"--save: {tmp_path / 'afile'} is a file, not a folder"),
        (["session", "apply", str(tmp_path / "nope.safetensors"), "--workspace", str(ws), *nomodel],
         "patch: no patch file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before       # no folder created, no temp file left
    assert not any((tmp_path / "outdir").iterdir())
    assert (tmp_path / "damaged" / "ledger.sqlite").read_text() == "garbage"
    assert [b.id for b in Ledger(ws).batches()] == [1]
    assert main(["session", "list", "--workspace", str(ws), "--json", "-"]) == 0
    assert [b["id"] for b in json.loads(capsys.readouterr().out)["batches"]] == [1]


def test_replay_and_apply_with_json_to_stdout_print_only_json(tmp_path, capsys):
    model, ws = tmp_path / "model", str(tmp_path / "ws")
    save_tiny_model(model)
    record_seeded(Ledger(ws), load_model(str(model), device="cpu"), [1], 0)
    common = ["--model", str(model), "--device", "cpu"]
    assert main(["session", "replay", "--workspace", ws, *common, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["batch_ids"] == [1] and "replayed batches [1]" in err
    patch = str(tmp_path / "p.safetensors")
    assert main(["session", "export", "1", "--out", patch, "--workspace", ws]) == 0
    capsys.readouterr()
    assert main(["session", "apply", patch, "--workspace", str(tmp_path / "ws2"), *common, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["recorded_ids"] == [1] and "applied 1 batch(es)" in err


def test_apply_refuses_a_patch_over_the_model_limit(tmp_path, capsys, monkeypatch):
    """`session apply` uses the History page's limit (core.patch.patch_size_limit): over it, exit 2
    with the sizes, nothing recorded; the same file under the limit applies."""
    import core.patch as patch_mod

    model = tmp_path / "model"
    save_tiny_model(model)
    live = load_model(str(model), device="cpu")
    ledger = Ledger(str(tmp_path / "ws"))
    record_seeded(ledger, live, [0, 1, 2], 0)
    record_seeded(ledger, live, [1], 1)
    patch = str(tmp_path / "two.safetensors")
    assert main(["session", "export", "1", "2", "--out", patch, "--workspace", str(tmp_path / "ws")]) == 0
    ws2 = str(tmp_path / "ws2")
    common = ["--model", str(model), "--device", "cpu", "--workspace", ws2]
    monkeypatch.setattr(patch_mod, "LIMIT_BATCHES", 1)          # one batch of every layer, no manifest room
    monkeypatch.setattr(patch_mod, "LIMIT_MANIFEST_BYTES", 0)
    capsys.readouterr()
    assert main(["session", "apply", patch, *common]) == 2
    err = capsys.readouterr().err
    assert "patch: two.safetensors is" in err and "patches for" in err and "limited to 48.0 KB" in err
    assert Ledger(ws2).batches() == []
    monkeypatch.setattr(patch_mod, "LIMIT_BATCHES", 2)
    assert main(["session", "apply", patch, *common]) == 0
    assert [b.id for b in Ledger(ws2).batches()] == [1, 2]
    # over the cap, refused before the model is loaded
    monkeypatch.setattr(patch_mod, "LIMIT_CAP_BYTES", 1000)
    assert main(["session", "apply", patch, "--model", str(tmp_path / "no-model"), "--workspace", ws2]) == 2
    err = capsys.readouterr().err
    assert "a patch is limited to 1.0 KB" in err and "no-model" not in err
