"""Figure → PNG bytes, offline.

plotly renders static images through kaleido, which drives a local Chrome/Chromium (found on
PATH, e.g. Debian's `chromium`, or named by the BROWSER_PATH environment variable). Nothing is
downloaded: without a browser the error says how to install one.
"""

from __future__ import annotations

import logging
import os
import shutil

from core.errors import WorkbenchError

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido will use: $BROWSER_PATH, else the first one on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and os.path.exists(env):
        return env
    for name in _BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def figure_to_png(fig, *, width: int | None = None, height: int | None = None, scale: float = 2.0) -> bytes:
    """Render a plotly figure to PNG bytes (sizes default to the figure's layout or 1000×600)."""
    browser = find_browser()
    if browser is None:
        raise WorkbenchError("PNG export needs Chrome or Chromium (e.g. `apt-get install chromium`, "
                             "or set BROWSER_PATH to a Chrome binary); kaleido renders through it")
    import kaleido

    # choreographer logs (and ignores) stray non-JSON output of the browser on its pipe with a
    # full traceback; the render is unaffected, so keep that out of the user's terminal.
    logging.getLogger("choreographer.channels").setLevel(logging.CRITICAL)
    opts = {"format": "png", "width": int(width or fig.layout.width or 1000),
            "height": int(height or fig.layout.height or 600), "scale": float(scale)}
    try:
        # mathjax=False: no CDN fetch (offline); plotly.js comes from the installed plotly.
        return kaleido.calc_fig_sync(fig, opts=opts, kopts={"path": browser, "mathjax": False})
    except Exception as e:  # kaleido/choreographer raise assorted errors when the browser fails
        raise WorkbenchError(f"PNG export failed ({type(e).__name__}: {e}); browser: {browser}") from None


def write_png(fig, path, **kwargs) -> None:
    """Write a figure as PNG to `path` (parent folders are created)."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(figure_to_png(fig, **kwargs))
