"""A session's state on disk: `<folder>/state.json` + `tensors.safetensors` (+ `summary.json`).

The state is encoded by `workbench.state_codec` (project dataclasses, containers, numbers,
numpy arrays, DataFrames; tensors go to the safetensors file by key); a value it cannot write
drops its field (logged), a field it cannot read takes its default (reported).

Writes are atomic (`core.ledger_io.write_atomic`) and happen only when something changed. `save`
runs after every script run, so it first compares the state's `fingerprint` with the one of the
last write (its `Mark`): a walk over the state, no encoding. Only when that differs is the state
encoded — the JSON text of unchanged DataFrames, arrays and requests reused from the last write —
and written if its JSON differs; the tensor file is rewritten only when the set of tensors
changed (identity and in-place version of each). A folder removed while its session is open (by
hand, another server) is written again in full. `summary.json` (what the Sessions menu shows,
and the page the tab shows) is rewritten on its own when only it changed.

Retention: `delete` removes one saved session, `prune` the ones beyond a number kept or older
than an age (never protected ones, never one changed within a grace period); both move the
folder aside first, so a crash midway never leaves half a session. No streamlit, no pickle.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core.ledger_io import write_atomic
from workbench.state_codec import READ_ERRORS, Reuse, SessionError, decode, to_json
from workbench.state_fingerprint import fingerprint

LOG = logging.getLogger("workbench.session_store")
FORMAT = 1
STATE_FILE, TENSOR_FILE, SUMMARY_FILE = "state.json", "tensors.safetensors", "summary.json"
ID_LENGTH = 12
_ID = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}\Z")


def new_id() -> str:
    return uuid.uuid4().hex[:ID_LENGTH]


def valid_id(value: Any) -> bool:
    """Hex of the fixed length — checked before any id is used as a folder name."""
    return isinstance(value, str) and bool(_ID.fullmatch(value))


@dataclass(frozen=True, eq=False)
class Mark:
    """What the folder holds now — the state's JSON, which tensors its tensor file has — and what
    makes the next comparison cheap (the state's fingerprint, the JSON texts to reuse)."""

    skeleton: str
    tensor_sig: tuple
    token: str | None                     # id of the tensor file written (None: no tensor file)
    fingerprint: Any = None               # state_codec.fingerprint of the state written
    reuse: Reuse = field(default_factory=Reuse)
    summary: dict | None = None           # summary.json as written (without saved_at)
    written: bool = False                 # the folder holds this state (False: a new, unsaved one)


# ---- files ----------------------------------------------------------------------------------

def _tensor_sig(tensors: list[torch.Tensor]) -> tuple:
    """Which tensors, by identity and in-place version: cheap, and changes when one is modified."""
    return tuple((id(t), t._version, tuple(t.shape), str(t.dtype), str(t.device)) for t in tensors)


def mark(obj: Any, token: str | None = None, summary: dict | None = None, written: bool = False) -> Mark:
    """The Mark of `obj` as if it had just been saved: a fresh state (nothing is written until it
    changes), or a just-loaded one (`written`, with the token and summary read)."""
    fp, immutable = fingerprint(obj)
    reuse = Reuse(immutable)
    skeleton, tensors, _ = to_json(obj, reuse)
    return Mark(skeleton, _tensor_sig(tensors), token, fp, reuse, summary, written)


def _write_summary(folder: Path, summary: dict, saved_at: float) -> None:
    write_atomic(folder / SUMMARY_FILE, json.dumps({**summary, "saved_at": saved_at}).encode("utf-8"))


def _with_summary(last: Mark, folder: Path, summary: dict | None) -> Mark:
    """`last`, its summary rewritten when only that changed (the page a tab shows) — for a state
    already in its folder: a new session is not written for that alone."""
    if summary is None or summary == last.summary or not last.written:
        return last
    _write_summary(folder, summary, time.time())
    return replace(last, summary=summary)


def save(obj: Any, folder: Path, last: Mark | None = None, summary: dict | None = None) -> Mark:
    """Write `obj` to `folder` unless it equals `last` (what the folder holds); returns the new Mark."""
    from safetensors.torch import save as safetensors_bytes

    if last is not None and last.written and not (folder / STATE_FILE).is_file():
        LOG.warning("session folder %s is gone: writing it again", folder)
        last = Mark("", (), None, reuse=last.reuse)        # removed elsewhere: write all, tensors too
    fp, immutable = fingerprint(obj, last.reuse.immutable if last is not None else None)
    if last is not None and last.fingerprint == fp:
        return _with_summary(last, folder, summary)        # unchanged: nothing encoded
    reuse = last.reuse if last is not None else Reuse()
    reuse.immutable = immutable
    skeleton, tensors, skipped = to_json(obj, reuse)
    sig = _tensor_sig(tensors)
    if last is not None and last.skeleton == skeleton and last.tensor_sig == sig:
        return _with_summary(replace(last, fingerprint=fp), folder, summary)   # new objects, same content
    for what in skipped:
        LOG.warning("session not saved in full: %s cannot be written", what)
    folder.mkdir(parents=True, exist_ok=True)
    token = last.token if last is not None and last.tensor_sig == sig else None
    if tensors and token is None:
        token = uuid.uuid4().hex
        named = {f"t{i}": t.detach().to("cpu").contiguous().clone() for i, t in enumerate(tensors)}
        write_atomic(folder / TENSOR_FILE, safetensors_bytes(named, metadata={"token": token}))
    saved_at = time.time()
    text = f'{{"format":{FORMAT},"saved_at":{saved_at},"tensors":{json.dumps(token)},"state":{skeleton}}}'
    write_atomic(folder / STATE_FILE, text.encode("utf-8"))
    if not tensors:
        (folder / TENSOR_FILE).unlink(missing_ok=True)
    if summary is not None:
        _write_summary(folder, summary, saved_at)
    return Mark(skeleton, sig, token, fp, reuse, summary, written=True)


@dataclass
class Loaded:
    obj: Any
    problems: list[str]                  # fields that came back as their default, with why
    mark: Mark


def _read_tensors(folder: Path, token: str | None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if token is None:
        return {}
    with safe_open(str(folder / TENSOR_FILE), framework="pt") as f:
        if (f.metadata() or {}).get("token") != token:
            raise SessionError(f"{TENSOR_FILE} is from another save than {STATE_FILE}")
        return {k: f.get_tensor(k) for k in f.keys()}


def load(folder: Path, expected: type) -> Loaded:
    """The object saved in `folder`; raises SessionError when it cannot be read at all."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SessionError(f"{STATE_FILE} is not a session file of format {FORMAT}")
        problems = []
        try:
            tensors = _read_tensors(folder, data.get("tensors"))
        except Exception as err:  # noqa: BLE001 (OSError, SessionError, safetensors' own errors)
            tensors, problems = {}, [f"tensors ({err})"]
        obj, more = decode(data["state"], tensors)
    except SessionError:
        raise
    except (OSError, RecursionError, *READ_ERRORS) as err:
        raise SessionError(f"{type(err).__name__}: {err}") from err
    if not isinstance(obj, expected):
        raise SessionError(f"{STATE_FILE} holds a {type(obj).__name__}, not a {expected.__name__}")
    return Loaded(obj, problems + more, mark(obj, data.get("tensors"), read_summary(folder), written=True))


def read_field(folder: Path, name: str, default: Any = None) -> Any:
    """One top-level field of the saved object (no tensors), or `default` when unreadable."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return decode(data["state"]["fields"][name])[0]
    except (OSError, RecursionError, *READ_ERRORS):
        return default


def read_summary(folder: Path) -> dict:
    """A saved session's summary.json without its time ({} when missing or unreadable)."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict):
        return {}
    summary.pop("saved_at", None)
    return summary


def _scan(root: Path, unreadable: bool = False) -> list[tuple[str, float]]:
    """(id, when its state was last written), most recent first; with `unreadable`, folders
    without a state file too (by the folder's own time)."""
    found = []
    try:
        entries = [e for e in os.scandir(root) if valid_id(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    for entry in entries:
        try:
            found.append((entry.name, os.stat(Path(entry.path) / STATE_FILE).st_mtime))
        except OSError:
            if unreadable:
                with contextlib.suppress(OSError):
                    found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
    found.sort(key=lambda e: e[1], reverse=True)
    return found


def list_sessions(root: Path, limit: int | None = None) -> list[tuple[str, float, dict]]:
    """Saved sessions under `root`, most recent first: (id, mtime of its state, its summary)."""
    return [(sid, when, read_summary(root / sid)) for sid, when in _scan(root)[:limit]]


_ASIDE = ".deleting-"                    # a folder being deleted (left over only by a crash)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def delete(root: Path, session_id: str) -> bool:
    """Delete the saved session `session_id` under `root`; False when there was none. The folder
    is renamed first (atomic), so a crash midway leaves no half session that would still open."""
    if not valid_id(session_id):
        return False
    aside = root / f"{_ASIDE}{session_id}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(root / session_id, aside)
    except FileNotFoundError:
        return False
    _remove(aside)
    return True


def prune(root: Path, keep: int | None, max_age_s: float | None, protect=(), grace_s: float = 86400.0,
          now: float | None = None) -> list[str]:
    """Delete the saved sessions beyond the `keep` most recently changed and those unchanged for
    more than `max_age_s` (None: no such limit) — never one in `protect`, never one changed in the
    last `grace_s` seconds. Leftovers of interrupted deletions go too. Returns the ids deleted."""
    now = time.time() if now is None else now
    gone = []
    for rank, (sid, when) in enumerate(_scan(root, unreadable=True)):
        old = (keep is not None and rank >= keep) or (max_age_s is not None and now - when > max_age_s)
        if old and sid not in protect and now - when > grace_s and delete(root, sid):
            gone.append(sid)
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.name.startswith(_ASIDE):
                _remove(Path(entry.path))
    return gone
