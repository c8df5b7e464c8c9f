"""pyproject.toml (what `pip install .` asks for) and requirements.txt (what `make` installs)
cannot drift: every pin is an exact version inside the declared range, and nothing is on one
side only."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [
        *project["dependencies"],
        *(r for x in project["optional-dependencies"].values() for r in x),
    ]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def pinned() -> dict[str, Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    requirements = [
        Requirement(line) for line in lines if line.strip() and not line.startswith("#")
    ]
    return {canonicalize_name(r.name): r for r in requirements}


def test_every_pin_is_exact_and_inside_the_declared_range() -> None:
    ranges, pins = declared(), pinned()
    assert sorted(pins) == sorted(ranges), "requirements.txt and pyproject.toml name other packages"
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"requirements.txt: {pin} is not an exact pin"
        assert ranges[name].specifier.contains(spec.version), (
            f"requirements.txt pins {pin}, outside pyproject.toml's {ranges[name]}"
        )
        assert pin.extras == ranges[name].extras, f"{name}: extras differ ({pin} vs {ranges[name]})"


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"in2": "in2.cli:main"}
