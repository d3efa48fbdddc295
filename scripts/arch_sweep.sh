#!/usr/bin/env bash
# Equal-compute comparison of structure-network candidates (issue 14: held-out F1 per CPU-hour).
#
#   bash scripts/arch_sweep.sh OUT_DIR [MINUTES] [CANDIDATES]
#
# Each candidate trains on the fly (pools water, ice, hydrates; 64 px crops; batches of 16;
# replay buffer with half the time simulating) for MINUTES of its process's CPU time (default 15;
# pauses and other jobs on the machine do not count) on ONE CPU thread, one after the other: OUT_DIR/<name>.pt and OUT_DIR/<name>.jsonl. Then score them all on
# the held-out sets with the same threshold calibration:
#   HYDRAFM_COMPARE_OUT=OUT_DIR/compare.json python scripts/compare_heldout.py OUT_DIR/*.pt
# CANDIDATES: space-separated names from the table below (default: all).
set -euo pipefail
out=${1:?give an output folder}
minutes=${2:-15}
mkdir -p "$out"
declare -A args=(
  [2d-16]="--encoder 2d --base-channels 16 --lr 1e-3"
  [2d-16-cells]="--encoder 2d --base-channels 16 --lr 1e-3 --head cells --cell 4"
  [2d-32]="--encoder 2d --base-channels 32 --lr 1e-3"
  [3d-16]="--encoder 3d --base-channels 16 --lr 1e-3"
  [3d-16-from-water]="--init-from water --lr 3e-4"
)
for name in ${3:-2d-16 2d-32 3d-16 3d-16-from-water}; do
  OMP_NUM_THREADS=1 python -m hydrafm.cli train --on-the-fly -o "$out/$name.pt" --pools water,ice,hydrates \
    --cpu-minutes "$minutes" --crop 64 --batch-size 16 --steps-per-epoch 50 --val-size 96 --sim-share 0.5 \
    --epochs 100000 --patience 100000 --threads 1 ${args[$name]} | tee -a "$out/$name.jsonl"
done
