"""Shared CLI plumbing: model options, JSON output, progress bars, error → exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from core.errors import BadInputError, WorkbenchError


class TqdmProgress:
    """A core progress callback, progress(done, total, phase), drawn as one tqdm bar per phase:
    a bar closes when its phase completes or the next phase starts."""

    def __init__(self, default_desc: str = "working", file=None):
        self.bar, self.phase = None, None
        self.default_desc, self.file = default_desc, file

    def __call__(self, done: int, total: int, phase: str) -> None:
        from tqdm import tqdm

        if phase != self.phase or self.bar is None:
            self.close()
            self.bar = tqdm(total=total, desc=phase or self.default_desc, leave=False, file=self.file)
            self.phase = phase
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def parse_sizes(text: str) -> list[int]:
    """'1,16,64' -> [1, 16, 64] (sorted, unique, each ≥ 1) for the --sizes options."""
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise BadInputError(f"'{text}' is not a list of sizes like 1,16,64", field="sizes") from None
    if not sizes or sizes[0] < 1:
        raise BadInputError("sizes must be positive", field="sizes")
    return sizes


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="demo",
                   help="hub id, local folder, or 'demo' for the embedded demo model (default)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    g.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp32 on CPU, bf16 on GPU)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow models that run their own code (off by default; only for models you trust)")
    g.add_argument("--no-key-room", action="store_true",
                   help="ignore the model folder's key_room.json (the demo model's 6,144 extra key "
                   "dimensions at layer 0): load the weights exactly as trained")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="F", default=None, help="write the result as JSON to F ('-' for stdout)")


def load_from_args(args):
    from core.model import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code,
                      key_room=not args.no_key_room)


def write_json(result, target: str | None, stream=None) -> None:
    """Write `result` as JSON to `target` (a path or '-' for `stream`, default stdout); nothing
    when target is None. Strict JSON: NaN and infinities are written as null."""
    if target is None:
        return
    from core.ledger_io import json_safe

    text = json.dumps(json_safe(result), indent=2, allow_nan=False)
    if target == "-":
        (stream or sys.stdout).write(text + "\n")
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text + "\n")


@contextlib.contextmanager
def human_to_stderr(args):
    """With --json -, stdout carries only the JSON: inside this block print() goes to stderr.
    Yields the real stdout, for `write_json(..., stream=...)`."""
    stdout = sys.stdout
    if getattr(args, "json", None) == "-":
        with contextlib.redirect_stdout(sys.stderr):
            yield stdout
    else:
        yield stdout


# ---- output paths: checked before any work ------------------------------------------------------

def _writable_folder(folder: Path, option: str, path) -> None:
    """`folder` (to be created if missing) can hold new files; else BadInputError naming `option`."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"cannot write {path}: {existing} is a file, not a folder", field=option)
    try:        # a real probe: permissions alone do not tell (root, read-only mounts, /proc)
        fd, probe = tempfile.mkstemp(prefix=".workbench-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadInputError(f"cannot write {path}: {e.strerror or e}", field=option) from None


def check_output_file(path: str | None, option: str, suffix: str | None = None) -> None:
    """Fail at once (BadInputError naming `option`, e.g. '--json') when file `path` cannot be
    written: a folder of that name, a parent that is a file, no permission. None and '-' pass."""
    if path is None or path == "-":
        return
    p = Path(path)
    if suffix is not None and p.suffix.lower() != suffix:
        raise BadInputError(f"{path}: the file name must end in {suffix}", field=option)
    if p.is_dir():
        raise BadInputError(f"{path} is a folder; give a file name", field=option)
    if p.exists() and not os.access(p, os.W_OK):
        raise BadInputError(f"cannot write {path}: permission denied", field=option)
    _writable_folder(p.parent, option, path)


def check_output_folder(path: str | None, option: str) -> None:
    """Fail at once when folder `path` cannot be created or written (e.g. it is a file)."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInputError(f"{path} is a file, not a folder", field=option)
    _writable_folder(p, option, path)


def check_outputs(args) -> None:
    """--json F and --png F of any command, before the command does any work."""
    check_output_file(getattr(args, "json", None), "--json")
    check_output_file(getattr(args, "png", None), "--png", suffix=".png")


def run_handler(args) -> int:
    """Run a command handler; user errors → one line on stderr and exit code 2."""
    try:
        check_outputs(args)
        rc = args.handler(args)
        return 0 if rc is None else int(rc)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
