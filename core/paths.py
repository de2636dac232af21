"""Where the workbench keeps what it writes: the workspace folder.

Default: the user's cache dir (`~/.cache/memit-workbench` on Linux); override with the
`WORKBENCH_HOME` environment variable or an explicit path (CLI `--workspace DIR`).
Layout: `stats/` covariance caches, `ledger.sqlite` + `batches/` the edit history.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import BadInputError


def workspace_path(override: str | os.PathLike | None = None) -> Path:
    """The workspace folder's path (not created): `override`, else $WORKBENCH_HOME, else the cache dir."""
    if override:
        return Path(override)
    if os.environ.get("WORKBENCH_HOME"):
        return Path(os.environ["WORKBENCH_HOME"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("memit-workbench"))


def workspace_dir(override: str | os.PathLike | None = None, *, create: bool = True) -> Path:
    """The workspace folder, created when missing (with create=False a missing one is an error)."""
    path = workspace_path(override)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{path} is a file, not a folder", field="workspace")
    if not path.exists():
        if not create:
            raise BadInputError(f"no such folder: {path}", field="workspace")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BadInputError(f"cannot create {path}: a part of the path is a file", field="workspace") from None
    return path


def stats_dir(override: str | os.PathLike | None = None) -> Path:
    path = workspace_dir(override) / "stats"
    path.mkdir(parents=True, exist_ok=True)
    return path
