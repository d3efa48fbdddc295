"""Tang et al. Fig. 4 as a benchmark: accuracy vs training-set size, with and without pretraining.

    python benchmarks/fig4_transfer.py TRAIN_DATASET VAL_DATASET --pretrained water.pt \\
        [--sizes 200 500 1000 1500] [--modes scratch pretrained] [--steps 600] [--out results/fig4]

For every size N, trains one model from scratch and one fine-tuned from the
pretrained checkpoint on the first N samples of TRAIN_DATASET (hydrates made from
pool structures 0:2000). Every run gets the same compute: ``--steps`` optimizer
steps (epochs = steps × batch / N). The best epoch is picked on the first
``--select`` samples of VAL_DATASET (hydrates from the disjoint structures
2000:2400) and scored on the next ``--n-eval`` samples, which no run sees before.
Both modes train the pretrained model's architecture with its label depth and normalisation
(``training.finetune.base_recipe``), as ``hydrafm finetune`` does; scores count the
atoms in the top ``--top`` Å (1.5, as the model cards).
Each finished run is kept as OUT/<mode>_<N>.json (and its checkpoint), so several
processes can share the work and an interrupted benchmark resumes; OUT.json and
OUT.png (F1 of O, Na, K, H vs N) are rewritten from every finished run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from hydrafm.models.checkpoint import load_checkpoint
    from hydrafm.models.registry import model_path
    from hydrafm.predict.evaluate import evaluate_dataset
    from hydrafm.progress import drive
    from hydrafm.simulate.dataset import AFMDataset
    from hydrafm.training.finetune import base_recipe
    from hydrafm.training.train import EpochStats, TrainConfig, pick_device, train

    ap = argparse.ArgumentParser()
    ap.add_argument("train_dataset", type=Path)
    ap.add_argument("val_dataset", type=Path)
    ap.add_argument("--pretrained", required=True, help="model name (e.g. water) or checkpoint file")
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000, 1500])
    ap.add_argument("--modes", nargs="+", default=["scratch", "pretrained"], choices=["scratch", "pretrained"])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--select", type=int, default=128, help="validation samples used to pick the best epoch")
    ap.add_argument("--n-eval", type=int, default=256, help="held-out samples scored")
    ap.add_argument("--top", type=float, default=1.5,
                    help="score the true atoms within this many Å of the highest (the model cards' 1.5)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fig4"))
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tr, va = AFMDataset(args.train_dataset), AFMDataset(args.val_dataset)
    if len(va) <= args.select:
        raise SystemExit(f"{args.val_dataset} has {len(va)} samples; need more than --select {args.select}")
    select = np.arange(args.select)
    held_out = np.arange(args.select, min(len(va), args.select + args.n_eval))
    args.out.mkdir(parents=True, exist_ok=True)
    # both modes learn what the pretrained model learnt (its label depth and normalisation) with its
    # architecture, so that the comparison is of the starting weights alone and the fine-tune is not taught
    # atoms the scan cannot see
    base_info = load_checkpoint(model_path(args.pretrained))[1]
    for n in args.sizes:
        if n > len(tr):
            raise SystemExit(f"{args.train_dataset} has {len(tr)} samples, fewer than {n}")
        for mode in args.modes:
            done = args.out / f"{mode}_{n}.json"
            if done.exists():
                continue
            ckpt = args.out / f"{mode}_{n}.pt"
            epochs = max(1, int(np.ceil(args.steps * args.batch_size / n)))
            cfg = base_recipe(TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                                          crop=args.crop or None, device=args.device,
                                          patience=max(6, epochs // 3)), base_info)
            init = model_path(args.pretrained) if mode == "pretrained" else None
            gen = train(tr, ckpt, cfg, base_info.config, init_from=init,
                        train_indices=np.arange(n), val_dataset=va, val_indices=select)
            for rec in gen:
                if isinstance(rec, EpochStats):
                    print(f"N={n} {mode} epoch {rec.epoch}/{epochs}: val {rec.val_loss:.5f}", flush=True)
            scores = drive(evaluate_dataset(va, ckpt, held_out, device=pick_device(args.device), top=args.top))
            result = {"n": n, "mode": mode, "steps": args.steps, "epochs": epochs,
                      "label_depth": cfg.label_depth, "top": args.top, **scores.summary()}
            done.write_text(json.dumps(result))
            print(json.dumps(result), flush=True)
    results = sorted((json.loads(p.read_text()) for p in args.out.glob("*_*.json")),
                     key=lambda r: (r["mode"], r["n"]))
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.5), sharey=True)
    for ax, group in zip(axes, ("O", "Na", "K", "H")):
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
