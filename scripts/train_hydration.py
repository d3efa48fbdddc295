"""Train the density networks on the MD teacher campaign and score them on the held-out runs.

    python scripts/train_hydration.py data/hydration-md --out src/hydrafm/models/weights/hydration-calcite.pt \\
        --metrics docs/models/hydration-calcite.json [--steps 450] [--base 4] [--gate] [--attention] \\
        [--train calcite-104_v0_s0 ...] [--init hydration-calcite] [--checkpoint run.state.pt] [--threads 1] \\
        [--profile-weight 10]

Trains on the ``--train`` runs (default: calcite (10-14) pristine and with 1 and 2 vacancy
pairs, and aragonite (010), the paper's calcite + aragonite network) and scores on every
other run of the campaign (calcite with unseen vacancies, aragonite (001), vaterite (010)),
which the network never sees. Every MD density is folded over the exact lateral
symmetries of its slab (repeats, glide and mirror planes; ``teacher.load_example``). The
MD noise of each scored density is estimated from two halves of its run (its snapshots at
half and full length), after the same resampling and folding. ``--checkpoint`` saves the
training state every 25 steps; the same command resumes from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

#: the paper's calcite + aragonite training set (Ranawat et al. 2021), from our campaign
TRAIN = ("calcite-104_v0_s0", "calcite-104_v1_s1", "calcite-104_v2_s2", "aragonite-010_v0_s0")


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
    from hydrafm.hydration.density import DensityModelInfo, load_density_model, save_density_model
    from hydrafm.hydration.model import DensityConfig
    from hydrafm.hydration.surfaces import lateral_symmetries
    from hydrafm.hydration.teacher import load_examples
    from hydrafm.hydration.train import EpochStats, score, train_density
    from hydrafm.progress import drive

    ap = argparse.ArgumentParser()
    ap.add_argument("campaign", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path)
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--base", type=int, default=4)
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--gate", action="store_true", help="exclusion gate (hard zeros in and just above the slab)")
    ap.add_argument("--train", nargs="+", default=list(TRAIN), help="run names to train on; the rest are tests")
    ap.add_argument("--init", help="start from this density model's weights (a name or a file)")
    ap.add_argument("--checkpoint", type=Path, help="training state, saved every 25 steps and resumed")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--profile-weight", type=float, default=0.0,
                    help="weight of the rho(z) profile MSE next to the voxels' MSE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    config = DensityConfig(base_channels=args.base, attention=args.attention, gate=args.gate)
    info = DensityModelInfo(config=config)
    init = load_density_model(args.init)[0].state_dict() if args.init else None
    examples = load_examples(args.campaign, info)
    for e in examples:
        e.split = "train" if e.name in args.train else "test"
    train = [e for e in examples if e.split == "train"]
    test = [e for e in examples if e.split == "test"]
    folds = {e.name: len(lateral_symmetries(e.slab)) for e in examples}
    print(f"train: {[e.name for e in train]}\ntest: {[e.name for e in test]}\nsymmetry folds: {folds}",
          file=sys.stderr)
    last: list[EpochStats] = []

    def log(rec) -> None:
        if isinstance(rec, EpochStats):
            last[:] = [rec]
            print(json.dumps(vars(rec)), file=sys.stderr, flush=True)

    net = drive(train_density(train, config, steps=args.steps, lr=args.lr, seed=args.seed, init=init,
                              checkpoint=args.checkpoint, profile_weight=args.profile_weight), on_record=log)
    seconds = last[0].seconds if last else 0.0  # over all resumed sessions
    scores = []
    for e in test + train:
        s = score(net, e)
        s["symmetry_fold"] = folds[e.name]
        noise = half_noise(args.campaign, e.name, info)
        s["md_noise_rms"] = noise
        if noise is not None:  # independent errors add in quadrature: the network's RMSE against the truth
            s["rmse_vs_truth_est"] = float(np.sqrt(max(s["rmse"] ** 2 - noise**2, 0.0)))
        scores.append(s)
        print(json.dumps(s), flush=True)
    if net.gate is not None:
        r, w = net.gate.radii_widths()
        gate = {"radius_A": dict(zip(("C", "O", "Ca"), np.round(r.detach().numpy(), 3).tolist())),
                "width_A": dict(zip(("C", "O", "Ca"), np.round(w.detach().numpy(), 3).tolist()))}
        print(json.dumps(gate), flush=True)
    else:
        gate = None
    info.provenance = {
        "data": f"MD teacher campaign ({', '.join(f'{e.name} {e.ps:g} ps' for e in examples)}), "
                "scripts/hydration_md.py campaign; densities folded over the slabs' exact lateral symmetries",
        "command": " ".join(["python"] + sys.argv),
        "init": args.init, "train": [e.name for e in train], "test": [e.name for e in test],
        "steps": args.steps, "profile_weight": args.profile_weight, "threads": args.threads,
        "train_seconds": round(seconds, 1), "gate": gate,
        "scores": scores,
    }
    save_density_model(args.out, net, info)
    if args.metrics:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(info.provenance, indent=1))


if __name__ == "__main__":
    main()
