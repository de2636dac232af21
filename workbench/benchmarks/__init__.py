"""Benchmarks behind `workbench bench NAME`: each module exposes `add_args(parser)` and `run(args) -> dict`."""
