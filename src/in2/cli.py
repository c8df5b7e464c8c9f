"""The `in2` command: helpers around the pipeline (the pipeline itself is `dvc repro`).

in2 profile NAME     merge configs/profiles/NAME.yaml into params.yaml (validated first)
in2 show EXAMPLE_ID  decode one IN2 example: its context with the gold segments marked
in2 score-official   score a prediction file of the paper's released probes (VaLProbing-32K)
                     with our metrics; writes a scores.json like the probe stage's
in2 audit run ID     the chain corpus -> ... -> probe scores of an MLflow run, each md5 checked
                     against the workspace and the DVC cache (docs/lineage.md)
in2 audit data       the versions of data/in2 in git history and DVC experiments, mix and gate
in2 deps [--write]   check (or rewrite) the code deps of dvc.yaml against the stages' imports
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from in2.outputs import atomic_file, write_json
from in2.params import InputError, deep_merge, parse_params
from in2.registry import PROBE_TASKS

PROFILES = Path("configs/profiles")


def apply_profile(name: str, params_path: Path) -> list[str]:
    """Write params.yaml merged with a profile; returns the dotted keys that changed."""
    profile_path = PROFILES / f"{name}.yaml"
    if not profile_path.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise InputError(f"no profile '{name}' in {PROFILES}/; known profiles: {known}")
    base = yaml.safe_load(params_path.read_text()) or {}
    override = yaml.safe_load(profile_path.read_text()) or {}
    merged = deep_merge(base, override)
    parse_params(merged, f"{params_path} + {profile_path}")
    with atomic_file(params_path) as tmp:
        tmp.write_text(
            f"# {params_path} with profile '{name}' applied (in2 profile {name})\n"
            + yaml.safe_dump(merged, sort_keys=False)
        )
    return sorted(_changed(base, merged))


def _changed(old: dict, new: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in new.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            keys |= _changed(old[key], value, f"{name}.")
        elif old.get(key) != value:
            keys.add(name)
    return keys


def show_example(example_id: str, data_dir: Path = Path("data")) -> str:
    """Human-readable rendering of one example, decoded on demand from segment ids.

    Every segment is printed with its slot and token span; gold segments are marked, and the
    header says where each one sits (relative position 0 = start of the context, 1 = end).
    """
    import pyarrow.parquet as pq

    from in2 import layout
    from in2.data.segments import SegmentStore
    from in2.model import load_tokenizer

    for split in ("train", "val"):
        path = data_dir / "in2" / f"{split}.parquet"
        if not path.is_file():
            raise InputError(f"{path} is missing; run `dvc repro synthesize` to build it")
        match = pq.read_table(path, filters=[("example_id", "==", example_id)]).to_pylist()
        if match:
            row = match[0]
            break
    else:
        raise InputError(f"no example '{example_id}' in {data_dir / 'in2'}/{{train,val}}.parquet")
    tokenizer = load_tokenizer(layout.BASE_MODEL)
    store = SegmentStore.open(data_dir / "segments")
    context = row["context_segments"]
    lengths = store.lengths[context] if context else []
    first_token = [int(sum(lengths[:i])) for i in range(len(context))]
    gold = dict(zip(row["gold_slots"], row["gold_segments"], strict=True))
    lines = [
        f"{example_id} [{split}] kind={row['kind']} source_doc={row['source_doc']} "
        f"context: {len(context)} segments, {row['n_tokens']} tokens",
    ]
    for slot, seg in sorted(gold.items()):
        lines.append(
            f"gold segment {seg} at slot {slot} of {len(context)}: tokens "
            f"{first_token[slot]}-{first_token[slot] + lengths[slot] - 1}, relative position "
            f"{(first_token[slot] + lengths[slot] / 2) / row['n_tokens']:.2f}"
        )
    for slot, seg in enumerate(context):
        mark = ">>> GOLD" if slot in gold else "   filler"
        text = tokenizer.decode(store.ids(int(seg)).tolist())
        lines.append(f"{mark} slot {slot} seg {seg} @{first_token[slot]}: {text}")
    lines += [f"QUESTION: {row['question']}", f"ANSWER: {row['answer']}"]
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def score_official_cmd(args: argparse.Namespace) -> str:
    """Score one task's released predictions, write `args.out`; returns a one-line summary."""
    from in2.probing.metrics import summary
    from in2.probing.official import score_official

    curve = score_official(
        args.task, args.probes, args.predictions, args.skip, args.bin_size, args.binning
    )
    write_json(args.out, summary({args.task: curve}))
    return (
        f"{args.out}: {args.task} Avg {curve.avg:.4f}, Gap {curve.gap:.4f} "
        f"over {curve.n_queries} queries in bins of {curve.bin_size} ({curve.binning} binning)"
    )


def audit_cmd(args: argparse.Namespace) -> str:
    """`in2 audit run|data`: the report as text, or as JSON with --json."""
    from in2.lineage import audit
    from in2.lineage.tracking import repo_root

    root = repo_root()
    if args.audit == "run":
        report = audit.audit_run(args.run_id, root)
        return json.dumps(report, indent=2) if args.json else audit.format_run(report)
    report = audit.audit_data(root)
    return json.dumps(report, indent=2) if args.json else audit.format_data(report)


def deps_cmd(args: argparse.Namespace) -> int:
    """`in2 deps [--write]`: report (or rewrite) the stages whose code deps in dvc.yaml differ
    from what their scripts import; returns the exit code (1: they differ, not rewritten)."""
    from in2.lineage import code_deps
    from in2.lineage.tracking import repo_root

    root = repo_root()
    if args.write:
        changed = code_deps.write_code_deps(root)
        print(f"dvc.yaml: code deps rewritten for {', '.join(changed) or 'no stage'}")
        return 0
    differences = code_deps.differences(root)
    for stage, (missing, extra) in differences.items():
        print(f"{stage}: missing {missing}, listed but not run {extra}")
    if differences:
        print("run `in2 deps --write` to make dvc.yaml follow the code", file=sys.stderr)
        return 1
    print("dvc.yaml: every stage's code deps are what its script imports")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="in2", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="merge a profile from configs/profiles/ into params.yaml")
    p.add_argument("name")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    s = sub.add_parser("show", help="decode one IN2 example")
    s.add_argument("example_id")
    o = sub.add_parser(
        "score-official",
        help="score a prediction file of the paper's VaLProbing-32K release with our metrics",
    )
    o.add_argument("--task", required=True, choices=PROBE_TASKS.names())
    o.add_argument("--probes", type=Path, required=True, help="e.g. document_bi_32k.jsonl")
    o.add_argument("--predictions", type=Path, required=True, help="sample_<task file>.jsonl")
    o.add_argument("--skip", type=Path, help="the task's <stem>_skip_list.json")
    o.add_argument("--bin-size", type=_positive_int, default=50)
    o.add_argument(
        "--binning",
        choices=["paper", "all"],
        default="paper",
        help="paper (default): plot.py's arithmetic, each bin's last position left out; "
        "all: every position",
    )
    o.add_argument("--out", type=Path, required=True, help="scores.json to write")
    a = sub.add_parser("audit", help="trace a run to its data; list the dataset versions")
    audit_sub = a.add_subparsers(dest="audit", required=True)
    ar = audit_sub.add_parser("run", help="the lineage of one MLflow run, checked")
    ar.add_argument("run_id")
    ar.add_argument("--json", action="store_true", help="print the report as JSON")
    ad = audit_sub.add_parser("data", help="data/in2 versions across git and DVC experiments")
    ad.add_argument("--json", action="store_true", help="print the report as JSON")
    d = sub.add_parser("deps", help="check the code deps of dvc.yaml against the stages' imports")
    d.add_argument("--write", action="store_true", help="rewrite them in dvc.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "profile":
            changed = apply_profile(args.name, args.params)
            print(f"{args.params}: profile '{args.name}' applied; changed: {', '.join(changed)}")
        elif args.command == "show":
            print(show_example(args.example_id))
        elif args.command == "audit":
            print(audit_cmd(args))
        elif args.command == "deps":
            sys.exit(deps_cmd(args))
        else:
            print(score_official_cmd(args))
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
