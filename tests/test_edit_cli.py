"""`workbench edit` and `workbench eval` on a tiny model: results, saved model, and every bad input
refused with exit code 2, a one-line message naming row and field, and bit-identical weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.memit_helpers import GOOD_CSV, assert_unchanged, snapshot, write_corpus
from tests.tiny import make_tiny_handle
import workbench.cli.common as common
from workbench.cli import main

def test_edit_applies_prints_saves_and_writes_json(setup, capsys):
    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV + "Miles Davis,{} plays the,chess,trumpet\n")
    snap = snapshot(handle)
    rc = main(["edit", str(tmp / "e.csv"), *opts, "--out", str(tmp / "out"), "--json", str(tmp / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "warning: row 3 repeats row 1" in out and "edited 2 facts in layers [0, 1]" in out
    assert "before" in out and "after" in out and "layer 1: ‖ΔW‖" in out
    assert "% of its share (median edit)" in out
    r = json.loads((tmp / "r.json").read_text())
    assert set(r["stored_fraction"]) == {"0", "1"} and all(0 < f <= 1.01 for f in r["stored_fraction"].values())
    assert r["n"] == 2 and r["layers"] == [0, 1] and set(r["pre"]) >= {"ES", "PS", "NS", "S"}
    assert set(r["seconds"]) >= {"targets", "update", "covariance", "pre_eval", "post_eval"}
    changed = [k for k in snap if not torch.equal(snap[k], handle.hf.state_dict()[k])]
    assert sorted(changed) == ["transformer.h.0.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"]
    saved = AutoModelForCausalLM.from_pretrained(tmp / "out")
    for k, v in handle.hf.state_dict().items():
        assert torch.equal(saved.state_dict()[k], v), k
    manifest = json.loads((tmp / "out" / "workbench_edit.json").read_text())   # the app's name too
    assert manifest["base_hash"] == handle.base_hash and len(manifest["requests"]) == 2
    assert manifest["saved_by"] == "memit-workbench" and manifest["layers"] == [0, 1]
    assert not (tmp / "out" / "memit_edits.json").exists()


def test_eval_reports_pre_post_in_percent_and_reverts(setup, capsys):
    handle, opts, tmp = setup
    cases = [{"case_id": i, "requested_rewrite": {"prompt": p, "relation_id": f"P{i}", "subject": s,
                                                   "target_new": {"str": new}, "target_true": {"str": old}},
              "paraphrase_prompts": [f"{s} is"], "neighborhood_prompts": ["Paris is"]}
             for i, (p, s, new, old) in enumerate([("{} plays the", "Miles Davis", "chess", "trumpet"),
                                                   ("{} works for", "Kara Selwyn", "Toyota", "Brightwell"),
                                                   ("The capital of {} is", "Norvania", "Rome", "Keldport")])]
    (tmp / "cf.json").write_text(json.dumps(cases))
    snap = snapshot(handle)
    opts = [o for o in opts if o not in ("--workspace", str(tmp / "ws"))]
    rc = main(["eval", "--dataset", str(tmp / "cf.json"), "--n", "2", *opts, "--json", str(tmp / "s.json")])
    assert rc == 0
    s = json.loads((tmp / "s.json").read_text())
    assert s["n"] == 2 and s["layers"] == [0, 1]
    for phase in ("pre", "post"):
        assert set(s[phase]) == {"ES", "PS", "NS", "S"}
        assert all(v is None or 0 <= v <= 100 for v in s[phase].values())
    assert set(s["seconds"]) >= {"edit", "pre_eval", "post_eval", "targets", "update", "total"}
    assert set(s["stored_fraction"]) == {"0", "1"}
    # "Paris is" names no edited subject: every neighbour is outside the batch, so NS_outside = NS
    assert s["ns_outside"]["prompts"] == 2
    assert s["ns_outside"]["pre"] == s["pre"]["NS"] and s["ns_outside"]["post"] == s["post"]["NS"]
    assert_unchanged(handle, snap)
    out = capsys.readouterr().out
    assert "ES" in out and "layer 1: the update stored" in out
    assert "NS over the 2 neighbourhood prompts about subjects the batch does not edit" in out


BAD_INPUTS = [
    ("missing-column.csv", "subject,object\nA,b\n", "file, columns: missing relation (or prompt)"),
    ("empty-field.csv", "subject,relation,object\nMiles Davis,{} plays,\n", "row 1, object: empty"),
    ("no-placeholder.csv", "subject,relation,object\nMiles Davis,plays the,chess\n",
     "row 1, relation: 'plays the' has no '{}'"),
    ("two-placeholders.csv", "subject,relation,object\nMiles Davis,{} plays {},chess\n",
     "row 1, relation: '{} plays {}' has 2 '{}'"),
    ("subject-absent.csv", "subject,relation,object,paraphrase_prompts\nMiles Davis,{} plays,chess,He plays\n",
     "row 1, paraphrase_prompts: the subject 'Miles Davis' is absent from the filled prompt 'He plays'"),
    ("conflict.csv", GOOD_CSV + "Miles Davis,{} plays the,golf,trumpet\n",
     "row 3, object: conflicts with row 1"),
    ("latin1.csv", "subject,relation,object\nJosé,{} plays,chess\n".encode("latin-1"), "not UTF-8 text"),
    ("bad.json", "[{\"subject\": ", "not valid JSON"),
    ("empty.csv", "", "empty: no edit requests"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_edit_files_exit_2_with_message_and_unchanged_weights(setup, capsys, name, content, message):
    handle, opts, tmp = setup
    f = tmp / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    snap = snapshot(handle)
    assert main(["edit", str(f), *opts]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert_unchanged(handle, snap)


def test_oversized_file_is_refused(setup, capsys, monkeypatch):
    import core.requests

    handle, opts, tmp = setup
    (tmp / "big.csv").write_text(GOOD_CSV * 5)
    snap = snapshot(handle)
    read = core.requests.read_requests
    monkeypatch.setattr(core.requests, "read_requests", lambda p, **k: read(p, **dict(k, max_bytes=200)))
    assert main(["edit", str(tmp / "big.csv"), *opts]) == 2
    assert "over the limit of 200 bytes" in capsys.readouterr().err
    assert_unchanged(handle, snap)


@pytest.mark.parametrize("extra, message", [
    (["--layers", "0,9"], "layers: [9] out of range"),
    (["--layers", "a,b"], "'a,b' is not a list of layers"),
    (["--method", "mend"], "unknown method 'mend'"),
    (["--lambda", "-1"], "mom2_weight: invalid value -1.0"),
    (["--hparams", "missing.json"], "cannot read missing.json"),
])
def test_bad_options_exit_2_and_unchanged_weights(setup, capsys, extra, message):
    handle, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV)
    snap = snapshot(handle)
    assert main(["edit", str(tmp / "e.csv"), *opts, *extra]) == 2
    assert message in capsys.readouterr().err
    assert_unchanged(handle, snap)


def test_reference_hparams_file_is_accepted(setup, capsys):
    handle, opts, tmp = setup
    ref = {"layers": [0, 1], "clamp_norm_factor": 4, "layer_selection": "all", "fact_token": "subject_last",
           "v_num_grad_steps": 3, "v_lr": 0.5, "v_loss_layer": 2, "v_weight_decay": 0.5, "kl_factor": 0.0625,
           "mom2_adjustment": True, "mom2_update_weight": 10, "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
           "layer_module_tmp": "transformer.h.{}", "mlp_module_tmp": "transformer.h.{}.mlp",
           "attn_module_tmp": "transformer.h.{}.attn", "ln_f_module": "transformer.ln_f",
           "lm_head_module": "transformer.wte", "mom2_dataset": "wikipedia", "mom2_n_samples": 100,
           "mom2_dtype": "float32"}
    (tmp / "hp.json").write_text(json.dumps(ref))
    (tmp / "e.csv").write_text(GOOD_CSV)
    corpus_opts = opts[opts.index("--corpus"):opts.index("--corpus") + 2]
    assert main(["edit", str(tmp / "e.csv"), "--hparams", str(tmp / "hp.json"), *corpus_opts,
                 "--no-record", "--json", str(tmp / "r.json")]) == 0
    r = json.loads((tmp / "r.json").read_text())
    assert r["layers"] == [0, 1]


def test_chart_builders_draw_the_result(tmp_path):
    from core.memit import execute_memit
    from tests.memit_helpers import REQUESTS, small_hparams
    from workbench.charts.edit import delta_norm_chart, metrics_chart, per_edit_chart

    h = make_tiny_handle("gpt2")
    result = execute_memit(h, REQUESTS, small_hparams(write_corpus(tmp_path / "c.txt")))
    fig = delta_norm_chart(result)
    assert [list(t.x) for t in fig.data] == [[0, 1], [0, 1], [0, 1]]
    assert list(fig.data[0].y) == [result.delta_norms[0], result.delta_norms[1]]
    assert list(fig.data[1].y) == [result.relative_norms[0], result.relative_norms[1]]
    assert list(fig.data[2].y) == [100 * result.output_change[0], 100 * result.output_change[1]]
    pe = per_edit_chart(result)
    assert len(pe.data[1].y) == len(REQUESTS)
    m = metrics_chart({"ES": 10.0, "PS": float("nan"), "NS": 100.0, "S": 0.0},
                      {"ES": 95.0, "PS": 80.0, "NS": 90.0, "S": 88.0})
    assert list(m.data[0].y) == [10.0, None, 100.0, 0.0] and list(m.data[1].x) == ["ES", "PS", "NS", "S"]


def test_bench_memit_on_a_tiny_gptj_shape(tmp_path):
    import argparse

    from workbench.benchmarks import memit as bench

    tok_dir = tmp_path / "tok"
    make_tiny_handle("gpt2").tokenizer.save_pretrained(tok_dir)
    cases = [{"case_id": i, "requested_rewrite": {"prompt": "{} plays the", "relation_id": "P1",
                                                   "subject": s, "target_new": {"str": "chess"},
                                                   "target_true": {"str": "golf"}}}
             for i, s in enumerate(["Miles Davis", "Kara Selwyn", "Orla Venn"])]
    (tmp_path / "cf.json").write_text(json.dumps(cases))
    p = argparse.ArgumentParser()
    common.add_model_args(p)
    bench.add_args(p)
    args = p.parse_args(["--gptj-shaped", "--shape-layers", "3", "--shape-d", "32", "--tokenizer", str(tok_dir),
                         "--sizes", "1,3", "--steps", "3", "--cov-samples", "20", "--dataset", str(tmp_path / "cf.json"),
                         "--device", "cpu"])
    out = bench.run(args)
    assert [r["n"] for r in out["z"]] == [1, 3] and out["layers"] == [0, 1]
    for r in out["z"]:
        assert r["ratio"] == pytest.approx(r["serial_s_per_edit"] / r["batched_s_per_edit"])
        assert r["z_max_abs_diff"] < 1e-4 and r["serial_edits"] == r["n"]
        assert r["tokens_per_edit_serial"] > 0 and r["tokens_per_edit_batched"] > 0
        assert r["work_ratio"] == pytest.approx(r["tokens_per_edit_serial"] / r["tokens_per_edit_batched"])
    assert set(out["update_s"]) == {"1", "3"} and out["cov_tokens_per_s"] > 0 and out["peak_rss_mb"] > 0


def test_evaluate_edit_reverts_when_scoring_after_the_edit_fails(tmp_path, monkeypatch):
    """core.evaluation: the post-edit scores failing (here: interrupted) still reverts the edit."""
    import core.evaluation as evaluation
    from tests.memit_helpers import REQUESTS, small_hparams

    handle = make_tiny_handle("gpt2")
    hp = small_hparams(write_corpus(tmp_path / "corpus.txt"), v_steps=2)
    snap = snapshot(handle)
    calls = []
    real = evaluation.counterfact_scores

    def scores(h, requests, **kw):
        calls.append(any(not torch.equal(snap[k], v) for k, v in h.hf.state_dict().items()))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(h, requests, **kw)

    monkeypatch.setattr(evaluation, "counterfact_scores", scores)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_edit(handle, REQUESTS[:2], hparams=hp)
    assert calls == [False, True]           # scored before (unedited) and after (edited)
    assert_unchanged(handle, snap)


def test_tqdm_progress_one_bar_per_phase():
    import io

    from workbench.cli.common import TqdmProgress

    out = io.StringIO()
    progress = TqdmProgress("tracing", file=out)
    progress(1, 4, "covariance")
    first = progress.bar
    progress(3, 4, "covariance")
    assert progress.bar is first and first.n == 3
    progress(2, 10, "targets")                      # a new phase closes the old bar
    assert progress.bar is not first and progress.bar.n == 2 and progress.bar.total == 10
    progress(10, 10, "targets")                     # a finished phase closes its bar
    assert progress.bar is None
    progress(1, 2, "")
    assert progress.bar.desc == "tracing"
    progress.close()
    assert "covariance" in out.getvalue() and "targets" in out.getvalue()


def test_capacity_warning_names_the_crowded_layer():
    from types import SimpleNamespace

    from workbench.edit_flow import capacity_warning

    assert capacity_warning(SimpleNamespace(stored_fraction={})) is None           # ROME / FT-W
    assert capacity_warning(SimpleNamespace(stored_fraction={0: 0.9, 1: 0.75})) is None
    text = capacity_warning(SimpleNamespace(stored_fraction={0: 0.62, 1: 0.4}))
    assert text.startswith("Layer 1 stored only 40 %") and "fewer facts" in text


def test_capacity_command_reports_each_size_and_changes_nothing(setup, capsys):
    handle, opts, tmp = setup
    cases = [{"case_id": i, "requested_rewrite": {"prompt": "{} plays the", "relation_id": "P1", "subject": s,
                                                   "target_new": {"str": "chess"}, "target_true": {"str": "golf"}}}
             for i, s in enumerate(["Miles Davis", "Kara Selwyn", "Orla Venn", "Norvania", "Toyota"])]
    (tmp / "cf.json").write_text(json.dumps(cases))
    snap = snapshot(handle)
    opts = [o for o in opts if o not in ("--workspace", str(tmp / "ws"), "--steps", "3")]
    rc = main(["capacity", str(tmp / "cf.json"), "--sizes", "3,1", "--outside", "2", "--lambda", "5",
               *opts, "--json", str(tmp / "c.json")])
    assert rc == 0
    r = json.loads((tmp / "c.json").read_text())
    assert r["layers"] == [0, 1] and r["lambda"] == 5.0 and r["outside"] == 2
    assert [(row["layer"], row["n"]) for row in r["rows"]] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    for row in r["rows"]:
        assert 0 < row["stored_p10"] <= row["stored_median"] < 1 and row["eig_min"] > 0
        assert row["leak_median"] > 0
    assert "stored" in capsys.readouterr().out
    assert_unchanged(handle, snap)
    assert main(["capacity", str(tmp / "cf.json"), "--sizes", "9", *opts]) == 2
    assert "only 5 usable cases" in capsys.readouterr().err
    assert main(["capacity", str(tmp / "cf.json"), "--sizes", "a,b", *opts]) == 2
    assert "sizes" in capsys.readouterr().err
    (tmp / "e.csv").write_text(GOOD_CSV)                                   # an edit file works too
    assert main(["capacity", str(tmp / "e.csv"), "--sizes", "2", "--outside", "0", *opts,
                 "--json", str(tmp / "c2.json")]) == 0
    rows = json.loads((tmp / "c2.json").read_text())["rows"]
    assert [row["n"] for row in rows] == [2, 2] and rows[0]["leak_median"] is None
    assert_unchanged(handle, snap)
