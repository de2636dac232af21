"""`workbench bench app`: how responsive the Streamlit workbench is once the model is loaded.

Runs the real app script in-process (`streamlit.testing.v1.AppTest`, the same scripts a browser
session runs, without the websocket round trip): loads the model once, then times
- page switch: rendering each page of the navigation (Model, Causal trace, Edit facts, Results,
  History, Evaluate, Learn), the median over `--repeats` visits;
- trace: the Trace button on a demo-world example (three restoration grids + severed paths).
The issue's target is under 2 s for both on the demo model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

PAGES = ("model", "trace", "edit", "results", "history", "evaluate", "learn")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=5, help="visits per page (default 5; median reported)")


def run(args: argparse.Namespace) -> dict:
    """Time the app in a throw-away workspace (the user's edit history is neither read nor touched)."""
    from workbench.state import DEFAULT_MODEL_ENV

    saved = {k: os.environ.get(k) for k in (DEFAULT_MODEL_ENV, "WORKBENCH_HOME")}
    os.environ[DEFAULT_MODEL_ENV] = args.model
    os.environ["WORKBENCH_HOME"] = tempfile.mkdtemp(prefix="workbench-bench-app-")
    try:
        return _measure(args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _measure(args: argparse.Namespace) -> dict:
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parent.parent / "app.py"
    at = AppTest.from_file(str(app), default_timeout=600)
    t0 = time.perf_counter()
    at.run()
    load_s = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(f"the app failed: {at.exception[0].message}")
    switch: dict[str, list[float]] = {p: [] for p in PAGES}
    for _ in range(max(1, args.repeats)):
        for page in PAGES:
            at.switch_page(f"../pages/{page}.py")
            t = time.perf_counter()
            at.run()
            switch[page].append(time.perf_counter() - t)
    at.switch_page("../pages/trace.py").run()
    at.button[0].click().run()                               # first demo-world example
    traces = []
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        at.button(key="run_trace").click().run()
        traces.append(time.perf_counter() - t)
    if at.exception or at.error:
        raise RuntimeError("the trace failed in the app")
    medians = {p: statistics.median(v) for p, v in switch.items()}
    return {
        "model": args.model, "first_load_s": load_s,
        "page_switch_s": medians, "page_switch_max_s": max(medians.values()),
        "trace_s": statistics.median(traces), "prompt": at.text_input(key="trace_prompt").value,
        "repeats": args.repeats,
    }
