"""The demo model: the shipped weights know their world; the training code learns a micro world."""

from __future__ import annotations

import pytest
import torch

from core.demo_recall import measure_recall, recalled
from core.demo_train import TrainConfig, curriculum_mask, early_mask, make_batch, train_demo_model
from core.model import demo_model_dir
from core.subject import locate_subject
from core.world import build_world
from core.world_io import load_facts, load_relations, world_dir


# The first shipped world's name scheme (prefix shared by two, five relations per person): the
# micro worlds below keep it, so these tests do not move with the shipped recipe.
FIRST_WORLD_SCHEME = dict(people_per_prefix=2, relations_per_person=5, one_case_per_subject=False)


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (demo_model_dir() / "config.json").is_file():
        pytest.skip("demo model not built yet (workbench demo train)")
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    return model.eval(), tok


def test_shipped_model_is_plain_gpt2(shipped):
    model, tok = shipped
    assert model.config.model_type == "gpt2"
    assert tok.is_fast and tok.eos_token is not None and tok.pad_token is not None
    files = list(demo_model_dir().iterdir())
    assert sum(f.stat().st_size for f in files if f.is_file()) < 25 * 2**20
    assert (demo_model_dir() / "model.safetensors").is_file()
    assert (demo_model_dir() / "README.md").is_file()


def test_shipped_model_meets_recall_targets(shipped):
    model, tok = shipped
    r = measure_recall(model, tok, load_facts(), load_relations(), max_facts=120, seed=1)
    assert r.n_facts == 120
    assert r.train_top1 >= 0.95
    assert r.heldout_top1 >= 0.85


def test_last_subject_token_is_the_surname(shipped):
    """Tracing and MEMIT read the last subject token: it must be a whole name token."""
    _, tok = shipped
    facts = load_facts()
    people = facts[facts["relation"] == "sport"]["subject"].tolist()[:50]
    for person in people:
        prompt = f"{person} plays the sport of"
        span = locate_subject(tok, prompt, person)
        ids = tok(prompt)["input_ids"]
        assert tok.decode(ids[span.last]) == " " + person.split()[-1]
        assert span.start == 0 and span.end - span.start >= 3


def test_load_model_demo_and_greedy_answer(shipped):
    from core.model import load_model

    handle = load_model("demo", device="cpu")
    assert handle.n_layers == shipped[0].config.n_layer
    # the key room: 6,144 units appended to layer 0's MLP at load, nowhere else
    d = shipped[0].config.n_inner
    assert handle.key_room == {"layers": [0], "extra": 6144, "seed": 0}
    assert [handle.d_mlp_at(i) for i in range(handle.n_layers)] == [d + 6144] + [d] * (handle.n_layers - 1)
    f = load_facts().iloc[0]
    rel = next(r for r in load_relations() if r["name"] == f["relation"])
    prompt = rel["templates"][0].replace("{}", f["subject"])
    enc = handle.tokenize([prompt])
    out = handle.hf.generate(**enc, max_new_tokens=3, do_sample=False,
                             pad_token_id=handle.tokenizer.pad_token_id)
    text = handle.tokenizer.decode(out[0, enc["input_ids"].shape[1]:])
    assert text.startswith(" " + f["object"])


def test_demo_preset_lambda_follows_the_range(shipped):
    """A range chosen on the trace page (or --layers) brings the λ measured for it on the demo."""
    import argparse

    from core.hparams import DEMO_LAMBDA_BY_R, DEMO_PRESET, preset_for
    from core.model import load_model
    from workbench.cli.edit import add_hparam_args, hparams_from_args

    handle = load_model("demo", device="cpu")
    assert preset_for(handle).layers == DEMO_PRESET["layers"] == [0]
    assert preset_for(handle).n_context == 10                       # ten context prefixes for z
    assert preset_for(handle).mom2_weight == DEMO_PRESET["mom2_weight"] == DEMO_LAMBDA_BY_R[(0,)]
    assert preset_for(handle, layers=[1, 0]).mom2_weight == DEMO_LAMBDA_BY_R[(0, 1)] == 100.0
    assert preset_for(handle, layers=[2, 3]).mom2_weight == DEMO_PRESET["mom2_weight"]   # not measured
    p = argparse.ArgumentParser()
    add_hparam_args(p)
    args = p.parse_args(["--layers", "0,1"])
    args.method = "memit"
    assert hparams_from_args(handle, args).mom2_weight == 100.0
    args = p.parse_args(["--layers", "0-1", "--lambda", "7", "--n-context", "5"])
    args.method = "memit"
    hp = hparams_from_args(handle, args)
    assert (hp.mom2_weight, hp.n_context, hp.v_steps) == (7.0, 5, DEMO_PRESET["v_steps"])


def test_curriculum_mask_hides_early_subject_tokens():
    m = curriculum_mask(8, [(2, 5)])
    brute = torch.zeros(8, 8, dtype=torch.bool)
    for q in range(8):
        for k in range(q + 1):
            brute[q, k] = not (q >= 5 and 2 <= k < 4)
    assert torch.equal(m, brute)
    assert m[4, 2] and m[4, 3]            # the last subject token still reads the whole name
    assert not m[6, 2] and m[6, 4]        # later tokens see only the last subject token


def test_early_mask_hides_the_whole_subject_in_masked_documents_only():
    items = [(list(range(8)), [(2, 5)]), (list(range(6)), [(1, 3)])]
    batch = make_batch(items, 0, [True, False])
    early = early_mask(batch["attention_mask"], items, [True, False])
    brute = torch.zeros(8, 8, dtype=torch.bool)
    for q in range(8):
        for k in range(q + 1):
            brute[q, k] = not (q >= 5 and 2 <= k < 5)
    assert torch.equal(early[0, 0], brute)                       # not even the last subject token
    assert torch.equal(early[1], batch["attention_mask"][1])     # unmasked document: unchanged


def test_early_blocks_change_training_and_leave_a_plain_model():
    world = build_world(seed=5, n_people=12, n_companies=3, n_countries=2, cities_per_country=2,
                        n_cases=5, n_knowns=5, corpus_passes=1, **FIRST_WORLD_SCHEME)
    base = dict(seed=0, vocab_size=400, n_layer=2, n_embd=32, n_head=2, n_inner=128, epochs=2, mask_p=1.0,
                threads=1)
    plain = train_demo_model(world, TrainConfig(**base, early_blocks=0))
    early = train_demo_model(world, TrainConfig(**base, early_blocks=1))
    assert plain.log[-1]["loss"] != early.log[-1]["loss"]
    assert not early.model.transformer.h[0].attn._forward_pre_hooks      # hooks removed


def test_padded_batch_matches_unpadded_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()
    items = [([5, 6, 7, 8, 9, 10], [(1, 4)]), ([11, 12, 13], [])]
    batch = make_batch(items, pad_id=0, masked=[False, False])
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        alone = model(input_ids=torch.tensor([[11, 12, 13]])).logits
    assert torch.allclose(padded[1, :3], alone[0], atol=1e-5)
    assert batch["labels"][1, 3:].eq(-100).all()


@pytest.fixture(scope="module")
def micro():
    world = build_world(seed=5, n_people=12, n_companies=3, n_countries=2, cities_per_country=2,
                        n_cases=10, n_knowns=10, corpus_passes=1, **FIRST_WORLD_SCHEME)
    cfg = TrainConfig(seed=0, vocab_size=400, n_layer=2, n_embd=64, n_head=2, n_inner=512, epochs=150,
                      batch_size=8, lr=3e-3, warmup_steps=20, mask_p=0.5, early_blocks=0, threads=1)
    return world, train_demo_model(world, cfg)


def test_micro_world_trains_to_high_recall(micro):
    world, res = micro
    r = measure_recall(res.model, res.tokenizer, world.facts, world.relations)
    assert r.n_facts == len(world.facts)
    assert r.train_top1 >= 0.9
    assert res.log[-1]["loss"] < res.log[0]["loss"] / 3


def test_training_is_deterministic(micro):
    world, res = micro
    cfg = TrainConfig(**{**res.config.__dict__, "epochs": 2})
    a, b = train_demo_model(world, cfg), train_demo_model(world, cfg)
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_recalled_agrees_with_generate(micro):
    world, res = micro
    rel = {r["name"]: r for r in world.relations}
    rows = list(world.facts.itertuples(index=False))[:12]
    prompts = [rel[r]["templates"][0].replace("{}", s) for s, r, _ in rows]
    objects = [o for _, _, o in rows]
    hits = recalled(res.model, res.tokenizer, prompts, objects)
    for p, o, h in zip(prompts, objects, hits):
        ids = res.tokenizer(p, return_tensors="pt")["input_ids"]
        n_obj = len(res.tokenizer(" " + o)["input_ids"])
        out = res.model.generate(ids, max_new_tokens=n_obj, do_sample=False,
                                 pad_token_id=res.tokenizer.pad_token_id)
        assert (res.tokenizer.decode(out[0, ids.shape[1]:]) == " " + o) == h
    assert world_dir().name == "world"


def test_model_card_from_measured_numbers(micro):
    from dataclasses import replace

    from core.demo_card import model_card
    from core.demo_recall import subject_token_effects

    world, res = micro
    recall = measure_recall(res.model, res.tokenizer, world.facts, world.relations)
    effects = subject_token_effects(res.model, res.tokenizer, world.knowns[:5], n_samples=1)
    summary = {"seed": 5, "n_facts": len(world.facts), "n_subjects": world.facts["subject"].nunique(),
               "n_relations": len(world.relations), "people_per_prefix": 2}
    card = model_card(res, recall, effects, summary)
    assert f"**{recall.train_top1:.1%}** on training templates" in card
    assert "shared by 2 people" in card and "not even to that token" not in card
    assert card.count("| last subject |") == 1
    early = replace(res, config=replace(res.config, early_blocks=2))
    card2 = model_card(early, recall, effects, {**summary, "people_per_prefix": None})
    assert "surname of their own" in card2 and "in blocks 0-1 not even to that token" in card2


def test_training_restores_the_thread_count(micro):
    world, res = micro
    before = torch.get_num_threads()
    train_demo_model(world, TrainConfig(**{**res.config.__dict__, "epochs": 1, "threads": before + 1}))
    assert torch.get_num_threads() == before


def test_card_command_rewrites_measured_sections_and_keeps_notes(micro, tmp_path):
    """`workbench demo card`: recall, averaged trace and a MEMIT evaluation measured on the saved
    model, the old card's hand-written sections kept, the rest replaced."""
    import json

    from core.demo_train import load_train_result, save_demo_model
    from core.world_io import write_world
    from workbench.cli import main

    world, res = micro
    wdir, mdir = write_world(world, tmp_path / "world"), save_demo_model(res, tmp_path / "model")
    back = load_train_result(mdir)
    assert back.config == res.config and back.log == res.log
    (mdir / "README.md").write_text("# old card\n\n## Recall\n\nstale numbers\n\n## Key room\n\nwhy the units\n\n"
                                    "## Earlier models\n\nnotes from an older recipe\n")
    out = tmp_path / "card.json"
    assert main(["demo", "card", "--model-dir", str(mdir), "--world", str(wdir), "--json", str(out)]) == 0
    card, d = (mdir / "README.md").read_text(), json.loads(out.read_text())
    assert "stale numbers" not in card and "# old card" not in card
    assert card.count("## Recall") == 1 and "notes from an older recipe" in card and "why the units" in card
    room = res.config.key_room
    assert room > 0 and f"with the key room ({room:,} extra key dimensions at layer 0)" in card
    assert json.loads((mdir / "key_room.json").read_text())["extra"] == room
    assert card.index("## Earlier models") > card.index("## MEMIT on this model")
    assert f"**{d['train_top1']:.1%}** on training templates" in card
    post = d["memit_n100"]["post"]
    assert all(0 <= post[k] <= 100 for k in ("ES", "PS", "NS"))
    assert f"| after | {post['ES']:.1f} | {post['PS']:.1f} | {post['NS']:.1f} |" in card
    assert d["suggested_layers"] and all(0 <= x < res.config.n_layer for x in d["suggested_layers"])
    assert f"Suggested R = {d['suggested_layers']}" in card


def test_card_command_needs_a_trained_folder(tmp_path):
    from core.errors import BadInputError
    from core.demo_train import load_train_result

    with pytest.raises(BadInputError, match="train_config.json"):
        load_train_result(tmp_path)


def test_train_command_takes_model_sizes(micro, tmp_path, capsys):
    """`workbench demo train --n-layer/--n-inner`: a model of that shape, its recipe recorded;
    sizes < 1 and devices torch does not know are refused before anything is trained."""
    import json

    from core.world_io import write_world
    from workbench.cli import main

    world, _ = micro
    wdir = write_world(world, tmp_path / "world")
    mdir = tmp_path / "model"
    assert main(["demo", "train", "--world", str(wdir), "--out", str(mdir), "--epochs", "1",
                 "--threads", "1", "--n-layer", "2", "--n-inner", "96", "--key-room", "32", "--quick",
                 "--json", "-"]) == 0
    config = json.loads((mdir / "config.json").read_text())
    recipe = json.loads((mdir / "train_config.json").read_text())["config"]
    assert (config["n_inner"], config["n_layer"]) == (96, 2)
    assert (recipe["n_inner"], recipe["n_layer"], recipe["device"], recipe["key_room"]) == (96, 2, "cpu", 32)
    room = json.loads((mdir / "key_room.json").read_text())
    assert (room["layers"], room["extra"], room["seed"]) == ([0], 32, 0)
    assert "1 CPU thread(s)" in (mdir / "README.md").read_text()
    capsys.readouterr()
    for flags, field in ((["--n-inner", "0"], "n-inner"), (["--device", "gpu0"], "device"),
                         (["--key-room", "-1"], "key-room")):
        bad = tmp_path / f"bad-{field}"
        assert main(["demo", "train", "--world", str(wdir), "--out", str(bad), *flags]) == 2
        assert field in capsys.readouterr().err and not bad.exists()
