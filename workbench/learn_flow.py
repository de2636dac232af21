"""The Learn page's plumbing: a demo-world fact to follow through the tour, and its edit request.

The tour uses facts from the demo world's knowns file (facts the model was trained on) so every
step works offline on the demo model; the edit for step 4 is a counterfactual object of the same
relation, with the relation's held-out paraphrases and two other subjects' facts as neighbours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.requests import EditRequest, fill, load_relations


@dataclass(frozen=True)
class TourFact:
    prompt: str
    subject: str
    template: str
    answer: str
    relation_id: str


def tour_facts(n: int = 12) -> list[TourFact]:
    """The first n facts of the demo world's knowns file, one per relation first."""
    from workbench.trace_flow import knowns_path

    path = knowns_path()
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    facts = [TourFact(r["prompt"], r["subject"], r["template"], r["attribute"], r["relation_id"])
             for r in rows if {"prompt", "subject", "template", "attribute", "relation_id"} <= set(r)]
    seen, first = set(), []
    for f in facts:
        if f.relation_id not in seen:
            seen.add(f.relation_id)
            first.append(f)
    rest = [f for f in facts if f not in first]
    return (first + rest)[:n]


def alternative_objects(fact: TourFact) -> list[str]:
    """Other objects of the same relation in the demo world (choices for the new object)."""
    from core.world_io import load_facts

    facts = load_facts()
    name = load_relations().get(fact.relation_id.lower(), {}).get("name")
    objs = sorted(set(facts[facts["relation"] == name]["object"]) - {fact.answer}) if name else []
    return objs


def tour_request(fact: TourFact, new_object: str) -> EditRequest:
    """The edit (s, r, o*) for the tour: held-out paraphrases and two neighbours of the relation."""
    from workbench.trace_flow import knowns_path

    rel = load_relations().get(fact.relation_id.lower(), {})
    paraphrases = tuple(fill(t, fact.subject) for t in rel.get("paraphrase_templates", []))
    rows = json.loads(knowns_path().read_text())
    neighbours = tuple(r["prompt"] for r in rows if r.get("relation_id") == fact.relation_id
                       and r.get("subject") != fact.subject and r.get("attribute") == fact.answer)[:2]
    if len(neighbours) < 2:
        neighbours += tuple(r["prompt"] for r in rows if r.get("relation_id") == fact.relation_id
                            and r.get("subject") != fact.subject)[:2 - len(neighbours)]
    return EditRequest(prompt=fact.template, subject=fact.subject, target_new=new_object.strip(),
                       target_true=fact.answer, relation_id=fact.relation_id,
                       paraphrase_prompts=paraphrases, neighborhood_prompts=neighbours)
