"""The relation table of edit requests: relation names and ids of the demo world (or another
world's relations.json) -> their records, so a CSV row may name a relation ("sport", "P641")
instead of writing its template, and a template can be traced back to its relation id."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import BadInputError


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


def template_ids(table: dict[str, dict]) -> dict[str, str]:
    """Every template and paraphrase template of the table -> its relation id."""
    out = {}
    for rec in table.values():
        for t in list(rec.get("templates", [])) + list(rec.get("paraphrase_templates", [])):
            out.setdefault(t, rec["relation_id"])
    return out
