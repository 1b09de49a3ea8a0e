"""binder/ builds the course on mybinder.org (repo2docker) with the versions `make test` checks.

Nothing here installs binder/requirements.txt: its torch comes from PyTorch's CPU wheel index,
which the test machines cannot reach. Instead its pins are compared with constraints.txt, and the
distributions the course needs are read from the installed metadata of the same pins.
"""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
# Tooling of every environment, never pinned by `make lock` (pip freeze leaves them out).
UNPINNED = {"pip", "setuptools", "wheel"}


def _pins(path: Path) -> dict[str, str]:
    """{canonical name: the pin line} for the `name==version` lines of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-") and line != ".":
            pins[canonicalize_name(Requirement(line).name)] = line
    return pins


def _lines(path: Path) -> list[str]:
    return [s for s in (line.split("#", 1)[0].strip() for line in path.read_text().splitlines()) if s]


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions ``requirements`` pull in, extras and markers included."""
    seen: dict[str, set[str]] = {}
    stack = [(Requirement(r), "") for r in requirements]
    while stack:
        requirement, extra = stack.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen and set(requirement.extras) <= seen[name]:
            continue
        seen.setdefault(name, set()).update(requirement.extras)
        for line in importlib.metadata.distribution(name).requires or []:
            for wanted in ["", *sorted(requirement.extras)]:
                stack.append((Requirement(line), wanted))
    return set(seen)


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a Python file (jupytext comments out magics)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


BINDER_PINS = _pins(BINDER / "requirements.txt")
LOCK = _pins(REPO / "constraints.txt")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_binder_pins_are_the_locked_versions():
    different = {}
    for name, line in BINDER_PINS.items():
        expected = LOCK.get(name, "(not in constraints.txt)")
        if name == "torch":
            expected += "+cpu"  # the CPU build: the CUDA one is too large for Binder
        if line != expected:
            different[line] = expected
    assert not different, f"binder/requirements.txt differs from constraints.txt (binder: lock): {different}"
    assert "torch" in BINDER_PINS


def test_binder_installs_torch_from_the_cpu_index_and_the_package_from_the_repository():
    lines = _lines(BINDER / "requirements.txt")
    assert CPU_INDEX in lines
    # repo2docker runs pip from the repository root, where `.` is this project; a local
    # requirement also makes it copy the whole repository before installing.
    assert "-e ." in lines or "." in lines


def test_binder_installs_everything_the_course_imports():
    needed = _closure(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["lab"]) - UNPINNED
    # torch's CUDA build needs nvidia-* wheels the CPU lock never saw; what the lock pins is the environment.
    needed &= set(LOCK)
    missing = sorted(needed - set(BINDER_PINS))
    assert not missing, "add to binder/requirements.txt: " + ", ".join(LOCK[n] for n in missing)

    providers = importlib.metadata.packages_distributions()  # import name -> distributions (sklearn -> scikit-learn)
    sources = sorted(REPO.glob("notebooks/[0-9][0-9]_*.py")) + sorted(REPO.glob("mdiff_lite/**/*.py"))
    unprovided = {}
    for source in sources:
        for module in _imported_modules(source) - set(sys.stdlib_module_names) - {"mdiff_lite"}:
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & set(BINDER_PINS):
                unprovided[f"{source.relative_to(REPO)}: import {module}"] = sorted(dists) or "not installed"
    assert not unprovided, f"imports Binder would not install: {unprovided}"


def test_runtime_is_python_311():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_every_pin_installs_on_the_oldest_python_the_project_admits():
    """requires-python's floor is a Python that every locked version supports (numpy 2.4 needs 3.11,
    soupsieve 4.1 3.11.5: Debian 12's python3.11 is 3.11.2), so pip refuses an older interpreter
    at once rather than halfway through `make install`; the README states the same floor."""
    floors = [Version(s.version) for s in SpecifierSet(PROJECT["requires-python"]) if s.operator == ">="]
    assert len(floors) == 1, PROJECT["requires-python"]
    oldest = floors[0]
    unsupported = {}
    for name in LOCK:
        required = importlib.metadata.distribution(name).metadata.get("Requires-Python")
        if required and oldest not in SpecifierSet(required):
            unsupported[name] = required
    assert not unsupported, f"locked versions that do not install on Python {oldest}: {unsupported}"
    assert f"Python >= {oldest}" in (REPO / "README.md").read_text()


def test_postbuild_is_strict_executable_bash():
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK), "repo2docker runs postBuild only when it is executable"
    lines = [s.strip() for s in post_build.read_text().splitlines() if s.strip() and not s.startswith("#")]
    assert lines[0] == "set -euo pipefail"
    assert "overrides.json" in post_build.read_text()
    subprocess.run(["bash", "-n", str(post_build)], check=True)


@pytest.mark.parametrize("plugin, key, value", [
    ("@jupyterlab/docmanager-extension:plugin", "defaultViewers", {"python": "Jupytext Notebook"}),
    ("@jupyterlab/apputils-extension:notification", "fetchNews", "false"),
    ("@jupyterlab/apputils-extension:notification", "checkForUpdates", False),
], ids=["python-opens-as-notebook", "no-news", "no-update-check"])
def test_lab_overrides_are_valid_settings(plugin, key, value):
    """The settings `make lab` and Binder share, checked against the installed JupyterLab's schemas."""
    overrides = json.loads((BINDER / "overrides.json").read_text())
    assert overrides[plugin][key] == value
    package, name = plugin.split(":")
    schema = Path(sys.prefix, "share", "jupyter", "lab", "schemas", package, f"{name}.json")
    jsonschema.validate(overrides[plugin], json.loads(schema.read_text()))
