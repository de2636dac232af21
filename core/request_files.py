"""Reading edit requests from files: CSV, JSON lists, CounterFact and zsRE records as published.

`read_requests` is strict (any problem raises `RequestValidationError` with every bad row);
`load_dataset_requests` is lenient, for evaluation sets (bad and conflicting records are skipped
and reported). Both are re-exported by `core.requests`; see its docstring for the columns.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from core.errors import BadInputError
from core.relation_table import load_relations, template_ids
from core.request_text import TEXT_FIELDS
from core.requests import (_ALIASES, DEFAULT_MAX_BYTES, FORMATS, EditRequest, RequestValidationError,
                           RowProblem, _batch_problems, _missing_columns, _normalise_keys, _row_request,
                           _text, requests_from_rows)

# ---- published datasets -------------------------------------------------------------------------

def _counterfact_request(rec: dict, n: int) -> tuple[EditRequest | None, list[RowProblem]]:
    rw = rec.get("requested_rewrite")
    if not isinstance(rw, dict):
        return None, [RowProblem(n, "requested_rewrite", "missing")]
    strs = {}
    for k in ("target_new", "target_true"):     # raw values: `_row_request` checks their type
        v = rw.get(k)
        strs[k] = v.get("str") if isinstance(v, dict) else v
    neigh = rec.get("neighborhood_prompts") or []
    neigh_target = None
    if neigh and isinstance(neigh[0], dict):        # ROME's processed zsRE: {"prompt", "target"}
        neigh_target = "".join(x.get("target", "") for x in neigh).strip() or None
        neigh = [neigh[0].get("prompt", "")]
    row = {"subject": rw.get("subject"), "prompt": rw.get("prompt"), "target_new": strs["target_new"],
           "target_true": strs["target_true"] if _text(strs["target_true"]) != "<|endoftext|>" else None,
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
        reqs, problems = _csv_requests(text, relations)
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


# ---- CSV ----------------------------------------------------------------------------------------

def _csv_requests(text: str, relations) -> tuple[list[EditRequest], list[RowProblem]]:
    """A CSV text -> (requests, problems): every row checked, numbered from 1 after the header."""
    fieldnames, records, problems = _csv_records(text)
    missing = _missing_columns(_normalise_keys({k: None for k in fieldnames}))
    if missing:
        raise RequestValidationError([RowProblem(0, "columns", "missing " + ", ".join(missing)
                                                 + f" (found: {', '.join(fieldnames)})")])
    rows, numbers = [], []
    for n, fields in records:
        extra = fields[len(fieldnames):]
        if any(x.strip() for x in extra):
            problems.append(RowProblem(n, "row", f"{len(extra)} field(s) more than the header's "
                                       f"{len(fieldnames)} columns ({', '.join(map(repr, extra))}); "
                                       "put quotes around a value that contains a comma"))
        rows.append(dict(zip(fieldnames, fields + [None] * (len(fieldnames) - len(fields)))))
        numbers.append(n)
    reqs, row_problems = requests_from_rows(rows, relations, numbers=numbers)
    return reqs, problems + row_problems


def _csv_records(text: str) -> tuple[list[str], list[tuple[int, list[str]]], list[RowProblem]]:
    """Split a CSV text as csv.DictReader does -> (header, [(row number, fields)], problems).

    A double quote that opens a value and is not closed on its line — it runs to the end of the
    file, or swallows lines that look like rows — is reported with its row and the line it opens
    on; that row is left out and reading goes on at the next line, so the rows after it are
    checked as the user wrote them.
    """
    lines = io.StringIO(text).readlines()
    fieldnames: list[str] | None = None
    records, problems = [], []
    n, start = 0, 0                     # rows read so far; index of the first line still to read
    while start < len(lines):
        reader = csv.reader(lines[start:])
        restart, done = None, 0         # done: lines this reader consumed before the current record
        for fields in reader:
            first, last = start + done + 1, start + reader.line_num     # 1-based lines of the record
            done = reader.line_num
            if not fields:              # a blank line
                continue
            unclosed = _unclosed_quote(fields, lines, first, last, len(fieldnames or fields))
            if fieldnames is None:
                if unclosed is not None:
                    raise RequestValidationError([RowProblem(0, "header", unclosed[2])])
                fieldnames = fields
                continue
            n += 1
            if unclosed is None:
                records.append((n, fields))
                continue
            i, restart, message = unclosed
            problems.append(RowProblem(n, _reported_name(fieldnames[i]) if i < len(fieldnames) else "row",
                                       message))
            break                       # go on at the line after the one the quote opens on
        if restart is None:
            break
        start = restart
    return fieldnames or [], records, problems


def _unclosed_quote(fields: list[str], lines: list[str], first: int, last: int,
                    n_columns: int) -> tuple[int, int, str] | None:
    """(field index, line the quote opens on, message) for a record (lines first..last) whose
    quoted value runs to the end of the file or over lines that look like rows; else None."""
    at_eof = False
    if last == len(lines):              # the file's last record: did it end inside a quote?
        try:
            for _ in csv.reader(lines[first - 1:], strict=True):
                pass
        except csv.Error as e:
            at_eof = "unexpected end of data" in str(e)
    if at_eof:
        i = len(fields) - 1
    else:
        need = min(n_columns, 3)        # a row has at least subject, relation, object
        i = next((i for i, value in enumerate(fields)
                  if any(len(next(csv.reader([part]), [])) >= need for part in value.split("\n")[1:])),
                 None)
        if i is None:
            return None
    line = first + sum(value.count("\n") for value in fields[:i])
    head = fields[i].split("\n")[0].rstrip("\r")
    shown = '"' + (head if len(head) <= 30 else head[:29] + "…")
    where = f"the double quote that opens this value on line {line} ({shown})"
    advice = "close the quote or remove it"
    if last == line:
        return i, line, f"{where} is never closed; {advice}"
    span = f"line {last}" if last == line + 1 else f"lines {line + 1}–{last}"
    return i, line, (f"{where} is {'never closed' if at_eof else 'not closed on that line'}, so {span} "
                     f"{'was' if last == line + 1 else 'were'} read into it; {advice}")


def _reported_name(column: str) -> str:
    """The name problems give a CSV column ("target_new" and "object" both report "object")."""
    key = _ALIASES.get(column.strip().lower(), column.strip().lower())
    return TEXT_FIELDS.get(key, key)


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


def load_dataset_requests(path, n: int | None = None, *, fmt: str | None = None,
                          max_bytes: int = 2 * 2**30) -> tuple[list[EditRequest], list[RowProblem]]:
    """An evaluation set (CounterFact / zsRE / JSON file): the first `n` usable records.

    Unlike `read_requests` this is lenient, as the paper's evaluation is: records with a problem
    and records conflicting with an earlier one (Eq. 5) are skipped and returned as problems.
    """
    data, _ = _read_bytes(path, max_bytes)
    records = _parse_json(_decode(data))
    fmt = fmt or _detect_json_format(records)
    one = {"counterfact": _counterfact_request, "zsre": _zsre_request}.get(fmt)
    table = load_relations(None) if one is None else {}
    tmpl_ids = template_ids(table)
    kept, skipped, seen = [], [], {}
    for row, rec in enumerate(records, start=1):
        if n is not None and len(kept) >= n:
            break
        if not isinstance(rec, dict):
            skipped.append(RowProblem(row, "row", "not an object"))
            continue
        req, probs = one(rec, row) if one else _row_request(_normalise_keys(rec), row, table, tmpl_ids)
        if probs:
            skipped.extend(probs)
            continue
        key = (req.subject, req.relation_key)
        if key in seen:
            skipped.append(RowProblem(row, "object", f"same subject and relation as row {seen[key]}; skipped"))
            continue
        seen[key] = row
        kept.append(req)
    if not kept:
        raise RequestValidationError(skipped or [RowProblem(0, "file", "no usable records")])
    return kept, skipped
