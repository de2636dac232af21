"""`workbench bench trace|memit`: speed measured in one run, ratios side by side, JSON out.

Each benchmark lives in `workbench.benchmarks.<name>` and exposes `add_args(parser)` and
`run(args) -> dict`; this module only gives them a command line.
"""

from __future__ import annotations

import argparse
import importlib
import json

from workbench.cli.common import add_json_arg, add_model_args, write_json

BENCHMARKS = {
    "trace": "batched causal-tracing grid vs one forward per (token, layer) cell",
    "memit": "batched vs serial MEMIT targets z, update time, covariance throughput, memory",
    "app": "app responsiveness after the model is loaded: page switch and trace latency",
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (JSON out): trace, memit, app",
                       description="Benchmarks that time alternatives in one run and report ratios.")
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, text in BENCHMARKS.items():
        module = importlib.import_module(f"workbench.benchmarks.{name}")
        bp = bsub.add_parser(name, help=text, description=text)
        add_model_args(bp)
        add_json_arg(bp)
        module.add_args(bp)
        bp.set_defaults(handler=_runner(module))
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _runner(module):
    def handler(args: argparse.Namespace) -> int:
        result = module.run(args)
        write_json(result, args.json)
        if args.json != "-":
            print(json.dumps(result, indent=2, default=str))
        return 0

    return handler
