"""Packaging as a newcomer meets it: extras any pip resolves, and a test venv that has what they name.

pip 23 (what ``python3 -m venv`` brings with Python 3.11/3.12) matches extras by exact name, so an
extra spelled ``nash_mtl`` where the package publishes ``nash-mtl`` installs the package *without*
it, silently. These tests read the installed distribution's metadata, the way pip does.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

OURS = metadata.distribution("mtlkit")
# PEP 685: an extra's name is normalised like a project name: lowercase letters, digits, single '-'.
NORMALISED = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# Extras the test venv deliberately lacks: their "missing extra" error message is what is tested.
NOT_IN_TEST_VENV = {"tensorboard"}


def _requirements(extra: str | None = None) -> list[Requirement]:
    requirements = [Requirement(line) for line in OURS.requires or []]
    if extra is None:
        return [r for r in requirements if r.marker is None]
    return [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": extra})]


def _extras() -> list[str]:
    return OURS.metadata.get_all("Provides-Extra") or []


def _closure(requirements: list[Requirement]) -> list[Requirement]:
    """The requirements plus, for each ``pkg[extra]``, what ``pkg`` needs for that extra (one level, as pip would)."""
    out = list(requirements)
    for requirement in requirements:
        for extra in requirement.extras:
            dependency = metadata.distribution(requirement.name)
            for line in dependency.requires or []:
                needed = Requirement(line)
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}):
                    out.append(needed)
    return out


def _top_level_modules(distribution: str) -> list[str]:
    name = canonicalize_name(distribution)
    return sorted(module for module, owners in metadata.packages_distributions().items()
                  if any(canonicalize_name(owner) == name for owner in owners) and not module.startswith("_"))


def test_every_extra_name_is_pep685_normalised():
    assert set(_extras()) >= {"balancers", "nlp", "export", "serve", "test"}
    for extra in _extras():
        assert NORMALISED.match(extra), extra
    for requirement in _requirements() + [r for e in _extras() for r in _requirements(e)]:
        for extra in requirement.extras:
            assert NORMALISED.match(extra), f"{requirement}: extra {extra!r} is not normalised"


@pytest.mark.parametrize("requirement", sorted({str(r) for e in _extras() for r in _requirements(e) if r.extras}))
def test_extras_we_ask_of_other_packages_exist_there(requirement):
    """``torchjd[nash-mtl]``: torchjd's own metadata must provide ``nash-mtl``, or pip drops it silently."""
    wanted = Requirement(requirement)
    provided = set(metadata.distribution(wanted.name).metadata.get_all("Provides-Extra") or [])
    assert wanted.extras <= provided, f"{wanted.name} provides {sorted(provided)}, we ask for {sorted(wanted.extras)}"


@pytest.mark.parametrize("requirement", sorted({str(r) for r in _closure(_requirements() + _requirements("test"))}))
def test_everything_the_test_venv_needs_is_installed_and_importable(requirement):
    needed = Requirement(requirement)
    version = metadata.version(needed.name)  # PackageNotFoundError: the install dropped it
    assert needed.specifier.contains(version, prereleases=True), f"{needed.name} {version} does not satisfy {needed}"
    modules = _top_level_modules(needed.name)
    assert modules, f"{needed.name} is installed but provides no importable module"
    for module in modules:
        importlib.import_module(module)


def test_the_test_extra_covers_every_other_extra():
    """So the suite exercises what each extra installs (tensorboard's absence is itself tested)."""
    in_test = {canonicalize_name(r.name): r.specifier for r in _requirements("test")}
    for extra in set(_extras()) - NOT_IN_TEST_VENV - {"test"}:
        for requirement in _requirements(extra):
            name = canonicalize_name(requirement.name)
            assert name in in_test, f"extra {extra!r} needs {requirement}, which the test extra lacks"
            assert in_test[name] == requirement.specifier, f"{name}: test pins {in_test[name]}, {extra} pins {requirement.specifier}"


def test_ci_runs_the_readme_commands_verbatim():
    """.ci/run extracts README.md's first two bash blocks: install + demo, then the tests."""
    blocks = [subprocess.run(["bash", "-c", f'source <(sed -n "/^readme_block()/,/^}}/p" .ci/run); readme_block {n}'],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout for n in (1, 2)]
    install, tests = blocks
    assert "python3 -m venv .venv" in install and "pip install torch==2.13.0" in install
    assert install.index("torch==2.13.0") < install.index('-e ".[test]"'), "the pinned CPU torch must come first"
    assert "mtlkit demo" in install
    assert "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert not re.search(r"pip install[^\n]*(--upgrade|-U)\s+pip", ci), "CI must use the venv's own pip, as a newcomer does"
