"""Pictures of plotly figures (PNG or SVG) through kaleido and a Chrome-family browser installed on the machine.

    from canary_lib.image_export import write_images
    written = write_images([(fig, "results/organism/figures/figure2.png")])   # [] where no exporter works

Kaleido >= 1 renders with a Chrome-family browser: choreographer finds `chromium`, `google-chrome`, ... on PATH,
or the one named by the BROWSER_PATH environment variable (Debian/Ubuntu: `apt-get install chromium`). All
figures of one call are rendered by one browser process (starting it is most of the cost). MathJax is off, so
nothing is fetched from the network. A picture is a convenience next to the HTML: any exporter failure (no
kaleido, no browser, a browser that does not start) prints one line and writes nothing, never failing a run.
This module imports no torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

EXPORT_TIMEOUT_S = 120
"""Seconds kaleido waits for one figure before giving up (a wedged browser must not hang a sweep)."""
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The browser kaleido will use: BROWSER_PATH if set, else the first Chrome-family browser on PATH."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    return next((path for name in _BROWSERS if (path := shutil.which(name))), None)


def exporter_problem() -> str | None:
    """Why no picture can be written here (one line), or None when kaleido and a browser are installed."""
    if importlib.util.find_spec("kaleido") is None:
        return "kaleido is not installed (pip install kaleido)"
    browser = find_browser()
    if browser is None:
        return "no Chrome/Chromium found for kaleido (apt-get install chromium, or set BROWSER_PATH)"
    if not (os.path.isfile(browser) and os.access(browser, os.X_OK)):
        return f"BROWSER_PATH={browser} is not an executable file"
    return None


def write_images(items: Iterable[tuple[Any, str | Path]], scale: float = 1.0, width: int | None = None) -> list[Path]:
    """Render each (figure, path) to an image whose format is the path's suffix (.png, .svg), in one browser.

    Args:
        items: plotly figures and their output paths.
        scale: pixel density (2 for sharper PNGs at twice the size).
        width: image width in pixels; default the figure's layout width, else 700 (kaleido's default).
            The height is the figure's layout height, else 500.

    Returns:
        The paths written: all of them, or [] when no exporter works (reason printed to stderr once).
    """
    items = [(fig, Path(path)) for fig, path in items]
    if not items:
        return []
    if problem := exporter_problem():
        print(f"figures: no PNG/SVG copies ({problem}); the HTML files are complete", file=sys.stderr)
        return []
    import kaleido

    specs, tmp_paths = [], []
    for fig, path in items:
        layout = fig.layout
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # renamed when whole
        specs.append(
            {
                "fig": fig.to_dict(),
                "path": tmp,
                "opts": {
                    "format": path.suffix.lstrip(".").lower(),
                    "scale": scale,
                    "width": width or layout.width or 700,
                    "height": layout.height or 500,
                },
            }
        )
        tmp_paths.append(tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False, "timeout": EXPORT_TIMEOUT_S})
        for tmp, (_, path) in zip(tmp_paths, items):
            os.replace(tmp, path)
    except Exception as exc:  # any exporter failure means "no picture", never a failed run
        print(
            f"figures: no PNG/SVG copies ({type(exc).__name__}: {_first_line(exc)}); the HTML files are complete",
            file=sys.stderr,
        )
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)
        return []
    return [path for _, path in items]


def _first_line(exc: BaseException) -> str:
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return (text.strip().splitlines() or [""])[0][:200]
