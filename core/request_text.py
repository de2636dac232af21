"""Type and character checks for the text fields of an edit request row.

JSON lets a field hold a list, an object or a number where text belongs (`"target_new": ["Paris"]`),
and any file can carry control characters (NUL, line breaks inside a quoted CSV field). Turning
those into text would edit the model with the literal `"['Paris']"` or `"Paris\\x00"`; instead every
such value is reported with its field, and `core.requests` adds the row number.
"""

from __future__ import annotations

import unicodedata

# Text fields of a row (keys as `EditRequest` names them) -> the name a problem reports.
TEXT_FIELDS = {"subject": "subject", "prompt": "prompt", "relation": "relation", "target_new": "object",
               "target_true": "true_object", "relation_id": "relation_id",
               "neighborhood_target": "neighborhood_target"}
LIST_FIELDS = ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts")


def bad_text(value) -> str | None:
    """Why `value` cannot be a text field, or None when it can."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"expected text, got the number {value!r} (write it in quotes)"
    if not isinstance(value, str):
        kind = "a list" if isinstance(value, (list, tuple)) else "an object" if isinstance(value, dict) else repr(value)
        return f"expected text, got {kind}"
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    return None if bad is None else f"contains the control character U+{ord(bad):04X}; remove it"


def text_problems(row: dict) -> list[tuple[str, str]]:
    """(field, message) for every text field of `row` of the wrong type or with control characters;
    list fields may be one text or a list of texts (the first bad item is reported)."""
    out = [(name, why) for key, name in TEXT_FIELDS.items()
           if row.get(key) is not None and (why := bad_text(row[key]))]
    for key in LIST_FIELDS:
        value = row.get(key)
        items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        why = next((f"item {i}: {w}" for i, x in enumerate(items, start=1) if (w := bad_text(x))), None)
        if why:
            out.append((key, why))
    return out
