"""Bad input in core gets a clear BadInputError naming the field and changes nothing: hyperparameters
of the wrong type, λ = 0, FT learning rates, workspaces that are files or damaged, atomic writes
onto folders; and patch manifests are strict JSON (null where a score was not measured)."""

from __future__ import annotations

import json
import math

import pytest

from core.errors import BadInputError, WorkbenchError
from core.ft import FtHparams
from core.hparams import MemitHparams, from_reference_json
from core.ledger import Ledger
from core.ledger_io import json_safe, write_atomic
from core.patch import apply_patch, export_patch, read_patch
from tests.ledger_helpers import record_seeded
from tests.tiny import make_tiny_handle


@pytest.mark.parametrize("d, field, message", [
    ({"layers": "abc"}, "layers", "expected a list of layer numbers"),
    ({"layers": [0, "1"]}, "layers", "expected a list of layer numbers"),
    ({"layers": [0], "mom2_weight": "x"}, "mom2_weight", "expected a finite number, got 'x'"),
    ({"layers": [0], "mom2_weight": float("inf")}, "mom2_weight", "expected a finite number"),
    ({"layers": [0], "v_steps": 2.5}, "v_steps", "expected a whole number"),
    ({"layers": [0], "v_steps": True}, "v_steps", "expected a whole number"),
    ({"layers": [0], "corpus": 3}, "corpus", "expected text"),
    ({"layers": [0], "context_templates": "{} is"}, "context_templates", "expected a list of texts"),
    ({"layers": [0], "mom2_weight": 0}, "mom2_weight", "λ must be > 0"),
    ({"layers": [0], "mom2_weight": float("nan")}, "mom2_weight", "expected a finite number"),
])
def test_hparams_of_the_wrong_type_or_value_name_the_field(d, field, message):
    with pytest.raises(BadInputError) as e:
        MemitHparams.from_dict(d)
    assert e.value.field == field and message in str(e.value)


def test_hparams_that_are_not_an_object_and_lambda_zero_in_every_path():
    for bad in ([], "str", 3):
        with pytest.raises(BadInputError, match="hparams: expected a JSON object"):
            MemitHparams.from_dict(bad)
        with pytest.raises(BadInputError, match="hparams: expected a JSON object"):
            from_reference_json(bad if not isinstance(bad, str) else [bad])
    with pytest.raises(BadInputError, match="mom2_weight: .*λ must be > 0"):
        from_reference_json({"layers": [0], "mom2_update_weight": 0})
    ok = MemitHparams(layers=[1, 0], mom2_weight=5)
    assert ok.layers == [0, 1]
    with pytest.raises(BadInputError, match="λ must be > 0"):
        ok.replace(mom2_weight=0.0)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1.0, 0.0])
def test_ft_learning_rate_must_be_finite_and_positive(lr):
    with pytest.raises(BadInputError) as e:
        FtHparams(layer=0, lr=lr)
    assert e.value.field == "lr"


def test_write_atomic_refuses_a_folder_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import core.ledger_io as ledger_io

    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"payload")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(target.iterdir())

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ledger_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "f.bin", b"payload")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]       # the temp file is gone too


def test_json_safe_turns_non_finite_numbers_into_null():
    import torch

    got = json_safe({"a": float("nan"), "b": (1.0, float("-inf")), "c": torch.tensor(2.5), 3: "x"})
    assert got == {"a": None, "b": [1.0, None], "c": 2.5, "3": "x"}
    json.dumps(got, allow_nan=False)


def test_workspace_that_is_a_file_missing_or_damaged(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="workspace: .* is a file, not a folder"):
        Ledger(tmp_path / "file")
    with pytest.raises(BadInputError, match="workspace: no such folder"):
        Ledger(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    bad = tmp_path / "ws"
    bad.mkdir()
    (bad / "ledger.sqlite").write_text("garbage")
    with pytest.raises(WorkbenchError) as e:
        Ledger(bad)
    assert "ledger.sqlite is damaged" in str(e.value) and "move the workspace folder" in str(e.value)
    assert (bad / "ledger.sqlite").read_text() == "garbage"


def test_patch_manifest_is_strict_json_and_null_scores_apply(tmp_path):
    handle = make_tiny_handle("gpt2")
    ledger = Ledger(tmp_path / "ws")
    rec = record_seeded(ledger, handle, [1], 0)
    ledger.update_metrics(rec.id, {"ES": float("nan"), "PS": float("nan"), "new_top1": 100.0})
    out = export_patch(ledger, [rec.id], tmp_path / "p.safetensors")

    def refuse(name):
        raise ValueError(f"bare {name} in the manifest")

    manifest = json.loads((tmp_path / "p.safetensors.json").read_text(), parse_constant=refuse)
    assert manifest["batches"][0]["metrics"] == {"ES": None, "PS": None, "new_top1": 100.0}
    embedded = read_patch(out).manifest                     # the copy inside the safetensors file
    assert embedded == manifest
    other = Ledger(tmp_path / "ws2")
    report = apply_patch(make_tiny_handle("gpt2"), out, ledger=other)
    applied = other.get(report.recorded_ids[0])
    assert applied.metrics["ES"] is None and applied.summary()["new_top1"] == 100.0
    assert "ES" not in applied.summary()                    # null is "not measured" in tables


def test_export_onto_a_folder_names_out_and_leaves_nothing(tmp_path):
    handle = make_tiny_handle("gpt2")
    ledger = Ledger(tmp_path / "ws")
    rec = record_seeded(ledger, handle, [1], 0)
    (tmp_path / "dir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadInputError, match="out: .*dir is a folder"):
        export_patch(ledger, [rec.id], tmp_path / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not any((tmp_path / "dir").iterdir())
    assert math.isfinite(rec.metrics["ES"])
