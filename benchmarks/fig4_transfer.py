"""Tang et al. Fig. 4 as a benchmark: accuracy vs training-set size, with and without pretraining.

    python benchmarks/fig4_transfer.py TRAIN_DATASET VAL_DATASET --pretrained water.pt \\
        [--sizes 200 500 1000 1500] [--epochs 30] [--out results/fig4]

For every size N, trains one model from scratch and one fine-tuned from the
pretrained checkpoint on the first N samples of TRAIN_DATASET (hydrates made from
pool structures 0:2000), scores both on VAL_DATASET (hydrates from the disjoint
structures 2000:2400), and writes OUT.json (all numbers) and OUT.png (F1 of Na, O, H
vs N). Checkpoints go to OUT/ and are resumed if the run is interrupted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from hydrafm.models.unet import UNetConfig
    from hydrafm.predict.evaluate import evaluate_dataset
    from hydrafm.progress import drive
    from hydrafm.simulate.dataset import AFMDataset
    from hydrafm.training.train import EpochStats, TrainConfig, pick_device, train

    ap = argparse.ArgumentParser()
    ap.add_argument("train_dataset", type=Path)
    ap.add_argument("val_dataset", type=Path)
    ap.add_argument("--pretrained", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000, 1500])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fig4"))
    args = ap.parse_args()
    tr, va = AFMDataset(args.train_dataset), AFMDataset(args.val_dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(epochs=args.epochs, crop=args.crop or None, device=args.device)
    results = []
    for n in args.sizes:
        if n > len(tr):
            raise SystemExit(f"{args.train_dataset} has {len(tr)} samples, fewer than {n}")
        for mode in ("scratch", "pretrained"):
            ckpt = args.out / f"{mode}_{n}.pt"
            init = args.pretrained if mode == "pretrained" else None
            gen = train(tr, ckpt, cfg, UNetConfig(base_channels=args.base_channels), init_from=init,
                        train_indices=np.arange(n), val_dataset=va)
            for rec in gen:
                if isinstance(rec, EpochStats):
                    print(f"N={n} {mode} epoch {rec.epoch}: val {rec.val_loss:.5f}", flush=True)
            scores = drive(evaluate_dataset(va, ckpt, device=pick_device(args.device)))
            results.append({"n": n, "mode": mode, **scores.summary()})
            print(json.dumps(results[-1]), flush=True)
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), sharey=True)
    for ax, group in zip(axes, ("Na", "O", "H")):
        for mode, style in (("scratch", "o--"), ("pretrained", "s-")):
            pts = [(r["n"], r[group]["f1"]) for r in results if r["mode"] == mode and group in r]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{mode}")
        ax.set(title=f"{group} F1 on held-out hydrates", xlabel="training hydrates")
        ax.legend()
    axes[0].set_ylabel("F1")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=80)
    print(args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
