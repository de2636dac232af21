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

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import BadInputError

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
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in the edit requests: {shown}{more}",
                         field=self.problems[0].field if self.problems else None)


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


# ---- relation table -----------------------------------------------------------------------------

def load_relations(source=None) -> dict[str, dict]:
    """Relation table keyed by lower-case name and id: {"sport": rec, "p641": rec, ...}.

    source: None (assets/world/relations.json, {} when missing), a path, a list of records, or a
    ready mapping.
    """
    if isinstance(source, dict):
        return {str(k).lower(): v for k, v in source.items()}
    if source is None or isinstance(source, (str, Path)):
        from core.model import assets_dir

        path = Path(source) if source is not None else assets_dir() / "world" / "relations.json"
        if not path.is_file():
            if source is not None:
                raise BadInputError(f"relation table {path} not found", field="relations")
            return {}
        source = json.loads(path.read_text(encoding="utf-8"))
    table = {}
    for rec in source:
        table[str(rec["name"]).lower()] = rec
        table[str(rec["relation_id"]).lower()] = rec
    return table


def _template_ids(table: dict[str, dict]) -> dict[str, str]:
    """Every template and paraphrase template of the table -> its relation id."""
    out = {}
    for rec in table.values():
        for t in list(rec.get("templates", [])) + list(rec.get("paraphrase_templates", [])):
            out.setdefault(t, rec["relation_id"])
    return out


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
    probs = []
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
        relation_id = relation_id or tmpl_ids.get(prompt)
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


def requests_from_rows(rows: list[dict], relations=None) -> tuple[list[EditRequest], list[RowProblem]]:
    """Table rows (CSV records, st.data_editor rows) -> (requests, problems).

    Checks each row and the batch (conflicts, Eq. 5); exact duplicates are kept here
    (`validate_requests` drops them with a warning). Rows are numbered from 1.
    """
    table = load_relations(relations)
    tmpl_ids = _template_ids(table)
    problems, indexed = [], []
    for n, raw in enumerate(rows, start=1):
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


def _batch_problems(indexed: list[tuple[int, EditRequest]]) -> tuple[list[RowProblem], list[tuple[int, EditRequest]], list[str]]:
    """Conflicts (same s and r, different o: Eq. 5) and duplicates (same s, r, o).

    Returns (problems, the rows with duplicates dropped, warnings).
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
            warnings.append(f"row {n} repeats row {m} ({req.subject} -> {req.target_new}); dropped")
    return problems, kept, warnings


# ---- published datasets -------------------------------------------------------------------------

def _counterfact_request(rec: dict, n: int) -> tuple[EditRequest | None, list[RowProblem]]:
    rw = rec.get("requested_rewrite")
    if not isinstance(rw, dict):
        return None, [RowProblem(n, "requested_rewrite", "missing")]
    strs = {}
    for k in ("target_new", "target_true"):
        v = rw.get(k)
        strs[k] = _text(v.get("str") if isinstance(v, dict) else v)
    neigh = rec.get("neighborhood_prompts") or []
    neigh_target = None
    if neigh and isinstance(neigh[0], dict):        # ROME's processed zsRE: {"prompt", "target"}
        neigh_target = "".join(x.get("target", "") for x in neigh).strip() or None
        neigh = [neigh[0].get("prompt", "")]
    row = {"subject": rw.get("subject"), "prompt": rw.get("prompt"), "target_new": strs["target_new"],
           "target_true": strs["target_true"] if strs["target_true"] != "<|endoftext|>" else None,
           "relation_id": rw.get("relation_id"), "paraphrase_prompts": rec.get("paraphrase_prompts"),
           "neighborhood_prompts": neigh, "generation_prompts": rec.get("generation_prompts"),
           "case_id": rec.get("case_id"), "neighborhood_target": neigh_target}
    return _row_request(row, n, {}, {})


def _zsre_request(rec: dict, n: int) -> tuple[EditRequest | None, list[RowProblem]]:
    """MEND's zsRE record -> request, as ROME/MEMIT evaluate it (target = answers[0])."""
    missing = [k for k in ("src", "subject", "answers") if k not in rec]
    if missing:
        return None, [RowProblem(n, "columns", "missing " + ", ".join(missing))]
    src, subject = _text(rec["src"]), _text(rec["subject"])
    if subject and subject not in src:
        return None, [RowProblem(n, "subject", f"the subject '{subject}' is absent from the question '{src}'")]
    answers = rec["answers"] if isinstance(rec["answers"], list) else [rec["answers"]]
    loc = _text(rec.get("loc"))
    row = {"subject": subject, "prompt": src.replace(subject, "{}", 1) if subject else src,
           "target_new": answers[0] if answers else "",
           "paraphrase_prompts": [rec["rephrase"]] if rec.get("rephrase") else [],
           "neighborhood_prompts": [loc + "?"] if loc else [],
           "neighborhood_target": rec.get("loc_ans"), "case_id": rec.get("case_id", n - 1)}
    return _row_request(row, n, {}, {})


def _detect_json_format(records: list) -> str:
    first = next((r for r in records if isinstance(r, dict)), {})
    if "requested_rewrite" in first:
        return "counterfact"
    if "src" in first and "answers" in first:
        return "zsre"
    return "json"


# ---- files --------------------------------------------------------------------------------------

def _read_bytes(path_or_bytes, max_bytes: int) -> tuple[bytes, str | None]:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, name = bytes(path_or_bytes), None
        if len(data) > max_bytes:
            raise RequestValidationError([RowProblem(0, "file", f"{len(data):,} bytes is over the "
                                                     f"limit of {max_bytes:,} bytes")])
        return data, name
    path = Path(path_or_bytes)
    if not path.is_file():
        raise BadInputError(f"{path} is not a file", field="file")
    size = path.stat().st_size
    if size > max_bytes:
        raise RequestValidationError([RowProblem(0, "file", f"{path.name} has {size:,} bytes, over the "
                                                 f"limit of {max_bytes:,} bytes")])
    return path.read_bytes(), path.name


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RequestValidationError([RowProblem(0, "file", f"not UTF-8 text (invalid byte at offset "
                                                 f"{e.start}); save the file as UTF-8")]) from None


def read_requests(path_or_bytes, *, fmt: str | None = None, relations=None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> list[EditRequest]:
    """Read edit requests from a file path or uploaded bytes; raise on any problem.

    fmt: "csv", "json", "counterfact", "zsre" or None (by extension, then by content).
    Exact duplicates are kept (see `validate_requests`); everything else wrong raises
    `RequestValidationError` with every problem and its row number.
    """
    if fmt is not None and fmt not in FORMATS:
        raise BadInputError(f"unknown format '{fmt}' ({', '.join(FORMATS)})", field="format")
    data, name = _read_bytes(path_or_bytes, max_bytes)
    text = _decode(data)
    if not text.strip():
        raise RequestValidationError([RowProblem(0, "file", "empty: no edit requests")])
    if fmt is None:
        suffix = Path(name).suffix.lower() if name else ""
        fmt = "csv" if suffix == ".csv" else "json" if suffix in (".json", ".jsonl") \
            else "json" if text.lstrip()[:1] in "[{" else "csv"
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = _missing_columns(_normalise_keys({k: None for k in (reader.fieldnames or [])}))
        if missing:
            raise RequestValidationError([RowProblem(0, "columns", "missing " + ", ".join(missing)
                                                     + f" (found: {', '.join(reader.fieldnames or [])})")])
        rows = [{k: v for k, v in r.items() if k is not None} for r in reader]
        reqs, problems = requests_from_rows(rows, relations)
    else:
        records = _parse_json(text)
        if fmt == "json":
            fmt = _detect_json_format(records)
        if fmt == "json":
            reqs, problems = requests_from_rows(records, relations)
        else:
            one = _counterfact_request if fmt == "counterfact" else _zsre_request
            indexed, problems = [], []
            for n, rec in enumerate(records, start=1):
                if not isinstance(rec, dict):
                    problems.append(RowProblem(n, "row", "not an object"))
                    continue
                req, probs = one(rec, n)
                problems.extend(probs)
                if req is not None:
                    indexed.append((n, req))
            problems.extend(_batch_problems(indexed)[0])
            reqs = [r for _, r in indexed]
    if problems:
        raise RequestValidationError(problems)
    if not reqs:
        raise RequestValidationError([RowProblem(0, "file", "no edit requests found")])
    return reqs


def _parse_json(text: str) -> list:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:  # JSON lines
            obj = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise RequestValidationError([RowProblem(0, "file", f"not valid JSON or JSON lines: {e}")]) from None
    if isinstance(obj, dict):
        obj = obj.get("requests", [obj])
    if not isinstance(obj, list):
        raise RequestValidationError([RowProblem(0, "file", "expected a JSON list of edit requests")])
    return obj


# ---- checks that need the tokenizer -------------------------------------------------------------

def validate_requests(requests: list[EditRequest], tokenizer=None, max_length: int | None = None) -> ValidationReport:
    """Check a batch before anything runs: every problem with its row (1-based list position).

    Structure ({} exactly once, non-empty fields), conflicts (Eq. 5), exact duplicates (dropped,
    with a warning) and — with a tokenizer — targets that tokenise to nothing, subjects no token
    covers, prompts longer than `max_length` tokens.
    """
    problems, indexed = [], []
    for n, req in enumerate(requests, start=1):
        probs = _structure_problems(req, n)
        if not probs and tokenizer is not None:
            probs = _token_problems(req, n, tokenizer, max_length)
        problems.extend(probs)
        if not probs:
            indexed.append((n, req))
    batch_probs, kept, warnings = _batch_problems(indexed)
    problems.extend(batch_probs)
    if not requests:
        problems.append(RowProblem(0, "requests", "no edit requests"))
    return ValidationReport(requests=[r for _, r in kept], problems=problems, warnings=warnings)


def _structure_problems(req: EditRequest, n: int) -> list[RowProblem]:
    probs = []
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
