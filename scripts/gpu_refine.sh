#!/usr/bin/env bash
# Refine timings and accuracy on one GPU, on a bare node (Python, torch, numpy, scipy, scikit-image; no
# network), from a checkout carrying .gpu-wheels/ (git-ignored; make it here with
#   pip download ase==3.29.0 --no-deps -d .gpu-wheels/
# and name it in the device tool's `carry`):
#
#   bash scripts/gpu_refine.sh OUT_DIR
#
# 1. perturbed held-out ice layers, the default schedule (issue 15: <= 2 s per stack on a GPU);
# 2. the same with --hbond-turns and 150 simulations (the CPU cannot afford this; docs/refine.md);
# 3. the shipped water model's prediction of held-out ice layers, refined.
# Each writes OUT_DIR/<name>.jsonl (one JSON line per window with seconds, then a summary).
# DEVICE=cpu N=1 runs it at tiny scale to check the script before spending GPU time.
set -euo pipefail
out=${1:?give an output folder}
device=${DEVICE:-cuda}
n=${N:-3}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/gpu_site.sh"  # ase and src/ on PYTHONPATH
bench="$here/benchmarks/bench_refine.py"
python "$bench" perturbed -n "$n" --pool ice --device "$device" --threads 2 | tee "$out/perturbed.jsonl"
python "$bench" perturbed -n "$n" --pool ice --device "$device" --threads 2 --hbond-turns --steps 150 \
  | tee "$out/perturbed_hbond150.jsonl"
python "$bench" predict -n "$n" --pool ice --device "$device" --threads 2 | tee "$out/predict_ice.jsonl"
