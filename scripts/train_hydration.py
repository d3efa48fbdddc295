"""Train the density networks on the MD teacher campaign and score them on the held-out runs.

    python scripts/train_hydration.py /path/to/campaign --out src/hydrafm/models/weights/hydration-calcite.pt \\
        --metrics docs/models/hydration-calcite.json [--steps 600] [--base 4] [--attention] [--threads 2]

Trains on the campaign's ``train`` runs (calcite (10-14), pristine and with vacancies),
scores on its ``test`` runs (calcite with unseen vacancies, aragonite (010) and (001),
vaterite (010)), which the network never sees, and writes the checkpoint with the
scores in its provenance, plus a JSON of the scores. The MD noise of each test density
is estimated from two halves of its run (its snapshots at half and full length).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def half_noise(folder: Path, name: str, info) -> float | None:
    """Counting noise (RMS, Å⁻³) of a run's target density, from its snapshot at about half length.

    Computed on the network grid after the same resampling and folding as the target
    (both linear), so it is the noise of exactly what the network is scored against.
    """
    from hydrafm.hydration.teacher import load_example, snapshots, voxel_noise

    snaps = snapshots(folder, name)
    if len(snaps) < 2:
        return None
    full = max(snaps)
    half = min((t for t in snaps if t < full), key=lambda t: abs(t - full / 2))
    a, b = load_example(snaps[half], info), load_example(snaps[full], info)
    z = b.grid.z()
    return voxel_noise(a.density, b.density, half / full, (z >= -1) & (z <= 16))


def main() -> None:
    from hydrafm.hydration.density import DensityModelInfo, save_density_model
    from hydrafm.hydration.model import DensityConfig
    from hydrafm.hydration.teacher import load_examples
    from hydrafm.hydration.train import EpochStats, score, train_density
    from hydrafm.progress import drive

    ap = argparse.ArgumentParser()
    ap.add_argument("campaign", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--base", type=int, default=4)
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config = DensityConfig(base_channels=args.base, attention=args.attention)
    info = DensityModelInfo(config=config)
    examples = load_examples(args.campaign, info)
    train = [e for e in examples if e.split == "train"]
    test = [e for e in examples if e.split == "test"]
    print(f"train: {[e.name for e in train]}\ntest: {[e.name for e in test]}", file=sys.stderr)
    t0 = time.perf_counter()
    net = drive(train_density(train, config, steps=args.steps, lr=args.lr, seed=args.seed),
                on_record=lambda r: print(json.dumps(vars(r)), file=sys.stderr) if isinstance(r, EpochStats) else None)
    seconds = time.perf_counter() - t0
    scores = []
    for e in test + train:
        s = score(net, e)
        noise = half_noise(args.campaign, e.name, info)
        s["md_noise_rms"] = noise
        if noise is not None:  # independent errors add in quadrature: the network's RMSE against the truth
            s["rmse_vs_truth_est"] = float(np.sqrt(max(s["rmse"] ** 2 - noise**2, 0.0)))
        scores.append(s)
        print(json.dumps(s))
    info.provenance = {
        "data": f"MD teacher campaign ({', '.join(f'{e.name} {e.ps:g} ps' for e in examples)}), "
                "scripts/hydration_md.py campaign",
        "command": " ".join(["python"] + sys.argv),
        "train": [e.name for e in train], "test": [e.name for e in test],
        "steps": args.steps, "train_seconds": round(seconds, 1), "scores": scores,
    }
    save_density_model(args.out, net, info)
    if args.metrics:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(info.provenance, indent=1))


if __name__ == "__main__":
    main()
