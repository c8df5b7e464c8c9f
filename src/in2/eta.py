"""How long `make run` will take on this machine, said before it starts (its first line).

Runs before set-up, so it uses the standard library only: it reads the CPU's instruction sets
from /proc/cpuinfo and scales nothing it cannot know. The figures are the stage times that
`bench/stage_times.sh` measured on a 2-core machine (bench/stage_times.json: under the AVX2
emulation, and natively on AVX-512 where recorded); the estimate is the reading of this CPU's
kind, else the AVX2 one, so a CPU slower per core than the one measured takes longer (the file
records each reading's fp32 matmul rate).

    python -m in2.eta        # also `make run`'s first line
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TIMES = Path("bench/stage_times.json")
SETUP_STAMP = Path(".venv/.installed")


def cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """`avx512` where the CPU has AVX-512F, else `avx2` (also where /proc/cpuinfo is missing)."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "avx2"
    return "avx512" if "avx512f" in flags else "avx2"


def estimate(times: dict, kind: str, cores: int, set_up: bool) -> str:
    """The one-line estimate for a CPU of `kind` with `cores` cores."""
    measured_kind = kind if kind in times else "avx2"  # the slower reading where there is no other
    reading = times[measured_kind]
    pipeline = sum(reading["stages"].values())
    total = pipeline + (reading["setup_seconds"] if set_up else 0)
    parts = [f"dvc repro ~{pipeline / 60:.0f} min"]
    if set_up:
        parts.insert(0, f"set-up ~{reading['setup_seconds'] / 60:.0f} min (once)")
    note = "" if cores == reading["cores"] else f"; measured on {reading['cores']} cores"
    if measured_kind != kind:
        note += f"; measured under {measured_kind.upper()}, so likely less here"
    return (
        f"make run: about {total / 60:.0f} min on this {kind.upper()} CPU ({' + '.join(parts)}; "
        f"as bench/stage_times.sh measured {reading['measured']}{note}; stages already up to "
        "date are skipped, a slower core takes longer)"
    )


def main() -> None:
    times = json.loads(TIMES.read_text())
    print(estimate(times, cpu_kind(), os.cpu_count() or 1, not SETUP_STAMP.exists()), flush=True)


if __name__ == "__main__":
    main()
