"""Edit requests: what to write into the model, read from files and checked before anything runs.

An edit request (s, r, o) is a prompt template for the relation r with one "{}" where the
subject s goes ("{} plays the sport of"), the subject, and the new object o (paper §3, Eq. 5).
Readers accept
    CSV          columns subject, relation (or prompt), object (or target_new), optional
                 true_object (target_true), relation_id, paraphrase_prompts ("|"-separated), case_id;
                 a relation is a template with "{}" or a name/id from the demo world's relation
                 table (assets/world/relations.json), which then also supplies held-out paraphrases;
    JSON         a list of objects with the same keys (or `EditRequest.to_dict()` output);
    CounterFact  records as published (requested_rewrite, paraphrase_prompts, ...);
    zsRE         records as published by MEND (src, subject, answers, rephrase, loc, loc_ans).
Every problem is reported with its 1-based row number (the header line is not a row) and field;
nothing is half-read: `read_requests` raises `RequestValidationError` listing all problems.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.errors import BadInputError
from core.relation_table import load_relations, template_ids
from core.request_text import text_problems

DEFAULT_MAX_BYTES = 20 * 2**20  # the app's upload limit (20 MB)
FORMATS = ("csv", "json", "counterfact", "zsre")

# CSV / JSON column aliases -> EditRequest field.
_ALIASES = {
    "subject": "subject", "prompt": "prompt", "relation": "relation", "template": "prompt",
    "object": "target_new", "target_new": "target_new", "new_object": "target_new",
    "true_object": "target_true", "target_true": "target_true", "old_object": "target_true",
    "relation_id": "relation_id", "paraphrase_prompts": "paraphrase_prompts",
    "neighborhood_prompts": "neighborhood_prompts", "generation_prompts": "generation_prompts",
    "case_id": "case_id", "neighborhood_target": "neighborhood_target",
}


@dataclass(frozen=True)
class EditRequest:
    """One edit (s, r, o).

    prompt:      template with exactly one "{}" for the subject ("{} plays the sport of").
    target_new:  the new object without a leading space ("tennis"); tokenised as " tennis".
    target_true: the object the model knows now (needed for CounterFact ES/PS/NS).
    paraphrase_prompts / neighborhood_prompts / generation_prompts: filled prompts (subject in).
    neighborhood_target: answer of the neighbourhood prompts when it is not target_true (zsRE).
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    relation_id: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    case_id: int | None = None
    neighborhood_target: str | None = None

    @property
    def filled(self) -> str:
        return fill(self.prompt, self.subject)

    @property
    def relation_key(self) -> str:
        """What identifies r for the conflict rule of Eq. 5: the relation id, else the template."""
        return self.relation_id or self.prompt

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EditRequest":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
            kw[k] = tuple(kw.get(k) or ())
        return cls(**kw)


@dataclass(frozen=True)
class RowProblem:
    row: int          # 1-based record number; 0 = the file as a whole
    field: str
    message: str

    def __str__(self) -> str:
        where = "file" if self.row == 0 else f"row {self.row}"
        return f"{where}, {self.field}: {self.message}"


class RequestValidationError(BadInputError):
    """Bad edit requests; `.problems` lists every one (row, field, message)."""

    def __init__(self, problems: list[RowProblem]):
        self.problems = list(problems)
        shown = "; ".join(str(p) for p in self.problems[:10])
        more = f"; … and {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in the edit requests: {shown}{more}")
        self.field = self.problems[0].field if self.problems else None


@dataclass
class ValidationReport:
    requests: list[EditRequest]          # valid ones, exact duplicates dropped
    problems: list[RowProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            raise RequestValidationError(self.problems)


def fill(template: str, subject: str) -> str:
    """Put the subject into the template's "{}" (no str.format: subjects may contain braces)."""
    return template.replace("{}", subject, 1)


# ---- rows -> requests ---------------------------------------------------------------------------

def _split_list(v) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(str(x).strip() for x in v if str(x).strip())
    return tuple(x.strip() for x in str(v).split("|") if x.strip())


def _text(v) -> str:
    return "" if v is None else str(v).strip()


def _row_request(row: dict, n: int, table: dict, tmpl_ids: dict) -> tuple[EditRequest | None, list[RowProblem]]:
    """One row (keys already mapped to field names) -> request or problems."""
    probs = [RowProblem(n, name, why) for name, why in text_problems(row)]
    if probs:
        return None, probs
    subject = _text(row.get("subject"))
    if not subject:
        probs.append(RowProblem(n, "subject", "empty"))
    target = _text(row.get("target_new"))
    if not target:
        probs.append(RowProblem(n, "object", "empty"))
    prompt = _text(row.get("prompt"))
    relation = _text(row.get("relation"))
    relation_id = _text(row.get("relation_id")) or None
    paraphrases = _split_list(row.get("paraphrase_prompts"))
    source = prompt or relation
    src_field = "prompt" if prompt else "relation"
    if not source:
        probs.append(RowProblem(n, "relation", "empty (give a template with '{}' or a relation name)"))
    elif "{}" not in source:
        rec = table.get(source.lower())
        if rec is None:
            known = sorted({r["name"] for r in table.values()})
            hint = f" (known: {', '.join(known)})" if known else " (no relation table is available)"
            probs.append(RowProblem(n, src_field, f"'{source}' has no '{{}}' for the subject and is "
                                    f"not a known relation name{hint}"))
        else:
            prompt = rec["templates"][0]
            relation_id = relation_id or rec["relation_id"]
            if not paraphrases and subject:
                paraphrases = tuple(fill(t, subject) for t in rec.get("paraphrase_templates", []))
    else:
        prompt = source
        if prompt.count("{}") > 1:
            probs.append(RowProblem(n, src_field, f"'{prompt}' has {prompt.count('{}')} '{{}}'; "
                                    "exactly one is needed, for the subject"))
        if "relation_id" not in row:      # a known template names its relation (for Eq. 5)
            relation_id = tmpl_ids.get(prompt)
    if subject:
        for p in paraphrases:
            if subject not in p:
                probs.append(RowProblem(n, "paraphrase_prompts",
                                        f"the subject '{subject}' is absent from the filled prompt '{p}'"))
    case_id = row.get("case_id")
    if case_id not in (None, ""):
        try:
            case_id = int(case_id)
        except (TypeError, ValueError):
            probs.append(RowProblem(n, "case_id", f"'{case_id}' is not an integer"))
    else:
        case_id = None
    if probs:
        return None, probs
    return EditRequest(
        prompt=prompt, subject=subject, target_new=target,
        target_true=_text(row.get("target_true")) or None, relation_id=relation_id,
        paraphrase_prompts=paraphrases,
        neighborhood_prompts=_split_list(row.get("neighborhood_prompts")),
        generation_prompts=_split_list(row.get("generation_prompts")),
        case_id=case_id, neighborhood_target=_text(row.get("neighborhood_target")) or None,
    ), []


def _normalise_keys(row: dict) -> dict:
    return {_ALIASES.get(str(k).strip().lower(), str(k).strip().lower()): v for k, v in row.items()}


def _missing_columns(keys) -> list[str]:
    keys = set(keys)
    missing = []
    if "subject" not in keys:
        missing.append("subject")
    if not keys & {"prompt", "relation"}:
        missing.append("relation (or prompt)")
    if "target_new" not in keys:
        missing.append("object (or target_new)")
    return missing


def requests_from_rows(rows: list[dict], relations=None, *,
                       numbers: list[int] | None = None) -> tuple[list[EditRequest], list[RowProblem]]:
    """Table rows (CSV records, st.data_editor rows) -> (requests, problems).

    Checks each row and the batch (conflicts, Eq. 5); exact duplicates are kept here
    (`validate_requests` drops them with a warning). Rows are numbered from 1, or by `numbers`
    (the row number the user sees for each row, when some rows were left out).
    """
    table = load_relations(relations)
    tmpl_ids = template_ids(table)
    problems, indexed = [], []
    for n, raw in zip(_numbers(numbers, len(rows)), rows):
        if not isinstance(raw, dict):
            problems.append(RowProblem(n, "row", "not an object with named fields"))
            continue
        row = _normalise_keys(raw)
        missing = _missing_columns(row)
        if missing:
            problems.append(RowProblem(n, "columns", "missing " + ", ".join(missing)))
            continue
        req, probs = _row_request(row, n, table, tmpl_ids)
        problems.extend(probs)
        if req is not None:
            indexed.append((n, req))
    problems.extend(_batch_problems(indexed)[0])
    return [r for _, r in indexed], problems


def _numbers(numbers: list[int] | None, n: int) -> list[int]:
    """The row numbers of n rows: 1..n, or the given ones (one per row)."""
    if numbers is None:
        return list(range(1, n + 1))
    if len(numbers) != n:
        raise ValueError(f"{len(numbers)} row numbers for {n} rows")
    return list(numbers)


def _batch_problems(indexed: list[tuple[int, EditRequest]]) -> tuple[list[RowProblem], list[tuple[int, EditRequest]], list[tuple[int, str]]]:
    """Conflicts (same s and r, different o: Eq. 5) and duplicates (same s, r, o).

    Returns (problems, the rows with duplicates dropped, warnings as (row, text)).
    """
    problems, kept, warnings = [], [], []
    first: dict[tuple[str, str], tuple[int, EditRequest]] = {}
    for n, req in indexed:
        key = (req.subject, req.relation_key)
        if key not in first:
            first[key] = (n, req)
            kept.append((n, req))
            continue
        m, other = first[key]
        if other.target_new != req.target_new:
            problems.append(RowProblem(n, "object", f"conflicts with row {m}: '{req.subject}' under "
                                       f"'{req.relation_key}' cannot become both '{other.target_new}' "
                                       f"and '{req.target_new}'"))
        else:
            warnings.append((n, f"row {n} repeats row {m} ({req.subject} -> {req.target_new}); dropped"))
    return problems, kept, warnings


# ---- checks that need the tokenizer -------------------------------------------------------------

def validate_requests(requests: list[EditRequest], tokenizer=None, max_length: int | None = None, *,
                      numbers: list[int] | None = None) -> ValidationReport:
    """Check a batch before anything runs: every problem with its row (1-based list position, or
    `numbers`, the row number the user sees for each request).

    Structure ({} exactly once, non-empty fields), conflicts (Eq. 5), exact duplicates (dropped,
    with a warning), a new object equal to the true one (kept, with a warning) and — with a
    tokenizer — targets that tokenise to nothing, subjects no token covers, prompts longer than
    `max_length` tokens.
    """
    problems, indexed = [], []
    for n, req in zip(_numbers(numbers, len(requests)), requests):
        probs = _structure_problems(req, n)
        if not probs and tokenizer is not None:
            probs = _token_problems(req, n, tokenizer, max_length)
        problems.extend(probs)
        if not probs:
            indexed.append((n, req))
    batch_probs, kept, warnings = _batch_problems(indexed)
    problems.extend(batch_probs)
    warnings += [(n, _same_object_warning(n, req)) for n, req in kept if same_object(req)]
    if not requests:
        problems.append(RowProblem(0, "requests", "no edit requests"))
    return ValidationReport(requests=[r for _, r in kept], problems=problems,
                            warnings=[text for _, text in sorted(warnings, key=lambda w: w[0])])


def same_object(req: EditRequest) -> bool:
    """The new object is the true one (compared as tokenised: without surrounding spaces)."""
    return bool(req.target_true) and req.target_new.strip() == req.target_true.strip()


def _same_object_warning(n: int, req: EditRequest) -> str:
    """Why a request whose new object is its true object is kept, and what it does."""
    o = req.target_new.strip()
    return (f"row {n}: the new object '{o}' is the true object already, so this edit changes no fact "
            f"(it only makes the model surer of '{o}'; ES, PS and NS, which compare the new "
            "object with the true one, are not computed for it); kept")


def _structure_problems(req: EditRequest, n: int) -> list[RowProblem]:
    probs = [RowProblem(n, name, why) for name, why in text_problems(asdict(req))]
    if probs:
        return probs
    for name in ("prompt", "subject", "target_new"):
        if not str(getattr(req, name) or "").strip():
            probs.append(RowProblem(n, name, "empty"))
    if req.prompt and req.prompt.count("{}") != 1:
        probs.append(RowProblem(n, "prompt", f"'{req.prompt}' must contain exactly one '{{}}' for the "
                                f"subject (found {req.prompt.count('{}')})"))
    for p in req.paraphrase_prompts:
        if req.subject and req.subject not in p:
            probs.append(RowProblem(n, "paraphrase_prompts",
                                    f"the subject '{req.subject}' is absent from the filled prompt '{p}'"))
    return probs


def target_token_ids(tokenizer, target: str) -> list[int]:
    """Token ids of " " + target (the object follows the prompt after a space)."""
    return tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]


def _token_problems(req: EditRequest, n: int, tokenizer, max_length: int | None) -> list[RowProblem]:
    from core.subject import locate_subject

    probs = []
    for name in ("target_new", "target_true"):
        value = getattr(req, name)
        if value and not target_token_ids(tokenizer, value):
            probs.append(RowProblem(n, name, f"'{value}' tokenises to nothing with this model's tokenizer"))
    start = req.prompt.find("{}")
    try:
        locate_subject(tokenizer, req.filled, req.subject, occurrence=req.prompt[:start].count(req.subject))
    except BadInputError as e:
        probs.append(RowProblem(n, "subject", str(e)))
    if max_length is not None:
        n_tok = len(tokenizer(req.filled)["input_ids"])
        if n_tok + 16 > max_length:
            probs.append(RowProblem(n, "prompt", f"{n_tok} tokens: too long for a model of {max_length} positions"))
    return probs


# ---- files (implemented in core.request_files) --------------------------------------------------

def read_requests(path_or_bytes, *, fmt: str | None = None, relations=None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> list[EditRequest]:
    """Read edit requests from a path or uploaded bytes (CSV, JSON, CounterFact, zsRE); strict.

    Raises RequestValidationError listing every problem with its row; see core.request_files.
    """
    from core.request_files import read_requests as _read

    return _read(path_or_bytes, fmt=fmt, relations=relations, max_bytes=max_bytes)


def load_dataset_requests(path, n: int | None = None, *, fmt: str | None = None):
    """The first n usable records of an evaluation set -> (requests, skipped problems); lenient."""
    from core.request_files import load_dataset_requests as _load

    return _load(path, n, fmt=fmt)
