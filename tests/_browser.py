"""A real Chromium driven by Playwright for the browser tests: started once per session, the network closed to
everything but the page's own origin, console errors and refused requests recorded.

Playwright drives the system's Chromium (`apt-get install chromium`, or BROWSER_PATH); it downloads no browser.
Where Chromium or Playwright is missing the tests skip with one line, except under CANARY_REQUIRE_BROWSER=1
(.ci/run), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from typing import Any

from canary_lib.image_export import find_browser

REQUIRE_ENV = "CANARY_REQUIRE_BROWSER"
PAGE_TIMEOUT_S = 120
"""Playwright's default wait (loading a page with 4.6 MB of plotly.js, a click's effect) is 30 s: too short on
two cores shared with training runs."""
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-component-update",
    "--disable-background-networking",  # no update or telemetry connections (refused on a closed network)
]


def browser_problem() -> str | None:
    """Why the browser tests cannot run here (one line), or None."""
    if importlib.util.find_spec("playwright") is None:
        return "browser tests need the playwright package: pip install -e '.[dev]'"
    if find_browser() is None:
        return "browser tests need Chromium: apt-get install chromium (or set BROWSER_PATH to a Chrome)"
    return None


@dataclass
class Watched:
    """What a page did that a test should see: console errors, uncaught exceptions, requests it was refused."""

    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def open_page(
    browser: Any,
    allowed: tuple[str, ...] = ("file:", "data:", "blob:"),
    offline: bool = True,
    viewport: tuple[int, int] = (1280, 900),
) -> tuple[Any, Watched]:
    """A page in a fresh context: requests outside `allowed` URL prefixes are aborted and recorded."""
    context = browser.new_context(offline=offline, viewport={"width": viewport[0], "height": viewport[1]})
    context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    watched = Watched()

    def route(route: Any) -> None:
        if route.request.url.startswith(allowed):
            route.continue_()
        else:
            watched.refused.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda msg: watched.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: watched.errors.append(f"uncaught: {exc}"))
    return page, watched


# What a rendered plotly figure shows, read from the page: per trace its type, name, mode, the number of points
# plotly laid out for it (_length) and the number of markers drawn in the SVG; per table its rendered cells;
# a slider's number of steps and the current value it displays.
PLOT_PROBE = """(root) => {
  const gd = (root || document).querySelector('.js-plotly-plot');
  if (!gd || !gd._fullData || !gd.calcdata) return null;
  const groups = Array.from(gd.querySelectorAll('.scatterlayer .trace'));
  let scatter = 0;
  const traces = gd._fullData.map((t) => {
    const out = {type: t.type, name: t.name, mode: t.mode || null, length: t._length ?? null};
    if (t.type === 'scatter') {
      const g = groups[scatter++];
      out.markers = g ? g.querySelectorAll('path.point').length : -1;
      out.line = !!(g && g.querySelector('path.js-line'));
    }
    return out;
  });
  const tables = Array.from(gd.querySelectorAll('.table')).map((t) => {
    const columns = t.querySelectorAll('.y-column').length;
    return {columns, cells: t.querySelectorAll('.column-cell').length};
  });
  const labels = Array.from(gd.querySelectorAll('.slider-container .slider-label'));
  const current = labels.filter((e) => !e.closest('.slider-labels')).map((e) => e.textContent);
  return {svg: gd.querySelectorAll('svg.main-svg').length, traces, tables,
          sliderSteps: labels.length - current.length, sliderValue: current[0] ?? null};
}"""


def settled_plot(page: Any, root_selector: str | None = None, timeout_s: float = 30) -> dict:
    """The probe of the page's (first) plot once it stops changing: the same state three times, 0.3 s apart
    (plotly lays a figure out in steps, and a widget's figure follows the kernel's messages)."""
    handle = page.query_selector(root_selector) if root_selector else None
    states: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = page.evaluate(PLOT_PROBE, handle)
        states = (states + [json.dumps(current)])[-3:]
        if current is not None and len(states) == 3 and len(set(states)) == 1:
            return current
        page.wait_for_timeout(300)
    raise AssertionError(f"the plot did not settle in {timeout_s} s (last states: {states})")
