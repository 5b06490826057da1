"""Render a study report in headless Chromium: screenshot, console errors, and the verdict table as rendered.

    python tools/render_report.py runs/study_planted/report.html --screenshot runs/study_planted/report.png

Needs a ``chromium`` binary (Debian: ``apt-get install chromium``). The test suite parses the report
with ``html.parser``; ``python -m pytest -m browser`` also runs this tool on a study it trains
(``tests/test_study.py::test_report_renders_in_headless_chromium``). Exit code 1 when the page logs a console
error or a failed request, or when the rendered verdict table differs from ``results.json``
beside the report. The report holds no scripts and no network resources, so Chromium runs with
networking off (``--host-resolver-rules``) to prove it needs none.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path


class VerdictRows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in, self._cell = False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "verdicts":
            self._in = True
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag == "td":
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._in = False


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        sys.exit("no chromium binary: apt-get install chromium")
    profile = tempfile.mkdtemp(prefix="mtlkit-chromium-")
    common = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
              "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([binary, *common, *args], capture_output=True, text=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    report = args.report.resolve()
    screenshot = (args.screenshot or report.with_suffix(".png")).resolve()
    url = report.as_uri()
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1200,4000", url)
    dom = chromium("--dump-dom", url)
    log = shot.stderr + dom.stderr
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Failed to load" in line or "net::ERR" in line]
    problems = [f"console: {line.strip()}" for line in console]
    if not screenshot.exists() or screenshot.stat().st_size == 0:
        problems.append(f"no screenshot written (chromium exit {shot.returncode})")
    rows = VerdictRows()
    rows.feed(dom.stdout)
    rows.rows = [r for r in rows.rows if r]  # the header row holds <th> cells only
    results_path = report.with_name("results.json")
    if results_path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from mtlkit.study.results import verdict_rows

        expected = verdict_rows(json.loads(results_path.read_text()))
        if len(rows.rows) != len(expected):
            problems.append(f"rendered verdict table has {len(rows.rows)} rows, results.json {len(expected)}")
        for got, want in zip(rows.rows, expected):
            numbers = [float(x) for x in got[4:7]]
            if got[:3] != [want["arm"], want["versus"], want["task"]] or got[7] != want["verdict"] or any(
                    abs(a - b) > 1e-5 * max(1.0, abs(b)) for a, b in zip(numbers, (want["mean_difference"], want["ci_low"], want["ci_high"]))):
                problems.append(f"rendered row {got} differs from results.json {want}")
    images = len(re.findall(r"<img ", dom.stdout))
    print(f"screenshot: {screenshot} ({screenshot.stat().st_size if screenshot.exists() else 0} bytes)")
    print(f"rendered: {len(rows.rows)} verdict rows, {images} inline figures; console messages: {len(console)}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
