"""The demo world's files: write a generated world, read it back, and draw example edits from it.

Layout of a world folder (default `assets/world/`) is described in `core.world`; `entities.json`
also records the seed and the name scheme, so `load_world` gives back the `World` that was written.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from core.errors import BadInputError
from core.world import World


def world_dir() -> Path:
    """The shipped world files: `assets/world/`."""
    return Path(__file__).resolve().parent.parent / "assets" / "world"


def write_world(world: World, out_dir: str | Path | None = None) -> Path:
    """Write the world's files into `out_dir` (default `assets/world/`)."""
    out = Path(out_dir) if out_dir is not None else world_dir()
    out.mkdir(parents=True, exist_ok=True)
    world.facts.to_csv(out / "facts.csv", index=False, lineterminator="\n")
    dump = lambda obj: json.dumps(obj, indent=1, ensure_ascii=False) + "\n"  # noqa: E731
    (out / "relations.json").write_text(dump(world.relations))
    (out / "counterfact.json").write_text(dump(world.counterfact))
    (out / "knowns.json").write_text(dump(world.knowns))
    (out / "entities.json").write_text(dump({"seed": world.seed, "bare_tags": world.bare_tags,
                                             "people_per_prefix": world.people_per_prefix,
                                             "relations_per_person": world.relations_per_person,
                                             "entities": world.entities, "gender": world.gender}))
    (out / "corpus.txt").write_text(world.corpus)
    return out


def _dir(d) -> Path:
    p = Path(d) if d is not None else world_dir()
    if not (p / "facts.csv").is_file():
        raise BadInputError(f"no world at {p}; build it with `workbench demo build-world`", field="world")
    return p


def load_relations(dir: str | Path | None = None) -> list[dict]:  # noqa: A002 (public name)
    """The relation table (see module docstring)."""
    return json.loads((_dir(dir) / "relations.json").read_text())


def load_facts(dir: str | Path | None = None) -> pd.DataFrame:  # noqa: A002
    """All facts: DataFrame with columns subject, relation, object."""
    return pd.read_csv(_dir(dir) / "facts.csv", dtype=str, keep_default_na=False)


def load_world(dir: str | Path | None = None) -> World:  # noqa: A002
    """Read a written world back (corpus and evaluation sets included)."""
    p = _dir(dir)
    ent = json.loads((p / "entities.json").read_text())
    return World(seed=ent["seed"], entities=ent["entities"], gender=ent["gender"],
                 bare_tags=ent.get("bare_tags", False),
                 people_per_prefix=ent.get("people_per_prefix", 2),   # files before the key: 2
                 relations_per_person=ent.get("relations_per_person", 5),
                 relations=load_relations(p), facts=load_facts(p),
                 counterfact=json.loads((p / "counterfact.json").read_text()),
                 knowns=json.loads((p / "knowns.json").read_text()),
                 corpus=(p / "corpus.txt").read_text())


def example_requests(n: int, seed: int = 0, dir: str | Path | None = None) -> list[dict]:  # noqa: A002
    """n counterfactual edit rows for the app's "example batch" buttons, one per subject:
    {"subject", "prompt" (template with {}), "relation", "target_new", "target_true"}."""
    if n < 1:
        raise BadInputError("n must be at least 1", field="n")
    cases = json.loads((_dir(dir) / "counterfact.json").read_text())
    names = {r["relation_id"]: r["name"] for r in load_relations(dir)}
    rng = random.Random(seed)
    rng.shuffle(cases)
    out, seen = [], set()
    for c in cases:
        rw = c["requested_rewrite"]
        if rw["subject"] in seen:
            continue
        seen.add(rw["subject"])
        out.append({"subject": rw["subject"], "prompt": rw["prompt"],
                    "relation": names[rw["relation_id"]], "target_new": rw["target_new"]["str"],
                    "target_true": rw["target_true"]["str"]})
        if len(out) == n:
            break
    return out
