"""`in2 audit`: from an MLflow run back to the data it was made from, and the dataset versions.

A run's tags name DVC's md5 of everything it read (in2.lineage.tracking); `dvc.lock` (in the
workspace, in the git history, in DVC experiment commits) names what each dataset was made
from. Each md5 is checked against the workspace and the DVC cache, so a file changed after a
run is reported rather than silently taken for the one the run saw. docs/lineage.md shows the
output.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from in2 import layout
from in2.lineage.fingerprint import path_md5
from in2.lineage.tracking import EXPERIMENT, tracking_uri
from in2.params import InputError

DATASET = layout.IN2_DATA.as_posix()
LOCK = "dvc.lock"
GATE = layout.GATE_SUMMARY.as_posix()
MIX = layout.SYNTHESIZE_METRICS.as_posix()
UPSTREAM = (
    ("corpus", layout.CORPUS_TRAIN.as_posix()),
    ("segments", layout.SEGMENTS.as_posix()),
    ("qa", layout.QA.as_posix()),
)
"""The synthesize deps the dataset was made from, in pipeline order (dvc.yaml)."""


@dataclass
class Artefact:
    """One link of the chain: its md5, where that md5 was recorded, and whether the workspace
    or the DVC cache still holds exactly that content."""

    step: str
    path: str
    md5: str | None
    source: str
    workspace: str = "unknown"  # match | MISMATCH | missing | unknown (no md5 recorded)
    workspace_md5: str | None = None
    cache: str = "unknown"  # present | missing | partial | unknown
    note: str = ""


@dataclass
class LockVersion:
    """One `dvc.lock`: of the workspace, of a commit that changed it, or of a DVC experiment."""

    source: str  # workspace | commit | experiment
    rev: str
    label: str
    date: str
    lock: dict[str, Any]

    def out_md5(self, stage: str, path: str) -> str | None:
        return _md5_of(self.lock, stage, "outs", path)

    def dep_md5(self, stage: str, path: str) -> str | None:
        return _md5_of(self.lock, stage, "deps", path)


def _md5_of(lock: dict[str, Any], stage: str, kind: str, path: str) -> str | None:
    entries = (lock.get("stages") or {}).get(stage, {}).get(kind) or []
    return next((e.get("md5") for e in entries if e.get("path") == path), None)


class Repo:
    """The repository being audited: its git history, DVC cache and MLflow store."""

    def __init__(self, root: Path) -> None:
        if not (root / ".dvc").is_dir():
            raise InputError(
                f"{root} is not a DVC repository (no .dvc/); run `in2 audit` inside the in2 repo"
            )
        self.root = root
        from dvc.repo import Repo as DvcRepo

        with DvcRepo(str(root)) as dvc:
            self.cache = Path(dvc.cache.local.path)
        self._hashes: dict[str, str | None] = {}

    def git(self, *args: str) -> str | None:
        """stdout of a git command, or None when it fails (no git repo, no such revision)."""
        out = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    def hash(self, path: str) -> str | None:
        """DVC's md5 of `path` in the workspace (None if absent), computed once per audit."""
        if path not in self._hashes:
            target = self.root / path
            self._hashes[path] = path_md5(target) if target.exists() else None
        return self._hashes[path]

    def cache_state(self, md5: str) -> str:
        """present, missing, or partial (a folder whose listing is cached but not every file)."""
        listing = self._object(md5)
        if not listing.is_file():
            return "missing"
        if not md5.endswith(".dir"):
            return "present"
        entries = json.loads(listing.read_text())
        lost = sum(not self._object(e["md5"]).is_file() for e in entries)
        return f"partial ({lost} of {len(entries)} files missing)" if lost else "present"

    def _object(self, md5: str) -> Path:
        return self.cache / md5[:2] / md5[2:]

    def read_json(self, path: str, md5: str | None) -> dict[str, Any] | None:
        """The JSON file `path` had when its md5 was `md5`: from the workspace if it still
        matches, else from the DVC cache; None if neither holds it."""
        if md5 is None:
            return None
        if self.hash(path) == md5:
            return json.loads((self.root / path).read_text())
        cached = self._object(md5)
        return json.loads(cached.read_text()) if cached.is_file() else None

    def check(self, artefact: Artefact) -> Artefact:
        """Fill in whether the workspace and the DVC cache still hold the recorded md5."""
        if artefact.md5 is None:
            return artefact
        now = self.hash(artefact.path)
        artefact.workspace_md5 = now
        artefact.workspace = (
            "missing" if now is None else "match" if now == artefact.md5 else "MISMATCH"
        )
        artefact.cache = self.cache_state(artefact.md5)
        return artefact

    def lock_versions(self) -> tuple[list[LockVersion], list[str]]:
        """Every `dvc.lock` there is (workspace, then commits newest first, then experiments)
        and notes on what is not there."""
        versions, notes = [], []
        if (self.root / LOCK).is_file():
            lock = yaml.safe_load((self.root / LOCK).read_text()) or {}
            versions.append(LockVersion("workspace", "workspace", "the workspace", "", lock))
        history = self.git("log", "--format=%H%x09%cI%x09%s", "--", LOCK)
        if history is None:
            notes.append(f"{self.root} is not a git repository: no history of {LOCK}")
        elif not history:
            notes.append(
                f"{LOCK} has no git history (it is not committed), so only the workspace "
                f"version is known; commit it (`git add {LOCK} && git commit`) to keep each "
                "dataset version"
            )
        for line in (history or "").splitlines():
            sha, date, subject = line.split("\t", 2)
            if text := self.git("show", f"{sha}:{LOCK}"):
                lock = yaml.safe_load(text) or {}
                versions.append(LockVersion("commit", sha, f"{sha[:7]} {subject}", date, lock))
        versions += self._experiments()
        return versions, notes

    def _experiments(self) -> list[LockVersion]:
        """DVC experiments are commits under refs/exps/<sha[:2]>/<sha[2:]>/<name>, `sha` being
        the baseline (dvc/repo/experiments/refs.py, DVC 3.67); other refs/exps/ namespaces
        (stash, celery, exec, temp, apply) hold queued or running work, not results."""
        fmt = "--format=%(refname)%09%(objectname)%09%(committerdate:iso-strict)"
        versions = []
        for line in (self.git("for-each-ref", fmt, "refs/exps") or "").splitlines():
            ref, sha, date = line.split("\t")
            parts = ref.split("/")
            if len(parts) != 5 or len(parts[2]) != 2 or len(parts[3]) != 38:
                continue
            if text := self.git("show", f"{sha}:{LOCK}"):
                label = f"exp {parts[4]} (baseline {parts[2]}{parts[3][:5]})"
                versions.append(
                    LockVersion("experiment", sha, label, date, yaml.safe_load(text) or {})
                )
        return versions


def _mlflow(root: Path) -> tuple[Any, str]:
    """An MLflow client on the repo's store; a clear error when there is none."""
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InputError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: no run was recorded in this "
            "repository; run `dvc repro` first (or set MLFLOW_TRACKING_URI to the team's server)"
        )
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri), uri


def _get_run(client: Any, uri: str, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise InputError(
            f"no MLflow run '{run_id}' in {uri}; find run ids with "
            f"`mlflow ui --backend-store-uri {uri}` (experiment '{EXPERIMENT}')"
        ) from None


def _gate(repo: Repo, client: Any, dataset_md5: str, summary_md5: str | None = None) -> str:
    """The quality gate's verdict on one dataset version: the validate run tagged with its md5,
    else the summary.json (workspace or DVC cache) that names it."""
    experiment = client.get_experiment_by_name(EXPERIMENT) if client else None
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            f"tags.dataset_md5 = '{dataset_md5}' and attributes.run_name = 'validate'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs and "dq.success" in runs[0].data.metrics:
            verdict = "passed" if runs[0].data.metrics["dq.success"] == 1.0 else "FAILED"
            return f"gate {verdict} (validate run {runs[0].info.run_id})"
    for md5 in dict.fromkeys([summary_md5, repo.hash(GATE)]):
        summary = repo.read_json(GATE, md5)
        if summary and summary.get("dataset", {}).get("md5") == dataset_md5:
            return f"gate {'passed' if summary.get('success') else 'FAILED'} ({GATE} {md5})"
    return "gate verdict unknown (no validate run or summary.json names this dataset)"


def audit_run(run_id: str, root: Path) -> dict[str, Any]:
    """The chain corpus -> segments -> QA -> IN2 dataset -> checkpoint -> probe scores of one
    train, validate or probe run, each link checked against the workspace and DVC cache."""
    repo = Repo(root)
    client, uri = _mlflow(root)
    run = _get_run(client, uri, run_id)
    name, tags = run.info.run_name, run.data.tags
    probe = run if name.startswith("probe-") else None
    if probe is None and name not in ("train", "validate"):
        raise InputError(f"run {run_id} is a '{name}' run; audit a train, validate or probe run")
    train_id = tags.get("train_run_id") if probe else run_id if name == "train" else None
    train = _get_run(client, uri, train_id) if train_id else None
    reader = train or (run if name == "validate" else None)  # the run that read data/in2

    chain: list[Artefact] = []
    if reader is not None:
        chain += _data_chain(repo, client, reader)
    if train is not None or "checkpoint_md5" in tags:  # not for a probed endpoint
        chain.append(_checkpoint(probe, train))
    if probe is not None:
        model = name.removeprefix("probe-")
        scores = (layout.probe_results(model) / "scores.json").as_posix()
        metrics = probe.data.metrics
        chain.append(
            Artefact(
                "probe scores",
                scores,
                tags.get(f"output.{scores}"),
                f"tag output.{scores} of probe run {run_id}",
                note=f"all Avg {metrics.get('all_avg', float('nan')):.4f}, "
                f"Gap {metrics.get('all_gap', float('nan')):.4f}",
            )
        )
    for artefact in chain:
        repo.check(artefact)
    lineage = {k: v for k, v in tags.items() if k.startswith(("git_", "dvc_"))}
    return {
        "run": {"id": run_id, "name": name, "tags": lineage},
        "train_run_id": train_id,
        "chain": [asdict(a) for a in chain],
        "problems": [p for a in chain if (p := _problem(a))],
    }


def _data_chain(repo: Repo, client: Any, reader: Any) -> list[Artefact]:
    """corpus, segments, QA and the IN2 dataset as `reader` (a train or validate run) saw them:
    from its input.* tags, upstream of those from the dvc.lock whose synthesize made the data."""
    tags, run_id = reader.data.tags, reader.info.run_id
    dataset_md5 = tags.get(f"input.{DATASET}") or tags.get("dataset_md5")
    versions, _ = repo.lock_versions()
    made = next(
        (v for v in versions if dataset_md5 and v.out_md5("synthesize", DATASET) == dataset_md5),
        None,
    )
    chain = []
    for step, path in UPSTREAM:
        if md5 := tags.get(f"input.{path}"):
            source = f"tag input.{path} of {reader.info.run_name} run {run_id}"
        elif made is not None:
            md5, source = (
                made.dep_md5("synthesize", path),
                f"{LOCK} of {made.label}: synthesize dep",
            )
        else:
            source = f"not recorded: no {LOCK} (workspace, git, experiments) made {dataset_md5}"
        chain.append(Artefact(step, path, md5, source))
    gate = _gate(repo, client, dataset_md5) if dataset_md5 else ""
    chain.append(
        Artefact(
            "IN2 dataset",
            DATASET,
            dataset_md5,
            f"tags of {reader.info.run_name} run {run_id}",
            note=gate,
        )
    )
    return chain


def _checkpoint(probe: Any, train: Any) -> Artefact:
    """The checkpoint the probe run evaluated (or the train run made), and whether they agree."""
    made = train.data.tags.get("checkpoint_md5") if train else None
    if probe is None:
        path = train.data.tags.get("checkpoint_path", layout.TRAINED_MODEL.as_posix())
        return Artefact(
            "checkpoint", path, made, f"tag checkpoint_md5 of train run {train.info.run_id}"
        )
    model = probe.info.run_name.removeprefix("probe-")
    md5 = probe.data.tags.get("checkpoint_md5")
    source = f"tag checkpoint_md5 of probe run {probe.info.run_id}"
    if train is None:
        note = "no train run: the probe names none (the base model, or an endpoint)"
    elif made == md5:
        note = f"made by train run {train.info.run_id}"
    else:
        note = f"NOT the checkpoint train run {train.info.run_id} made ({made})"
    return Artefact("checkpoint", layout.model_dir(model).as_posix(), md5, source, note=note)


def _problem(a: Artefact) -> str | None:
    """What is wrong with one link, phrased as what to do; None when it is intact."""
    if a.md5 is None:
        return f"{a.step} ({a.path}): no md5 recorded ({a.source})"
    restore = (
        f"the DVC cache holds it: `git checkout REV -- {LOCK} && dvc checkout {a.path}`, REV "
        f"being a revision whose {LOCK} records it (`in2 audit data` lists them)"
        if a.cache == "present"
        else "it is not in the DVC cache either (`dvc pull` it from the remote)"
    )
    if a.workspace == "MISMATCH":
        return (
            f"{a.step} ({a.path}): the workspace copy has md5 {a.workspace_md5}, not the "
            f"{a.md5} the run recorded; {restore}"
        )
    if a.workspace == "missing" and a.cache != "present":
        return f"{a.step} ({a.path}): neither the workspace nor the DVC cache holds md5 {a.md5}"
    if a.note.startswith("NOT") or "FAILED" in a.note:
        return f"{a.step} ({a.path}): {a.note}"
    return None


def format_run(report: dict[str, Any]) -> str:
    """The chain as aligned text, then the verdict."""
    run, tags = report["run"], report["run"]["tags"]
    head = (
        f"run {run['id']} ({run['name']}): git {tags.get('git_commit', '?')[:10]} "
        f"(dirty: {tags.get('git_dirty', '?')}), stage {tags.get('dvc_stage', '?')}"
    )
    if exp := tags.get("dvc_exp_name"):
        head += f", experiment {exp} on {tags.get('dvc_exp_baseline_rev', '?')[:10]}"
    lines = [head]
    for a in report["chain"]:
        lines.append(
            f"  {a['step']:<13} {a['path']:<34} {a['md5'] or '-':<38} "
            f"workspace {a['workspace']:<8} cache {a['cache']}"
        )
        lines.append(f"  {'':<13} from {a['source']}" + (f"; {a['note']}" if a["note"] else ""))
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("OK: every link's md5 is in the workspace or the DVC cache")
    return "\n".join(lines)


def audit_data(root: Path) -> dict[str, Any]:
    """Every version of the IN2 dataset in the workspace, git history and DVC experiments, with
    its mix (metrics/synthesize.json) and the quality gate's verdict."""
    repo = Repo(root)
    try:
        client, _ = _mlflow(root)
    except InputError:
        client = None  # the verdict then comes from summary.json alone
    versions, notes = repo.lock_versions()
    rows = []
    for v in versions:
        md5 = v.out_md5("synthesize", DATASET)
        if md5 is None:
            continue
        mix = repo.read_json(MIX, v.out_md5("synthesize", MIX))
        validated = v.dep_md5("validate", DATASET) == md5
        rows.append(
            {
                "source": v.source,
                "rev": v.rev,
                "label": v.label,
                "date": v.date,
                "dataset_md5": md5,
                "cache": repo.cache_state(md5),
                "mix": mix.get("counts") if mix else None,
                "gate": _gate(
                    repo, client, md5, v.out_md5("validate", GATE) if validated else None
                ),
            }
        )
    if not rows:
        notes.append(f"no {LOCK} records a synthesize stage yet; run `dvc repro synthesize`")
    return {"versions": rows, "distinct": len({r["dataset_md5"] for r in rows}), "notes": notes}


def format_data(report: dict[str, Any]) -> str:
    """One block per version: where it is recorded, md5, gate verdict, mix."""
    lines = [f"{DATASET}: {report['distinct']} distinct version(s)"]
    for r in report["versions"]:
        lines.append(f"  {r['label']}{' ' + r['date'] if r['date'] else ''}")
        lines.append(f"    md5 {r['dataset_md5']} (cache {r['cache']}); {r['gate']}")
        lines.append(f"    mix {_mix_text(r['mix'])}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _mix_text(counts: dict[str, dict[str, int]] | None) -> str:
    if not counts:
        return f"unknown ({MIX} of this version is in neither the workspace nor the DVC cache)"
    return "; ".join(
        f"{split} {sum(kinds.values())} ("
        + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        + ")"
        for split, kinds in counts.items()
    )
