"""Fine-tuning benchmark: `water` → Na hydrates on N simulated samples, against training from scratch.

    python benchmarks/bench_finetune.py TRAIN_DATASET VAL_DATASET --base water [-n 500] [--epochs 8] \\
        [--threads 2] [--out benchmarks/results/finetune.json]

Both runs use the same data (the first N samples of TRAIN_DATASET, hydrates from pool
structures 0:2000), the same settings and the same number of epochs; the best epoch is
picked on the first --select samples of VAL_DATASET (structures 2000:2400) and both
are scored on the next --n-eval samples, which neither run saw. The fine-tuned run
is the training `hydrafm finetune` and the Fine-tune panel run (train() from the base
model's weights); wall time covers training and per-epoch validation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from hydrafm.models.checkpoint import load_checkpoint
    from hydrafm.models.registry import model_path
    from hydrafm.predict.evaluate import evaluate_dataset
    from hydrafm.progress import drive
    from hydrafm.simulate.dataset import AFMDataset
    from hydrafm.training.finetune import base_recipe
    from hydrafm.training.train import TrainConfig, train

    ap = argparse.ArgumentParser()
    ap.add_argument("train_dataset", type=Path)
    ap.add_argument("val_dataset", type=Path)
    ap.add_argument("--base", default="water")
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--select", type=int, default=48)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tr, va = AFMDataset(args.train_dataset), AFMDataset(args.val_dataset)
    select = np.arange(args.select)
    held_out = np.arange(args.select, min(len(va), args.select + args.n_eval))
    base = model_path(args.base)
    _, info, _ = load_checkpoint(base)
    # the labels and normalisation `hydrafm finetune` uses (the base model's), for both runs
    cfg = base_recipe(TrainConfig(epochs=args.epochs, lr=args.lr, device="cpu", patience=args.epochs), info)
    work = args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in ("finetuned", "scratch"):
        ckpt = work / f"{mode}.pt"
        for p in (ckpt, ckpt.with_name(ckpt.stem + ".last.pt")):
            p.unlink(missing_ok=True)
        t0 = time.perf_counter()
        gen = train(tr, ckpt, cfg, info.config, init_from=base if mode == "finetuned" else None,
                    train_indices=np.arange(args.n), val_dataset=va, val_indices=select)
        drive(gen, show=False)
        wall = time.perf_counter() - t0
        scores = drive(evaluate_dataset(va, ckpt, held_out), show=False)
        results.append({"mode": mode, "n": args.n, "epochs": args.epochs, "threads": args.threads,
                        "wall_s": round(wall, 1), **scores.summary()})
        print(json.dumps(results[-1]), flush=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
