"""Where the workbench keeps what it writes: the workspace folder.

Default: the user's cache dir (`~/.cache/memit-workbench` on Linux); override with the
`WORKBENCH_HOME` environment variable or an explicit path (CLI `--workspace DIR`).
Layout: `stats/` covariance caches, `ledger.sqlite` + `batches/` the edit history.
"""

from __future__ import annotations

import os
from pathlib import Path


def workspace_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        path = Path(override)
    elif os.environ.get("WORKBENCH_HOME"):
        path = Path(os.environ["WORKBENCH_HOME"])
    else:
        from platformdirs import user_cache_dir

        path = Path(user_cache_dir("memit-workbench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def stats_dir(override: str | os.PathLike | None = None) -> Path:
    path = workspace_dir(override) / "stats"
    path.mkdir(parents=True, exist_ok=True)
    return path
