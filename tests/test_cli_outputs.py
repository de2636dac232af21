"""`workbench edit` / `eval` / `compare` refuse bad outputs, hyperparameters and options before any
work (exit 2, the field named, nothing recorded), keep `--json -` pure JSON, and say why scores
are missing."""

from __future__ import annotations

import json

import pytest

from tests.memit_helpers import GOOD_CSV, assert_unchanged, snapshot
import workbench.cli.common as common
from workbench.cli import main


# ---- outputs checked before any work; a failed edit records nothing -----------------------------

NO_TRUE = "subject,relation,object\nMiles Davis,{} plays the,chess\n"


def test_unwritable_outputs_fail_before_any_work(setup, capsys, monkeypatch):
    from pathlib import Path

    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV)
    (tmp / "afile").write_text("x")
    loads = []
    monkeypatch.setattr(common, "load_from_args", lambda args: loads.append(args) or handle)
    edit = ["edit", str(tmp / "e.csv"), *opts]
    cases = [
        ([*edit, "--json", str(tmp / "afile" / "r.json")], f"--json: cannot write {tmp / 'afile' / 'r.json'}: "
         f"{tmp / 'afile'} is a file, not a folder"),
        ([*edit, "--json", str(tmp)], f"--json: {tmp} is a folder; give a file name"),
        ([*edit, "--out", str(tmp / "afile")], f"--out: {tmp / 'afile'} is a file, not a folder"),
        (["eval", "--json", str(tmp / "afile" / "s.json")], "--json: cannot write"),
        (["compare", str(tmp / "e.csv"), "--png", str(tmp / "c.jpg")], "--png: "),
        (["capacity", "--json", str(tmp)], "--json: "),
    ]
    if Path("/proc").is_dir():
        cases.append(([*edit, "--json", "/proc/nope/x.json"], "--json: cannot write /proc/nope/x.json"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert loads == [] and not (tmp / "ws").exists() and not (tmp / "c.jpg").exists()


def test_a_failed_json_write_records_no_batch_and_restores_the_weights(setup, capsys, monkeypatch):
    import workbench.cli.edit as edit_cli
    from core.ledger import Ledger

    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV)
    snap = snapshot(handle)

    def failing_write(result, target, stream=None):
        raise PermissionError(f"[Errno 13] Permission denied: '{target}'")

    monkeypatch.setattr(edit_cli, "write_json", failing_write)
    assert main(["edit", str(tmp / "e.csv"), *opts, "--json", str(tmp / "r.json")]) == 2
    assert "Permission denied" in capsys.readouterr().err
    assert Ledger(tmp / "ws").batches() == [] and not any((tmp / "ws" / "batches").iterdir())
    assert_unchanged(handle, snap)


def test_edit_json_to_stdout_is_only_json_and_explains_missing_scores(setup, capsys):
    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(NO_TRUE)
    assert main(["edit", str(tmp / "e.csv"), *opts, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)                                          # nothing but the JSON on stdout
    assert r["n"] == 1 and r["batch"] == 1 and r["post"]["ES"] is None and r["post"]["new_top1"] is not None
    assert "edited 1 facts" in err and "recorded as batch 1" in err
    assert "note: ES, PS and NS compare the new object with the true one" in err


@pytest.mark.parametrize("hparams, extra, message", [
    ({"layers": "abc"}, [], "layers: expected a list of layer numbers like [3, 4, 5], got 'abc'"),
    ({"layers": [0], "mom2_weight": "x"}, [], "mom2_weight: expected a finite number, got 'x'"),
    ([], [], "hparams: {hp} holds a list, not a JSON object of hyperparameters"),
    ("str", [], "hparams: {hp} holds a string, not a JSON object"),
    ({"layers": [0], "mom2_weight": 0}, [], "mom2_weight: invalid value 0: λ must be > 0"),
    (None, ["--lambda", "0"], "mom2_weight: invalid value 0.0: λ must be > 0"),
    (None, ["--layers", ""], "layers: '' is not a list of layers"),
    (None, ["--layers", "0,,1"], "layers: '0,,1' is not a list of layers"),
    (None, ["--workspace", "{file}"], "workspace: {file} is a file, not a folder"),
])
def test_bad_hparams_and_options_exit_2_naming_the_field(setup, capsys, hparams, extra, message):
    from core.ledger import Ledger

    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV)
    hp, afile = tmp / "hp.json", tmp / "afile"
    afile.write_text("x")
    args = [*opts, *[a.format(file=afile) for a in extra]]
    if hparams is not None:
        hp.write_text(json.dumps(hparams))
        args = [a for a in args if a not in ("--layers", "0,1")] + ["--hparams", str(hp)]
    snap = snapshot(handle)
    assert main(["edit", str(tmp / "e.csv"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(hp=hp, file=afile)) and err.count("\n") == 1, err
    assert_unchanged(handle, snap)
    assert not (tmp / "ws").exists() or Ledger(tmp / "ws").batches() == []


def test_a_damaged_ledger_is_a_clear_error_and_stays_as_it_is(setup, capsys):
    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV)
    (tmp / "ws").mkdir()
    (tmp / "ws" / "ledger.sqlite").write_text("garbage")
    snap = snapshot(handle)
    assert main(["edit", str(tmp / "e.csv"), *opts]) == 2
    err = capsys.readouterr().err
    assert f"the ledger database {tmp / 'ws' / 'ledger.sqlite'} is damaged" in err and "move the workspace" in err
    assert (tmp / "ws" / "ledger.sqlite").read_text() == "garbage"
    assert_unchanged(handle, snap)


def test_eval_notes_when_the_dataset_has_fewer_cases_than_n(setup, capsys):
    handle, opts, tmp = setup
    case = {"case_id": 0, "requested_rewrite": {"prompt": "{} plays the", "relation_id": "P1",
                                                "subject": "Miles Davis", "target_new": {"str": "chess"},
                                                "target_true": {"str": "trumpet"}}}
    (tmp / "cf.json").write_text(json.dumps([case]))
    opts = [o for o in opts if o not in ("--workspace", str(tmp / "ws"))]
    assert main(["eval", "--dataset", str(tmp / "cf.json"), "--n", "5", *opts]) == 0
    assert "has only 1 usable case(s); evaluating 1 edits instead of --n 5" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--ft-lr", "nan"], "ft-lr: the learning rate must be a finite number > 0, got nan"),
    (["--ft-lr", "-1"], "ft-lr: the learning rate must be a finite number > 0, got -1.0"),
    (["--gen-sample", "-1"], "gen-sample: must be ≥ 0"),
])
def test_compare_refuses_bad_ft_settings_before_loading(setup, capsys, monkeypatch, extra, message):
    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV)
    monkeypatch.setattr(common, "load_from_args", lambda args: pytest.fail("the model was loaded"))
    assert main(["compare", str(tmp / "e.csv"), "--methods", "ft", *extra]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_compare_explains_missing_scores_and_shows_new_top1(setup, capsys):
    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(NO_TRUE)
    snap = snapshot(handle)
    from core.hparams import MemitHparams

    corpus = opts[opts.index("--corpus") + 1]
    (tmp / "hp.json").write_text(json.dumps(MemitHparams(layers=[0, 1], corpus=corpus, n_samples=50, v_steps=3,
                                                         n_context=0).to_dict()))
    assert main(["compare", str(tmp / "e.csv"), "--methods", "memit", "--gen-sample", "0",
                 "--hparams", str(tmp / "hp.json"), "--json", str(tmp / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "new_top1" in out.splitlines()[0] and "note: ES, PS and NS compare the new object" in out
    rows = json.loads((tmp / "c.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["unedited", "memit"] and all(r["ES"] is None for r in rows)
    assert all(0 <= r["new_top1"] <= 100 for r in rows)
    assert_unchanged(handle, snap)
