#!/usr/bin/env bash
# Wall time of each stage of the pipeline, in pipeline order, then a check that a second
# `dvc repro` has nothing to do. Run in a fresh clone after `make setup`:
#   bash bench/stage_times.sh [NAME]
# With NAME (avx512, avx2), the reading is also written to bench/stage_times.json under NAME,
# with the CPU capability torch sees, the thread count and the fp32 matmul rate, and `make run`'s
# first line (python -m in2.eta) estimates from it. The README's tables were produced this way
# (2-core CPU, default params.yaml), natively and under the AVX2 emulation:
#   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
#     bash bench/stage_times.sh avx2
set -euo pipefail
export PATH=$PWD/.venv/bin:$PATH HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # as the Makefile: no spinning on a shared CPU
name=${1:-}
times=$(mktemp)
start=$(date +%s.%N)
for s in base_model corpus segment probe_data qa synthesize validate train probe@base probe@in2 report; do
  t0=$(date +%s.%N)
  dvc repro -s "$s" > "/tmp/in2_stage_${s}.log" 2>&1 || { echo "$s failed: /tmp/in2_stage_${s}.log"; exit 1; }
  t=$(echo "$(date +%s.%N) - $t0" | bc)
  printf "%-12s %6.1f s\n" "$s" "$t"
  echo "$s $t" >> "$times"
done
printf "%-12s %6.1f s\n" total "$(echo "$(date +%s.%N) - $start" | bc)"
dvc repro | tail -1
[ -z "$name" ] && exit 0
python - "$name" "$times" "${SETUP_SECONDS:-0}" <<'PY'
import json, sys, time
from pathlib import Path
import torch
name, times, setup = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
runs = []
for _ in range(5):
    t = time.perf_counter(); a @ b; runs.append(time.perf_counter() - t)
path = Path("bench/stage_times.json")
readings = json.loads(path.read_text()) if path.is_file() else {}
readings[name] = {
    "measured": time.strftime("%Y-%m-%d"),
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "threads": torch.get_num_threads(),
    "cores": len(__import__("os").sched_getaffinity(0)),
    "matmul_fp32_gflops": round(2 * 2048**3 / sorted(runs)[2] / 1e9),
    "setup_seconds": setup,
    "stages": {line.split()[0]: round(float(line.split()[1]), 1) for line in times.read_text().splitlines()},
}
path.write_text(json.dumps(readings, indent=2) + "\n")
print(f"wrote {path} [{name}]")
PY
