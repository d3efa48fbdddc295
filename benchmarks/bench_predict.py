"""Prediction speed: whole pipeline (heights, resampling, normalisation, network, peaks → molecules).

    python benchmarks/bench_predict.py [--model FILE] [--threads 2] [--base 8 12 16] [--encoder 2d] [--head cells]
                                       [--o-check-views 8] [--device cuda]

Times `predict_atoms` (whole molecules, the default) on the bundled 10 × 128 × 128 sample
stack, 10 runs after one warm-up, on the CPU (or ``--device``: the networks and checks there, the rest on
the CPU), and the same with ``molecules=False`` (loose
atoms) to show what the assembly adds. Without --model, untrained networks of the given
widths are timed (the speed does not depend on the weights). Last, the CPU time (not wall
time, so it holds on a busy machine) of the maps → atoms step alone, peaks only and peaks →
molecules, median of 20.
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
from hydrafm.predict.predictor import iter_predict_maps, predict_atoms, resolve_model, resolve_o_check
from hydrafm.progress import drive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--flips", action="store_true", help="average over the four mirror images (default: as the model recommends)")
    ap.add_argument("--encoder", default="3d", choices=["3d", "2d"], help="untrained networks: encoder")
    ap.add_argument("--head", default="maps", choices=["maps", "cells"], help="untrained networks: head")
    ap.add_argument("--denoise", nargs="?", const=True, default=None, metavar="FILE",
                    help="run the shipped denoiser (or FILE) first (default: as the model's card says)")
    ap.add_argument("--no-depth", dest="depth", action="store_false",
                    help="leave out the depth network (every O at z = 0); default: as Predict does")
    ap.add_argument("--o-check-views", type=int, choices=(1, 4, 8),
                    help="the model's O check reading this many views (hydrafm predict --o-check-views)")
    ap.add_argument("--device", default="cpu", help="torch device of the networks and checks (cpu, cuda, mps)")
    args = ap.parse_args()
    device = args.device
    depth = None if args.depth else False
    flips = args.flips or None  # None: as the model records
    torch.set_num_threads(args.threads)
    stack = load_stack(sample_path())
    models = []
    if args.model:
        models.append((args.model, resolve_model(args.model, device)))
    else:
        for b in args.base:
            cfg = UNetConfig(base_channels=b, encoder=args.encoder, head=args.head)
            models.append((f"base {b}", (StructureUNet(cfg).to(device).eval(), ModelInfo(config=cfg))))
    print(f"stack {stack.shape}, torch {torch.__version__}, {args.threads} threads, device {device}"
          + (", four mirror images" if args.flips else "") + (", denoised first" if args.denoise else "")
          + ("" if args.depth else ", no depth network"))
    for name, model in models:
        n_par = sum(p.numel() for p in model[0].parameters())
        # None: as the model's card says (a ValueError when views are asked of a model without the check)
        o_check = (resolve_o_check(None, model[1], views=args.o_check_views, device=device)
                   if args.o_check_views else None)
        for molecules in (True, False):
            atoms = predict_atoms(stack, model, device, threshold=0.5, molecules=molecules, flips=flips,
                                  denoise=args.denoise, depth=depth, o_check=o_check)
            times, cpu_times = [], []
            for _ in range(10):
                t, c = time.perf_counter(), time.process_time()
                predict_atoms(stack, model, device, threshold=0.5, molecules=molecules, flips=flips,
                              denoise=args.denoise, depth=depth, o_check=o_check)
                times.append(time.perf_counter() - t)
                cpu_times.append(time.process_time() - c)
            what = f"{(atoms.arrays['label'] == 'O').sum():3d} waters" if molecules else "loose atoms"
            print(f"{name:>10s}  {n_par:>9,d} params  {what:>11s}  {len(atoms):4d} atoms  "
                  f"median {statistics.median(times):.3f} s  best {min(times):.3f} s  "
                  f"CPU median {statistics.median(cpu_times):.3f} s")
        pred = drive(iter_predict_maps(stack, model, device, flips=flips), show=False)
        cpu = {}
        for molecules in (False, True):
            ts = []
            for _ in range(20):
                t = time.process_time()
                pred.atoms(0.5, molecules, o_check=o_check if molecules else None)
                ts.append(time.process_time() - t)
            cpu[molecules] = statistics.median(ts)
        print(f"{name:>10s}  maps → atoms, CPU: peaks {1e3 * cpu[False]:.1f} ms, peaks → molecules "
              f"{1e3 * cpu[True]:.1f} ms")


if __name__ == "__main__":
    main()
