"""ruff and mypy over the repository, as part of the test command (so CI, which runs exactly the
README's two commands, runs them too). Their settings are in pyproject.toml ([tool.ruff], [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "src", "tests", "benchmarks", "tools")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_finds_nothing():
    result = _run("mypy", "--cache-dir", "/dev/null")  # no cache written into the checkout
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
