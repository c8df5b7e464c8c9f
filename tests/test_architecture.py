"""The house rules of docs/architecture.md, checked on the real imports of the tree.

- `dvc.yaml` lists as each stage's code deps exactly the modules its script runs (imports,
  transitively, plus the registry targets of the params it reads): `in2 deps` computes them.
- Floors: a module imports only from the ground floor, its own subpackage and the subpackages
  below it; no import cycles.
- A stage script imports only from the ground floor, in2.lineage and its own subpackage.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from in2.lineage.code_deps import differences, dvc_stages, imported_modules, module_file

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "in2"
FLOORS = ("lineage", "data", "endpoint", "qa", "synth", "gate", "train", "probing", "report")
"""The subpackages from the lowest floor to the highest; the ground floor is below them all."""
GROUND = {"params", "registry", "layout", "outputs", "prompting", "model", "stage"}
STAGE_PACKAGE = {
    "base_model": None,
    "corpus": "data",
    "segment": "data",
    "probe_data": "probing",
    "qa": "qa",
    "synthesize": "synth",
    "validate": "gate",
    "train": "train",
    "probe": "probing",
    "report": "report",
}
"""Stage script -> the subpackage that holds its logic (None: the ground floor alone)."""


def modules() -> dict[str, Path]:
    """Every module of the package (not `__init__`), by dotted name."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name != "__init__.py":
            found[".".join(path.relative_to(SRC.parent).with_suffix("").parts)] = path
    return found


def floor(module: str) -> int | None:
    """0 for the ground floor, 1... for the subpackages in FLOORS order; None for the cli."""
    parts = module.split(".")
    if len(parts) == 2:
        return 0 if parts[1] in GROUND else None
    return 1 + FLOORS.index(parts[1])


def test_dvc_yaml_code_deps_are_what_the_stages_import() -> None:
    problems = [
        f"stage {stage}: dvc.yaml misses {missing}" * bool(missing)
        + f"{'; ' if missing and extra else ''}"
        + f"stage {stage}: dvc.yaml lists {extra}, which it does not run" * bool(extra)
        for stage, (missing, extra) in differences(REPO).items()
    ]
    assert not problems, "\n".join(problems) + "\nrun `in2 deps --write`"


def test_every_stage_of_dvc_yaml_is_known_here() -> None:
    assert {s.script for s in dvc_stages(REPO)} == {f"stages/{s}.py" for s in STAGE_PACKAGE}


def test_the_deps_walk_follows_imports_registries_and_function_level_imports(
    tmp_path: Path,
) -> None:
    """The walker itself: a module imported inside a function counts, a registry's targets
    count only where the stage reads its key, and a package's name alone adds no file."""
    (tmp_path / "src/in2/sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    (tmp_path / "src/in2/sub/__init__.py").write_text("")
    (tmp_path / "src/in2/sub/a.py").write_text("def f():\n    from in2.sub import b\n")
    (tmp_path / "src/in2/sub/b.py").write_text("import os\n")
    (tmp_path / "stages/x.py").write_text("from in2.sub.a import f\nimport in2.sub\n")
    assert imported_modules(tmp_path, Path("stages/x.py")) == {"in2.sub.a"}
    assert imported_modules(tmp_path, module_file(tmp_path, "in2.sub.a")) == {"in2.sub.b"}
    from in2.lineage.code_deps import code_deps, registry_targets

    assert code_deps(tmp_path, "stages/x.py") == [
        "stages/x.py",
        "src/in2/sub/a.py",
        "src/in2/sub/b.py",
    ]
    assert "in2.probing.tasks" in registry_targets(["probe.tasks"])
    assert "in2.probing.tasks" in registry_targets(["probe"])
    assert "in2.probing.tasks" not in registry_targets(["probe.bin_size", "seed"])
    assert "in2.qa.llm" in registry_targets(["qa"])


def in2_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `in2` command, run in `cwd` as a user runs it there."""
    cli = Path(sys.executable).parent / "in2"
    return subprocess.run([str(cli), *args], cwd=cwd, capture_output=True, text=True)


def test_a_stale_dep_list_is_reported_and_rewritten(tmp_path: Path) -> None:
    """`in2 deps` fails naming the stage and module; `in2 deps --write` fixes only code lines."""
    for path in ("dvc.yaml", "stages", "src"):
        subprocess.run(["cp", "-r", str(REPO / path), str(tmp_path / path)], check=True)
    (tmp_path / ".dvc").mkdir()  # what makes the folder a repository root for `in2`
    yaml_text = (tmp_path / "dvc.yaml").read_text()
    stale = yaml_text.replace("      - src/in2/layout.py\n", "", 1)
    assert stale != yaml_text
    (tmp_path / "dvc.yaml").write_text(stale)

    check = in2_command("deps", cwd=tmp_path)
    assert check.returncode == 1
    assert "missing ['src/in2/layout.py']" in check.stdout
    assert "run `in2 deps --write`" in check.stderr
    write = in2_command("deps", "--write", cwd=tmp_path)
    assert write.returncode == 0, write.stderr
    assert (tmp_path / "dvc.yaml").read_text() == yaml_text
    assert in2_command("deps", cwd=tmp_path).returncode == 0


def imports_of(path: Path) -> set[str]:
    return imported_modules(REPO, path.relative_to(REPO))


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_from_a_higher_floor(module: str) -> None:
    own = floor(module)
    if own is None:  # the cli is an entry point, like the stage scripts
        return
    parts = module.split(".")
    upward = [
        m
        for m in imports_of(modules()[module])
        if (f := floor(m)) is None
        or f > own
        or (f == own and own > 0 and m.split(".")[1] != parts[1])
    ]
    assert not upward, f"{module} (floor {own}) imports from a higher floor: {upward}"


def test_no_import_cycles() -> None:
    graph = {m: imports_of(p) for m, p in modules().items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 2:
            return
        assert state.get(module) != 1, f"import cycle: {' -> '.join([*path, module])}"
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize("stage", sorted(STAGE_PACKAGE))
def test_stage_scripts_import_only_their_floor(stage: str) -> None:
    allowed = {"lineage", STAGE_PACKAGE[stage]}
    wrong = [
        m
        for m in imports_of(REPO / "stages" / f"{stage}.py")
        if floor(m) != 0 and m.split(".")[1] not in allowed
    ]
    assert not wrong, f"stages/{stage}.py imports {wrong}: route it through in2.{allowed}"


def test_package_inits_are_empty() -> None:
    """Importing a module never runs code it did not ask for (and `__init__` needs no deps)."""
    assert [p for p in SRC.rglob("__init__.py") if p.read_text().strip()] == []
