"""Subject locator: which tokens of a prompt spell the subject.

Causal tracing corrupts the subject tokens and MEMIT reads keys at the *last* subject token, so
getting this span right matters. It is computed from character offsets (fast tokenizers), which
handles BPE word-initial spaces (" Paris" is one token covering the space), SentencePiece "▁"
prefixes, BOS tokens (zero-width offsets) and any position of the subject in the prompt. In a
left-padded batch each row's span is shifted by that row's pad length.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import BadInputError


@dataclass(frozen=True)
class SubjectSpan:
    """Token indices [start, end) of the subject; `last` is the fact token MEMIT edits at."""

    start: int
    end: int

    @property
    def last(self) -> int:
        return self.end - 1

    @property
    def indices(self) -> list[int]:
        return list(range(self.start, self.end))

    def shift(self, n: int) -> "SubjectSpan":
        return SubjectSpan(self.start + n, self.end + n)


def find_subject_chars(prompt: str, subject: str, occurrence: int = 0) -> tuple[int, int]:
    """Character span of the `occurrence`-th appearance of `subject` in `prompt`."""
    if not subject or not subject.strip():
        raise BadInputError("the subject is empty", field="subject")
    start = -1
    for _ in range(occurrence + 1):
        start = prompt.find(subject, start + 1)
        if start < 0:
            hint = ""
            at = prompt.lower().find(subject.lower())
            if at >= 0 and occurrence == 0:         # matching is exact: say what would match
                hint = f" (with other capitalisation it does: '{prompt[at:at + len(subject)]}')"
            raise BadInputError(f"'{subject}' does not occur in the prompt '{prompt}'{hint}",
                                field="subject")
    return start, start + len(subject)


def locate_subject(tokenizer, prompt: str, subject: str, occurrence: int = 0) -> SubjectSpan:
    """Token span of `subject` in `prompt` as the tokenizer encodes it (special tokens included)."""
    if not prompt:
        raise BadInputError("the prompt is empty", field="prompt")
    c0, c1 = find_subject_chars(prompt, subject, occurrence)
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    offsets = enc["offset_mapping"]
    # A token belongs to the subject when its characters overlap [c0, c1); zero-width tokens
    # (BOS/EOS) and a bare preceding space never do.
    toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < c1 and b > c0]
    if not toks:
        raise BadInputError(f"no token of the prompt covers '{subject}'", field="subject")
    return SubjectSpan(toks[0], toks[-1] + 1)


def locate_subjects(tokenizer, prompts: list[str], subjects: list[str]) -> tuple[dict, list[SubjectSpan]]:
    """Tokenise a batch (padded on the tokenizer's side) and give each row's span in batch coordinates.

    Returns (encoding with 'input_ids' and 'attention_mask' as tensors, spans).
    """
    if len(prompts) != len(subjects):
        raise BadInputError("prompts and subjects differ in number", field="subjects")
    spans = [locate_subject(tokenizer, p, s) for p, s in zip(prompts, subjects)]
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    width = enc["input_ids"].shape[1]
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    if tokenizer.padding_side == "left":
        spans = [sp.shift(width - int(n)) for sp, n in zip(spans, lengths)]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, spans
