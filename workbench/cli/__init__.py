"""The `workbench` command line.

Conventions for every command:
- `--json F` writes the command's result as JSON to file F (`-` for stdout: then stdout holds only
  the JSON, messages go to stderr); strict JSON, NaN written as null;
- output paths (--json, --png, --out, --save) are checked before any work starts;
- exit code 0 on success, 2 on bad input with a one-line message on stderr;
- `--model M` (hub id, local folder, or `demo`, the default) on every command that needs a model.

Each command group lives in its own module with a `register(subparsers)` function; this module
only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from workbench.cli.common import run_handler

# Modules under workbench.cli that contribute commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "workbench.cli.basic",
    "workbench.cli.demo",
    "workbench.cli.edit",
    "workbench.cli.trace",
    "workbench.cli.session",
    "workbench.cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="MEMIT Workbench: see where a language model stores a fact (causal tracing) "
        "and rewrite thousands of facts at once (MEMIT). Runs offline on the embedded demo model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_handler(args)


if __name__ == "__main__":
    sys.exit(main())
