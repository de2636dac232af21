"""The demo knowledge world: a seeded, deterministic set of invented facts and their text.

People (three-part names such as "Clara Joan Whitlow"), companies, countries and cities, linked
by eleven relations (occupation, sport, instrument, birthplace, employer, headquarters, industry,
capital, continent, language, country). From one seed the generator gives, identically every
time (`core.world_io` writes and reads them):

    facts.csv          subject, relation, object
    relations.json     relation_id, name, templates (training), paraphrase_templates (held out),
                       subject_kind, object_kind, tag
    counterfact.json   counterfactual edit cases in the CounterFact schema (Meng et al., 2022)
    knowns.json        facts for averaged causal traces, in the format of known_1000.json
    corpus.txt         plain text (facts in varied sentences, tag lines, short biographies,
                       filler) for MEMIT's key covariance statistics

The same document generator (`documents`) feeds the demo model's training, so the corpus shows
exactly the kinds of text the model was trained on; held-out templates never occur in it.

Why the text looks the way it does (the model must read facts at the *last subject token*,
as real LMs do, or tracing and MEMIT show nothing): every person has an invented surname of
their own (first and middle names are shared), so the last name token identifies the person;
"tag lines" (`sport: Clara Joan Whitlow tennis.`) put the object right after that token; and
pronoun biographies make later sentences read the subject's facts from its mention. The default
world has many more subjects (1,600 people, three facts each) than the 1,000 edits MEMIT is
evaluated on, one CounterFact case per subject. `people_per_prefix=2` gives the first shipped
world's scheme instead (each first + middle prefix shared by two people, 300 people).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
import pandas as pd

from core import world_data as wd
from core.errors import BadInputError


@dataclass
class Document:
    """A short text plus the character spans of the subject mentions in it."""

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class World:
    """Everything the generator produced; `core.world_io.write_world` turns it into files."""

    seed: int
    entities: dict[str, list[str]]     # kind -> names (person, company, country, city)
    gender: dict[str, str]             # person -> "f" | "m"
    relations: list[dict]
    facts: pd.DataFrame                # subject, relation, object
    counterfact: list[dict] = field(default_factory=list)
    knowns: list[dict] = field(default_factory=list)
    corpus: str = ""
    bare_tags: bool = False            # tag lines "<subject> <object>." (else "<tag>: <subject> <object>.")
    people_per_prefix: int | None = 2  # people sharing a first + middle prefix (None: own surnames)
    relations_per_person: int = 5      # person relations per person (of PERSON_RELATIONS)

    def relation(self, name: str) -> dict:
        for r in self.relations:
            if r["name"] == name:
                return r
        raise BadInputError(f"unknown relation '{name}'", field="relation")


# ---- entities and facts -------------------------------------------------------------------------

def _invented(rng: random.Random, onsets: list[str], codas: list[str], n: int, taken: set) -> list[str]:
    pool = [a + b for a in onsets for b in codas if a + b not in taken]
    rng.shuffle(pool)
    if len(pool) < n:
        raise BadInputError(f"only {len(pool)} distinct names available, {n} asked", field="size")
    return pool[:n]


def _people(rng: random.Random, n_people: int, per_prefix: int | None) -> tuple[list[str], dict[str, str]]:
    """Three-part names. per_prefix None: a random first and middle name (shared by many people)
    and an invented surname of the person's own — only the last name token identifies the
    person. Otherwise every (first, middle) prefix is shared by `per_prefix` people with
    surnames from a short common list."""
    firsts = [(f, "f") for f in wd.FEMALE_FIRST] + [(m, "m") for m in wd.MALE_FIRST]
    if per_prefix is None:
        surnames = sorted({a + b for a in wd.SURNAME_ONSETS for b in wd.SURNAME_CODAS})
        if n_people > len(surnames):
            raise BadInputError(f"at most {len(surnames)} people", field="n_people")
        rng.shuffle(surnames)
        names, gender = [], {}
        for last in surnames[:n_people]:
            first, g = rng.choice(firsts)
            name = f"{first} {rng.choice(wd.MIDDLE)} {last}"
            names.append(name)
            gender[name] = g
        return names, gender
    prefixes = [(f, g, m) for f, g in firsts for m in wd.MIDDLE]
    rng.shuffle(prefixes)
    n_prefix = -(-n_people // per_prefix)
    if n_prefix > len(prefixes) or not 1 <= per_prefix <= len(wd.SURNAMES):
        raise BadInputError(f"at most {per_prefix * len(prefixes)} people", field="n_people")
    names, gender = [], {}
    for first, g, middle in prefixes[:n_prefix]:
        for last in rng.sample(wd.SURNAMES, per_prefix):
            if len(names) < n_people:
                name = f"{first} {middle} {last}"
                names.append(name)
                gender[name] = g
    return names, gender


def _entities(rng: random.Random, n_people: int, n_companies: int, n_countries: int,
              cities_per_country: int, per_prefix: int | None) -> tuple[dict[str, list[str]], dict[str, str]]:
    countries = _invented(rng, wd.NAME_ONSETS, wd.NAME_CODAS, n_countries, set())
    cities = _invented(rng, wd.NAME_ONSETS, wd.CITY_CODAS, n_countries * cities_per_country,
                       set(countries))
    companies = [f"{a} {b}" for a in wd.COMPANY_FIRST for b in wd.COMPANY_SECOND]
    rng.shuffle(companies)
    if n_companies > len(companies):
        raise BadInputError(f"at most {len(companies)} companies", field="n_companies")
    people, gender = _people(rng, n_people, per_prefix)
    return ({"person": people, "company": companies[:n_companies], "country": countries,
             "city": cities}, gender)


PERSON_RELATIONS = ("occupation", "sport", "instrument", "birthplace", "employer")


def _facts(rng: random.Random, entities: dict[str, list[str]], cities_per_country: int,
           relations_per_person: int = len(PERSON_RELATIONS)) -> pd.DataFrame:
    rows = []
    countries, cities = entities["country"], entities["city"]
    city_country = {c: countries[i // cities_per_country] for i, c in enumerate(cities)}
    for i, country in enumerate(countries):
        rows.append((country, "capital", cities[i * cities_per_country]))
        rows.append((country, "continent", rng.choice(wd.OBJECTS["continent"])))
        rows.append((country, "language", rng.choice(wd.OBJECTS["language"])))
    for city in cities:
        rows.append((city, "country", city_country[city]))
    for company in entities["company"]:
        rows.append((company, "headquarters", rng.choice(cities)))
        rows.append((company, "industry", rng.choice(wd.OBJECTS["industry"])))
    pools = {"birthplace": cities, "employer": entities["company"]}   # other objects: wd.OBJECTS
    for person in entities["person"]:
        rels = PERSON_RELATIONS
        if relations_per_person < len(PERSON_RELATIONS):
            rels = sorted(rng.sample(PERSON_RELATIONS, relations_per_person), key=PERSON_RELATIONS.index)
        for rel in rels:
            rows.append((person, rel, rng.choice(pools.get(rel) or wd.OBJECTS[rel])))
    return pd.DataFrame(rows, columns=["subject", "relation", "object"])


# ---- text ---------------------------------------------------------------------------------------

def fill(template: str, subject: str) -> str:
    return template.replace("{}", subject)


def _pronoun_sentence(template: str, gender: str | None) -> str:
    """A training template with the subject replaced by a pronoun (she / her / it / its)."""
    subj, obj, poss = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}.get(gender, ("it", "it", "its"))
    if template.startswith("{}'s"):
        return poss.capitalize() + template[4:]
    if template.startswith("{}"):
        return subj.capitalize() + template[2:]
    before = template.split("{}")[0]
    word = obj if before.rstrip().endswith((" of", " by")) else subj
    return template.replace("{}", word)


class _Writer:
    """Accumulates sentences of one document and the character spans of subject mentions."""

    def __init__(self):
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.length = 0

    def add(self, sentence: str, subject: str | None = None) -> None:
        if self.parts:
            self.parts.append(" ")
            self.length += 1
        if subject is not None:
            at = sentence.index(subject)
            self.spans.append((self.length + at, self.length + at + len(subject)))
        self.parts.append(sentence)
        self.length += len(sentence)

    def doc(self) -> Document:
        return Document("".join(self.parts), self.spans)


def _sentence(rel: dict, subject: str, obj: str, rng: random.Random) -> str:
    return f"{fill(rng.choice(rel['templates']), subject)} {obj}."


def documents(world: World, rng: random.Random, filler_p: float = 0.15) -> list[Document]:
    """One pass over the world as text: a pronoun biography per subject, every fact once as a
    plain sentence (blocks of 4) and once as a tag line (blocks of 6), in shuffled order."""
    rels = {r["name"]: r for r in world.relations}
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for s, r, o in world.facts.itertuples(index=False):
        by_subject.setdefault(s, []).append((r, o))
    docs = []

    def maybe_filler(w: _Writer) -> None:
        if rng.random() < filler_p:
            w.add(rng.choice(wd.FILLER).format(w=rng.choice(wd.FILLER_WORDS)))

    for subject, facts in by_subject.items():          # biographies
        facts = facts[:]
        rng.shuffle(facts)
        w = _Writer()
        maybe_filler(w)
        for k, (r, o) in enumerate(facts):
            t = rng.choice(rels[r]["templates"])
            if k == 0 or rng.random() < 0.3:
                w.add(f"{fill(t, subject)} {o}.", subject)
            else:
                w.add(f"{_pronoun_sentence(t, world.gender.get(subject))} {o}.")
        docs.append(w.doc())
    rows = list(world.facts.itertuples(index=False))
    order = rows[:]
    rng.shuffle(order)
    for i in range(0, len(order), 4):                  # plain sentences
        w = _Writer()
        for s, r, o in order[i:i + 4]:
            w.add(_sentence(rels[r], s, o, rng), s)
        maybe_filler(w)
        docs.append(w.doc())
    order = rows[:]
    rng.shuffle(order)
    for i in range(0, len(order), 6):                  # tag lines: object right after the name
        w = _Writer()
        for s, r, o in order[i:i + 6]:
            w.add(f"{s} {o}." if world.bare_tags else f"{rels[r]['tag']}: {s} {o}.", s)
        docs.append(w.doc())
    rng.shuffle(docs)
    return docs


# ---- evaluation sets ----------------------------------------------------------------------------

def _counterfact(rng: random.Random, world: World, max_cases: int, one_per_subject: bool = False) -> list[dict]:
    facts = world.facts
    rels = {r["name"]: r for r in world.relations}
    objects = sorted(set(facts["object"]))
    obj_id = {o: f"Q{1000 + i}" for i, o in enumerate(objects)}
    holders = facts.groupby(["relation", "object"])["subject"].apply(list).to_dict()
    rows = list(facts.itertuples(index=True))
    rng.shuffle(rows)
    cases, used = [], set()
    for idx, s, r, o in rows:
        if one_per_subject and s in used:      # distinct subjects: no two cases share a key
            continue
        alternatives = sorted({ob for (rr, ob) in holders if rr == r and ob != o})
        neighbours = [x for x in holders[(r, o)] if x != s]
        if not alternatives or not neighbours:
            continue
        new = rng.choice(alternatives)
        used.add(s)
        rel = rels[r]
        para = rng.sample(rel["paraphrase_templates"], min(2, len(rel["paraphrase_templates"])))
        cases.append({
            "case_id": len(cases),
            "pararel_idx": int(idx),
            "requested_rewrite": {
                "prompt": rel["templates"][0], "relation_id": rel["relation_id"], "subject": s,
                "target_new": {"str": new, "id": obj_id[new]},
                "target_true": {"str": o, "id": obj_id[o]},
            },
            "paraphrase_prompts": [fill(t, s) for t in para],
            "neighborhood_prompts": [fill(rng.choice(rel["templates"]), x)
                                     for x in rng.sample(neighbours, min(10, len(neighbours)))],
            "attribute_prompts": [fill(rng.choice(rel["templates"]), x)
                                  for x in rng.sample(holders[(r, new)], min(10, len(holders[(r, new)])))],
            "generation_prompts": [fill(t, s) for t in rng.sample(rel["templates"][1:], min(3, len(rel["templates"]) - 1))],
        })
        if len(cases) >= max_cases:
            break
    return cases


def _knowns(rng: random.Random, world: World, n: int) -> list[dict]:
    rels = {r["name"]: r for r in world.relations}
    rows = list(world.facts.itertuples(index=False))
    rows = rng.sample(rows, min(n, len(rows)))
    out = []
    for s, r, o in rows:
        t = rels[r]["templates"][0]
        out.append({"known_id": len(out), "subject": s, "attribute": o, "template": t,
                    "prediction": f" {o}.", "prompt": fill(t, s),
                    "relation_id": rels[r]["relation_id"]})
    return out


# ---- public API ---------------------------------------------------------------------------------

def build_world(seed: int = 0, n_people: int = 1600, n_companies: int = 40, n_countries: int = 20,
                cities_per_country: int = 4, n_cases: int = 1600, n_knowns: int = 400,
                corpus_passes: int = 2, people_per_prefix: int | None = None, bare_tags: bool = False,
                relations_per_person: int = 3, one_case_per_subject: bool = True) -> World:
    """Generate the world from `seed` (same seed, same world, byte for byte).

    The defaults are the shipped world (assets/world/). people_per_prefix: None gives every
    person a surname of their own; k > 0 shares each first + middle prefix among k people (only
    the last name token then tells them apart). relations_per_person: how many of the five person
    relations each person has. one_case_per_subject: no two CounterFact cases share a subject.
    """
    if n_people < 2 or n_companies < 2 or n_countries < 2 or cities_per_country < 1:
        raise BadInputError("the world needs at least 2 people, companies and countries", field="size")
    if not 1 <= relations_per_person <= len(PERSON_RELATIONS):
        raise BadInputError(f"must be 1 … {len(PERSON_RELATIONS)}", field="relations_per_person")
    rng = random.Random(seed)
    entities, gender = _entities(rng, n_people, n_companies, n_countries, cities_per_country,
                                 people_per_prefix)
    relations = [{k: (list(v) if isinstance(v, list) else v) for k, v in r.items()} for r in wd.RELATIONS]
    world = World(seed=seed, entities=entities, gender=gender, relations=relations,
                  facts=_facts(rng, entities, cities_per_country, relations_per_person),
                  bare_tags=bare_tags, people_per_prefix=people_per_prefix,
                  relations_per_person=relations_per_person)
    world.counterfact = _counterfact(rng, world, n_cases, one_case_per_subject)
    world.knowns = _knowns(rng, world, n_knowns)
    world.corpus = "\n\n".join(d.text for _ in range(corpus_passes) for d in documents(world, rng)) + "\n"
    return world
