"""Shared CLI plumbing: model options, JSON output, progress bars, error → exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import sys
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


def _clean(obj):
    """JSON-safe: NaN/inf become null, tuples lists, numpy/torch scalars floats."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(result, target: str | None) -> None:
    """Write `result` as JSON to `target` (a path or '-'); nothing when target is None."""
    if target is None:
        return
    text = json.dumps(_clean(result), indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text + "\n")


def run_handler(args) -> int:
    """Run a command handler; user errors → one line on stderr and exit code 2."""
    try:
        rc = args.handler(args)
        return 0 if rc is None else int(rc)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
