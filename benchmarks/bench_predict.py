"""Prediction speed: whole pipeline (heights, resampling, normalisation, network, peaks → atoms).

    python benchmarks/bench_predict.py [--model FILE] [--threads 2] [--base 8 12 16]

Times `predict_atoms` on the bundled 10 × 128 × 128 sample stack, 10 runs after one
warm-up, on the CPU. Without --model, untrained networks of the given widths are timed
(the speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hydrafm import load_stack
from hydrafm._sample_data import sample_path
from hydrafm.models.checkpoint import ModelInfo
from hydrafm.models.unet import StructureUNet, UNetConfig
from hydrafm.predict.predictor import predict_atoms, resolve_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", type=int, nargs="+", default=[8, 12, 16])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stack = load_stack(sample_path())
    models = []
    if args.model:
        models.append((args.model, resolve_model(args.model)))
    else:
        for b in args.base:
            cfg = UNetConfig(base_channels=b)
            models.append((f"base {b}", (StructureUNet(cfg).eval(), ModelInfo(config=cfg))))
    print(f"stack {stack.shape}, torch {torch.__version__}, {args.threads} threads")
    for name, model in models:
        n_par = sum(p.numel() for p in model[0].parameters())
        predict_atoms(stack, model, threshold=0.5)
        times = []
        for _ in range(10):
            t = time.perf_counter()
            predict_atoms(stack, model, threshold=0.5)
            times.append(time.perf_counter() - t)
        print(f"{name:>10s}  {n_par:>9,d} params  median {statistics.median(times):.3f} s  best {min(times):.3f} s")


if __name__ == "__main__":
    main()
