"""The code a stage runs, read from its imports: the `deps` of `dvc.yaml` follow from it.

`dvc repro` re-runs a stage when one of its deps changes, so a stage's code deps must be exactly
the modules it executes: one missing leaves stale outputs "up to date", one too many re-runs
work for nothing (a plot colour re-running model inference). Keeping that list by hand drifts,
so it is computed: a stage script's `in2` imports (every `import` statement in the file,
function-level ones included), followed transitively; plus, for every registry of
`in2.registry` whose params key the stage reads (its `params` in `dvc.yaml`), the modules the
registry's entries point at, since choosing a name there runs that code.

`in2 deps` prints the difference with `dvc.yaml`; `in2 deps --write` rewrites the code lines of
each stage's `deps` (and nothing else) in place; `tests/test_dvc_deps.py` fails naming the stage
and module whenever the two disagree. Package `__init__.py` files are kept empty and not listed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from in2.outputs import atomic_file
from in2.registry import REGISTRIES

SRC = Path("src")
CODE_DEP = re.compile(r"^(stages/[\w/]+\.py|src/in2/[\w/]+\.py)$")
"""A dep path that is code (the rest are data, models and metrics)."""


def module_file(root: Path, module: str) -> Path | None:
    """`in2.a.b` -> `src/in2/a/b.py` (relative to `root`); None for a package or no such file."""
    path = SRC / Path(*module.split("."))
    return path.with_suffix(".py") if (root / path.with_suffix(".py")).is_file() else None


def imported_modules(root: Path, file: Path) -> set[str]:
    """The `in2` modules a file imports, anywhere in it (`from in2.x import y` counts `in2.x.y`
    when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((root / file).read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "in2"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "in2":
                continue
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if module_file(root, m) is not None}


def registry_targets(params: Iterable[str]) -> set[str]:
    """Modules behind the registries whose key is among (or under) the stage's params."""
    params = list(params)
    covered = [
        r for r in REGISTRIES if any(r.key == p or r.key.startswith(f"{p}.") for p in params)
    ]
    return {module for r in covered for module in r.target_modules()}


def code_deps(root: Path, script: str, params: Iterable[str] = ()) -> list[str]:
    """The script and every `in2` module it runs, as sorted repo-relative paths."""
    seen: set[str] = set()
    pending = [*imported_modules(root, Path(script)), *registry_targets(params)]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending.extend(imported_modules(root, module_file(root, module)))
    files = {module_file(root, m).as_posix() for m in seen}  # type: ignore[union-attr]
    return [script, *sorted(files)]


@dataclass(frozen=True)
class StageCode:
    """One `dvc.yaml` stage: its script, its params and the code deps it lists."""

    name: str
    script: str
    params: tuple[str, ...]
    listed: tuple[str, ...]


def dvc_stages(root: Path) -> list[StageCode]:
    """The stages of `dvc.yaml` (a `foreach` stage once, as its template)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    found = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = next(w for w in body["cmd"].split() if w.endswith(".py"))
        params = tuple(p for entry in body.get("params", []) for p in _param_names(entry))
        listed = tuple(d for d in body.get("deps", []) if CODE_DEP.match(d))
        found.append(StageCode(name, script, params, listed))
    return found


def _param_names(entry: str | Mapping[str, list[str]]) -> list[str]:
    return [entry] if isinstance(entry, str) else [p for keys in entry.values() for p in keys]


def differences(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Stage -> (missing from dvc.yaml, listed but not run), for the stages that disagree."""
    out = {}
    for stage in dvc_stages(root):
        wanted = code_deps(root, stage.script, stage.params)
        missing = [p for p in wanted if p not in stage.listed]
        extra = [p for p in stage.listed if p not in wanted]
        if missing or extra:
            out[stage.name] = (missing, extra)
    return out


def write_code_deps(root: Path) -> list[str]:
    """Rewrite the code lines of every stage's `deps` in `dvc.yaml` to what the code imports,
    keeping every other line (data deps, comments) as it is; returns the stages changed."""
    wanted = {s.name: code_deps(root, s.script, s.params) for s in dvc_stages(root)}
    lines = (root / "dvc.yaml").read_text().splitlines(keepends=True)
    out: list[str] = []
    stage, written = None, False
    for line in lines:
        if match := re.match(r"^  (\w+):\s*$", line):
            stage, written = match.group(1), False
        item = re.match(r"^(\s+)- (\S+)\s*$", line)
        if stage in wanted and item and CODE_DEP.match(item.group(2)):
            if not written:  # the stage's code block goes where its first code dep was
                out.extend(f"{item.group(1)}- {path}\n" for path in wanted[stage])
                written = True
            continue
        out.append(line)
    changed = list(differences(root))
    if changed:
        with atomic_file(root / "dvc.yaml") as tmp:
            tmp.write_text("".join(out))
    return changed
