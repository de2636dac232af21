"""`workbench trace`, `workbench trace-avg` and the trace benchmark on a tiny saved model."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from core.trace_avg import CATEGORIES
from tests.tiny import save_tiny_model
from workbench.cli import main

PROMPT = "Miles Davis plays the trumpet and"
FAST = ["--samples", "2", "--window", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    save_tiny_model(path, "gpt2")
    return str(path)


def test_trace_json(model_dir, tmp_path):
    out = tmp_path / "t.json"
    rc = main(["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Miles Davis",
               *FAST, "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d["traces"]) == {"hidden", "mlp", "attn"}
    T = len(d["tokens"])
    assert all(len(t["scores"]) == T and len(t["scores"][0]) == d["n_layers"] for t in d["traces"].values())
    assert d["severed"]["token"] == d["subject_span"][1] - 1
    assert len(d["suggested_layers"]) >= 1 and d["suggestion"]["rule"]
    e, s = d["traces"]["mlp"]["effects"][0][0], d["traces"]["mlp"]["scores"][0][0]
    assert e == pytest.approx(s - d["corrupted_prob"])


def test_trace_avg_json_schema(model_dir, tmp_path):
    from core.model import load_model

    handle = load_model(model_dir, device="cpu")
    prompts = [("Miles Davis plays the", "Miles Davis"), ("Toyota is headquartered in", "Toyota"),
               ("The capital of Norvania is", "Norvania")]
    facts = []
    for i, (p, s) in enumerate(prompts):
        ids = handle.tokenizer(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            top = handle.tokenizer.decode([int(handle.hf(input_ids=ids).logits[0, -1].argmax())])
        facts.append({"known_id": i, "prompt": p, "subject": s, "attribute": top})
    facts.insert(1, {**facts[0], "known_id": 9})                  # a repeat: counted once, not in --n
    facts_path = tmp_path / "knowns.json"
    facts_path.write_text(json.dumps(facts))
    out = tmp_path / "avg.json"
    rc = main(["trace-avg", "--model", model_dir, "--facts", str(facts_path), "--n", "2", *FAST,
               "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["n_facts"] == 2 and d["n_layers"] == 3
    assert d["n_duplicates"] == 1 and d["known_ids"] == [0, 1]
    assert isinstance(d["suggested_layers"], list) and all(isinstance(x, int) for x in d["suggested_layers"])
    assert set(d["effects"]) == {"hidden", "mlp", "attn"}
    for kind in d["effects"].values():
        assert set(kind) == set(CATEGORIES)
        for values in kind.values():
            assert len(values) == 3 and all(v is None or isinstance(v, float) for v in values)


@pytest.mark.parametrize("args, field", [
    (["--prompt", PROMPT, "--subject", "Paris"], "subject"),
    (["--prompt", PROMPT, "--subject", "Miles", "--noise", "0"], "noise"),
    (["--prompt", PROMPT, "--subject", "Miles", "--window", "0"], "window"),
    (["--prompt", "", "--subject", "Miles"], "prompt"),
])
def test_trace_bad_input_exits_2(model_dir, capsys, args, field):
    rc = main(["trace", "--model", model_dir, *args])
    assert rc == 2
    assert f"{field}:" in capsys.readouterr().err


def test_trace_avg_bad_facts_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"not\": \"a list\"}")
    assert main(["trace-avg", "--model", model_dir, "--facts", str(bad)]) == 2
    assert "facts:" in capsys.readouterr().err


def test_bench_trace_reports_both_paths(model_dir):
    from workbench.benchmarks import trace as bench
    from workbench.cli.common import add_model_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    bench.add_args(p)
    args = p.parse_args(["--model", str(model_dir), "--device", "cpu", "--prompt", PROMPT,
                         "--subject", "Miles Davis", "--samples", "2"])
    r = bench.run(args)
    assert r["max_abs_diff"] < 1e-6
    assert r["ratio"] == pytest.approx(r["loop_s"] / r["batched_s"])
    assert r["forwards_loop"] == r["cells"] and r["forwards_batched"] < r["forwards_loop"]
    T, L = r["n_tokens"], r["n_layers"]
    assert r["block_evals_loop"] == 3 * T * L * 2 * T * L        # three kinds × cells × S rows × T × L
    assert 1 < r["work_ratio"] == pytest.approx(r["block_evals_loop"] / r["block_evals_batched"])


def test_png_names_and_range_size_are_checked_before_tracing(model_dir, tmp_path, capsys):
    from workbench.cli.trace import severed_png_path

    base = ["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Miles Davis", *FAST]
    assert main([*base, "--png", str(tmp_path / "out.jpg")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --png: {tmp_path / 'out.jpg'}: the file name must end in .png")
    (tmp_path / "t-severed.png").mkdir()                 # where the severed-path chart would go
    assert main([*base, "--png", str(tmp_path / "t.png")]) == 2
    assert "--png: " in capsys.readouterr().err and not (tmp_path / "t.png").exists()
    assert severed_png_path("dir/trace.png").as_posix() == "dir/trace-severed.png"
    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    assert "trace.png -> trace-severed.png" in " ".join(capsys.readouterr().out.split())
    for size, message in (("0", "range-size: must be at least 1"), ("99", "range-size: 99 layers, but")):
        assert main(["trace-avg", "--model", model_dir, "--range-size", size, *FAST]) == 2
        assert f"\nerror: {message}" in "\n" + capsys.readouterr().err
