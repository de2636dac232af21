"""The demo world generator: deterministic, consistent, held-out templates kept out of the corpus."""

from __future__ import annotations

import json

import pytest

from core.errors import BadInputError
from core.world import build_world, fill
from core.world_io import (example_requests, load_facts, load_relations, load_world, world_dir,
                           write_world)

FILES = ["facts.csv", "relations.json", "counterfact.json", "knowns.json", "entities.json", "corpus.txt"]


@pytest.fixture(scope="module")
def world():
    return build_world(seed=0)


def test_same_seed_same_files(tmp_path, world):
    write_world(world, tmp_path / "a")
    write_world(build_world(seed=0), tmp_path / "b")
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_other_seed_other_world(world):
    other = build_world(seed=1, n_people=40, n_cases=50, n_knowns=20, corpus_passes=1)
    assert list(other.facts["subject"][:10]) != list(world.facts["subject"][:10])


def test_shipped_world_is_the_generator_output(tmp_path, world):
    if not (world_dir() / "facts.csv").is_file():
        pytest.skip("assets/world not built")
    write_world(world, tmp_path)
    for f in FILES:
        assert (tmp_path / f).read_bytes() == (world_dir() / f).read_bytes(), f


def test_heldout_templates_never_in_corpus(world):
    corpus = world.corpus
    rels = {r["name"]: r for r in world.relations}
    checked = 0
    for s, r, _ in world.facts.itertuples(index=False):
        for t in rels[r]["paraphrase_templates"]:
            assert fill(t, s) not in corpus, fill(t, s)
            checked += 1
    assert checked > 4000
    # Training templates are used: every relation's canonical prompt occurs filled in.
    for r in world.relations:
        s = world.facts[world.facts["relation"] == r["name"]]["subject"].iloc[0]
        assert any(fill(t, s) in corpus for t in r["templates"])


def test_relations_table(world):
    names = [r["name"] for r in world.relations]
    assert len(names) == len(set(names)) == 11
    for r in world.relations:
        assert r["relation_id"].startswith("P")
        assert len(r["templates"]) >= 3 and len(r["paraphrase_templates"]) >= 2
        for t in r["templates"] + r["paraphrase_templates"]:
            assert t.count("{}") == 1 and not t.endswith(" ")
        assert not set(r["templates"]) & set(r["paraphrase_templates"])


def test_people_have_own_surnames(world):
    """Default (shipped) world: 1,600 people, each with a one-word surname nobody else has, and
    first / middle names shared, so only the last name token identifies a person."""
    people = world.entities["person"]
    assert len(people) == len(set(people)) == 1600
    assert all(len(p.split()) == 3 for p in people)
    assert len({p.split()[-1] for p in people}) == 1600
    assert len({p.split()[0] for p in people}) < 100
    assert len({p.rsplit(" ", 1)[0] for p in people}) < 1600          # prefixes repeat
    per_person = world.facts[world.facts["subject"].isin(people)].groupby("subject").size()
    assert set(per_person) == {3}


@pytest.mark.parametrize("k", [2, 5])
def test_shared_prefix_scheme(k):
    """people_per_prefix=k: each first + middle prefix is shared by k people (the first shipped
    world used k = 2), so only the last name token tells them apart."""
    w = build_world(seed=0, n_people=50, n_cases=5, n_knowns=5, corpus_passes=1, people_per_prefix=k,
                    relations_per_person=5, one_case_per_subject=False)
    groups = {}
    for p in w.entities["person"]:
        groups.setdefault(p.rsplit(" ", 1)[0], []).append(p)
    assert {len(v) for v in groups.values()} == {k}
    assert all(len({p.split()[-1] for p in v}) == k for v in groups.values())


def test_counterfact_schema(world):
    cases = world.counterfact
    assert len(cases) >= 1200
    truth = {(s, r): o for s, r, o in world.facts.itertuples(index=False)}
    rel_name = {r["relation_id"]: r for r in world.relations}
    keys = set()
    for c in cases[:300]:
        rw = c["requested_rewrite"]
        rel = rel_name[rw["relation_id"]]
        assert rw["prompt"] == rel["templates"][0]
        key = (rw["subject"], rel["name"])
        assert truth[key] == rw["target_true"]["str"]
        assert rw["target_new"]["str"] != rw["target_true"]["str"]
        assert not rw["target_new"]["str"].startswith(" ")
        assert c["paraphrase_prompts"] and all(rw["subject"] in p for p in c["paraphrase_prompts"])
        assert c["neighborhood_prompts"] and c["generation_prompts"] and c["attribute_prompts"]
        for p in c["neighborhood_prompts"]:
            subj = next(s for s, r in truth if r == rel["name"] and p.replace(s, "{}") in rel["templates"])
            assert truth[(subj, rel["name"])] == rw["target_true"]["str"] and subj != rw["subject"]
    for c in cases:
        rw = c["requested_rewrite"]
        keys.add((rw["subject"], rw["relation_id"]))
    assert len(keys) == len(cases)
    assert [c["case_id"] for c in cases] == list(range(len(cases)))


def test_knowns_format(world):
    ref_fields = {"known_id", "subject", "attribute", "template", "prediction", "prompt", "relation_id"}
    assert len(world.knowns) >= 300
    for k in world.knowns:
        assert set(k) == ref_fields
        assert k["prompt"] == fill(k["template"], k["subject"])


def test_roundtrip_and_example_requests(tmp_path, world):
    write_world(world, tmp_path)
    facts = load_facts(tmp_path)
    assert list(facts.columns) == ["subject", "relation", "object"]
    assert facts.equals(world.facts)
    assert load_relations(tmp_path) == world.relations
    back = load_world(tmp_path)
    assert back.counterfact == world.counterfact and back.corpus == world.corpus
    rows = example_requests(25, seed=3, dir=tmp_path)
    assert len(rows) == 25 and len({r["subject"] for r in rows}) == 25
    truth = {(s, r): o for s, r, o in facts.itertuples(index=False)}
    for r in rows:
        assert set(r) == {"subject", "prompt", "relation", "target_new", "target_true"}
        assert truth[(r["subject"], r["relation"])] == r["target_true"] != r["target_new"]
        assert "{}" in r["prompt"]
    assert rows == example_requests(25, seed=3, dir=tmp_path)


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInputError) as e:
        load_facts(tmp_path)
    assert e.value.field == "world"
    with pytest.raises(BadInputError):
        example_requests(0)
    with pytest.raises(BadInputError):
        build_world(n_people=1)
    assert json.dumps(build_world(seed=2, n_people=10, n_cases=5, n_knowns=5, corpus_passes=1).relations)


def test_no_template_is_a_prefix_of_another(world):
    """'{} plays the' next to '{} plays the sport of' would make the object a coin flip."""
    by_kind = {}
    for r in world.relations:
        by_kind.setdefault(r["subject_kind"], []).extend(r["templates"])
    for templates in by_kind.values():
        for a in templates:
            assert not any(b != a and b.startswith(a + " ") for b in templates), a


def test_world_options_for_larger_worlds():
    """Options for recipes with more subjects than edits (see README, demo world): own surnames,
    fewer relations per person, one CounterFact case per subject."""
    w = build_world(seed=3, n_people=120, n_cases=60, n_knowns=5, corpus_passes=1, people_per_prefix=None,
                    relations_per_person=3, one_case_per_subject=True)
    people = w.entities["person"]
    assert len({p.split()[-1] for p in people}) == len(people) == 120          # own surnames
    assert len({p.split()[0] for p in people}) < 60                            # shared first names
    per_person = w.facts[w.facts["subject"].isin(people)].groupby("subject").size()
    assert set(per_person) == {3}
    subjects = [c["requested_rewrite"]["subject"] for c in w.counterfact]
    assert len(subjects) == len(set(subjects)) == 60
    with pytest.raises(BadInputError, match="relations_per_person"):
        build_world(n_people=10, relations_per_person=0)
    with pytest.raises(BadInputError, match="n_people"):
        build_world(n_people=5000, people_per_prefix=None)


def test_entities_file_records_the_name_scheme(tmp_path):
    w = build_world(seed=1, n_people=40, n_cases=10, n_knowns=5, corpus_passes=1, people_per_prefix=None,
                    relations_per_person=2)
    back = load_world(write_world(w, tmp_path))
    assert back.people_per_prefix is None and back.relations_per_person == 2
