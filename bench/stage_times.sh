#!/usr/bin/env bash
# Wall time of each stage of the pipeline, in pipeline order, then a check that a second
# `dvc repro` has nothing to do. Run in a fresh clone after `make setup`:
#   bash bench/stage_times.sh
# The README's timing table was produced this way (2-core CPU, default params.yaml).
set -euo pipefail
export PATH=$PWD/.venv/bin:$PATH HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # as the Makefile: no spinning on a shared CPU
start=$(date +%s.%N)
for s in base_model corpus segment probe_data qa synthesize validate train probe@base probe@in2 report; do
  t0=$(date +%s.%N)
  dvc repro -s "$s" > "/tmp/in2_stage_${s}.log" 2>&1 || { echo "$s failed: /tmp/in2_stage_${s}.log"; exit 1; }
  printf "%-12s %6.1f s\n" "$s" "$(echo "$(date +%s.%N) - $t0" | bc)"
done
printf "%-12s %6.1f s\n" total "$(echo "$(date +%s.%N) - $start" | bc)"
dvc repro | tail -1
