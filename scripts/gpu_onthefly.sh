#!/usr/bin/env bash
# From the shipped pools to a trained structure model on one GPU, on a bare node (Python, torch,
# numpy, scipy; no ase, napari, OpenCL or network), from a checkout:
#
#   bash scripts/gpu_onthefly.sh OUT_DIR [MINUTES] [POOLS]
#
# 1. engine throughput: 128 x 128 x 10 stacks simulated per second, batches of 64 (engine_speed.json);
#    where one training batch's time goes, stage by stage, with the relaxation's steps uncompiled and
#    compiled by torch.compile (stages_eager.json, stages_fused.json; benchmarks/bench_otf_stages.py);
#    training then uses the compiled steps if they simulate >= 10 % faster (printed: "fused: 1");
# 2. on-the-fly training for MINUTES (default 8): every batch simulated on the GPU (train.jsonl, one
#    JSON line per epoch with samples/s), the best checkpoint in OUT_DIR/water-otf.pt (copied there when
#    the script ends, also when it is stopped, and every 20 s). OUT_DIR gets 6 files: the device tool returns at most 8
#    (the caches and the resumable state stay in a temporary folder).
# Held-out F1 is then measured on any machine: hydrafm evaluate DATASET --model OUT_DIR/water-otf.pt
# DEVICE=cpu runs the same at tiny scale (SMALL=1) to check the script before spending GPU time.
# NOISE sets the largest white and 1/f training noise in frame std (default 0.15: on the CPU runs 0.25
# bought robustness but cost clean F1; docs/structure-network.md, the water card).
# INIT=CKPT starts from a checkpoint's weights (e.g. src/hydrafm/models/weights/water.pt: the shipped
# water, base 16) instead of from scratch; CHANNELS sets the width (default 16; must match INIT's).
# LR sets the first learning rate of the cosine decay (default 1e-3; 3e-4 suits a start from INIT).
# SIM_SHARE: the share of time spent simulating fresh stacks, the rest trains on replayed ones (default 0.5).
# POOL_WEIGHTS: how often each of POOLS is drawn (e.g. 2,1,1 for hydrates,ice,water; default equally).
# HEAD=cells trains the cell-grid head (docs/structure-network.md): from scratch, or with INIT a new cell head on
# the checkpoint's encoder.
# BENCH=0 skips step 1 (~2 minutes of device time): training then compiles the relaxation's steps, as
# measured faster on an H200 (docs/benchmarks.md), unless HYDRAFM_FUSED=0.
set -euo pipefail
out=${1:?give an output folder}
minutes=${2:-8}
pools=${3:-water,ice,hydrates}
device=${DEVICE:-cuda}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
# the best checkpoint reaches OUT every KEEP_EVERY s (default 20; copy, then rename) too: a run killed hard at the
# device tool's limit (no EXIT trap then) still returns its weights. keep() never fails: under `set -e` a failing
# copy (no checkpoint yet) would end the loop, and a failing command in the trap would end the script before its copy
keep() { if [ -f "$work/water-otf.pt" ]; then cp -f "$work/water-otf.pt" "$out/.water-otf.pt.part" \
  && mv -f "$out/.water-otf.pt.part" "$out/water-otf.pt" || true; fi; }
( while sleep "${KEEP_EVERY:-20}"; do keep; done ) &
copier=$!
trap 'kill $copier 2>/dev/null || true; keep' EXIT
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" HYDRAFM_CACHE="$work/cache"
if [ "${SMALL:-0}" = 1 ]; then n=4; batch=2; crop=32; steps=2; val=4; chans=${CHANNELS:-8}; else n=640; batch=64; crop=128; steps=50; val=256; chans=${CHANNELS:-16}; fi
init=()
if [ -n "${INIT:-}" ]; then init=(--init-from "$INIT"); fi
if [ -n "${HEAD:-}" ]; then init+=(--head "$HEAD"); fi
if [ -n "${POOL_WEIGHTS:-}" ]; then init+=(--pool-weights "$POOL_WEIGHTS"); fi
python - <<PY > "$out/device.json"
import json, torch, platform
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "python": platform.python_version()}))
PY
if [ "${BENCH:-1}" != 0 ]; then
  python "$here/benchmarks/bench_engine.py" speed --engine torch --device "$device" --batch "$batch" -n "$n" \
    > "$out/engine_speed.json"
  cat "$out/engine_speed.json"
  stages=("$here/benchmarks/bench_otf_stages.py" --device "$device" --batch "$batch" --crop "$crop" --repeats 3)
  HYDRAFM_FUSED=0 python "${stages[@]}" > "$out/stages_eager.json" && cat "$out/stages_eager.json"
  fused=0
  if HYDRAFM_FUSED=1 timeout "${COMPILE_TIMEOUT:-300}" python "${stages[@]}" > "$out/stages_fused.json"; then
    cat "$out/stages_fused.json"
    fused=$(python -c "import json,sys; e,f=(json.load(open(p))['engine_stacks_per_s'] for p in sys.argv[1:]); print(int(f >= 1.1 * e))" \
      "$out/stages_eager.json" "$out/stages_fused.json")
  fi
  echo "fused: $fused"
  export HYDRAFM_FUSED=$fused
fi
# the CPU's best choice (docs/structure-network.md): 2D encoder, cosine decay, replay, noise up to NOISE frame std
python -m hydrafm.cli train --on-the-fly -o "$work/water-otf.pt" --pools "$pools" --minutes "$minutes" \
  --device "$device" --batch-size "$batch" --crop "$crop" --steps-per-epoch "$steps" --val-size "$val" \
  --encoder 2d --base-channels "$chans" --lr "${LR:-1e-3}" --lr-final 3e-5 --sim-share "${SIM_SHARE:-0.5}" --noise "${NOISE:-0.15}" \
  --epochs 100000 --patience 100000 ${init[@]+"${init[@]}"} | tee "$out/train.jsonl"
