"""`workbench info` and `workbench app`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from core.errors import BadInputError
from workbench.cli.common import add_json_arg, add_model_args, load_from_args, write_json


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model: family, layers, widths, parameters, device",
                       description="Load a model and describe it: family, layers, widths, "
                       "parameters, device, dtype and the module MEMIT edits.")
    add_model_args(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("app", help="start the Streamlit workbench (on 127.0.0.1 by default)",
                       description="Start the browser workbench. It listens on 127.0.0.1 only "
                       "unless --address says otherwise.")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the app to your network)")
    p.add_argument("--max-upload-mb", type=int, default=20,
                   help="size limit in MB of edit-request files (CSV/JSON) uploaded on the Edit page (default 20)")
    p.add_argument("--max-patch-mb", type=int, default=512,
                   help="size limit in MB of patches uploaded on the History page (default 512); the model's "
                   "own patch limit applies too (8 batches of every layer's ΔW)")
    p.set_defaults(handler=cmd_app)


def cmd_info(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    info = handle.info()
    write_json(info, args.json)
    if args.json != "-":
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def app_command(port: int, address: str, max_upload_mb: int, max_patch_mb: int) -> list[str]:
    """The streamlit command line: the server takes uploads up to the larger limit; the Edit page's
    uploader holds request files to `max_upload_mb` (passed as $WORKBENCH_MAX_UPLOAD_MB)."""
    app = Path(__file__).resolve().parent.parent / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app),
            "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--server.maxUploadSize", str(max(max_upload_mb, max_patch_mb)),
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]


def cmd_app(args: argparse.Namespace) -> int:
    from workbench.edit_flow import UPLOAD_ENV

    for name in ("max_upload_mb", "max_patch_mb"):
        if getattr(args, name) < 1:
            raise BadInputError(f"must be ≥ 1, got {getattr(args, name)}", field=name.replace("_", "-"))
    print(f"MEMIT Workbench on http://{args.address}:{args.port}  (Ctrl+C to stop)", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", **{UPLOAD_ENV: str(args.max_upload_mb)})
    cmd = app_command(args.port, args.address, args.max_upload_mb, args.max_patch_mb)
    if os.name == "posix":      # the server takes this process's place: a signal to it stops it
        os.execve(cmd[0], cmd, env)
    return subprocess.call(cmd, env=env)
