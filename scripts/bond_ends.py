"""Train and score the bond-end classifier (``hydrafm.models.bond_ends``; issue 14: the H-bond ends).

    python scripts/bond_ends.py crops DATASET [DATASET...] -o CROPS.npz [--jitter 0.15] [--seed 0]
    python scripts/bond_ends.py train CROPS.npz [CROPS.npz...] -o bond_ends.pt [--minutes 20] [--threads 2]
    python scripts/bond_ends.py accuracy MODEL.pt CROPS.npz
    python scripts/bond_ends.py score [MODEL.pt] --sets ice,water [--part cal|held|all] [--tau 0.2,0.3]
                                      [--model water] [--degraded]

``crops``: for every true level H (``H_flat``) in the top 1.5 Å of each stack of simulated datasets
(``hydrafm simulate``), the crop around its H-bond (donor O, and the O 2.2–3.4 Å away it points at
within ~37°), the ends in random order, the O moved ``--jitter`` Å RMS sideways as Predict's O would
be; label 1 when the first O donates. ``train``: AdamW on the crops (mirrored across the bond at
random), a tenth held back, for ``--minutes`` of CPU; ``-o`` keeps the epoch best on that tenth, ``-o``.last the
latest. ``--degraded`` (crops): that share of stacks degraded first as training degrades them.
``accuracy``: the share of crops it gets right, and of the confident ones (|p − 0.5| > 0.3).
``score``: Predict's molecules on held-out sets (``HYDRAFM_EVAL``, as ``scripts/compare_heldout.py``
makes them; cached maps) without and with the bond-end check, atoms in the top 1.5 Å, at each
``--tau``: O / H F1, H class, whole waters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def cmd_crops(a) -> None:
    from hydrafm.io.xyz import LABELS
    from hydrafm.models.bond_ends import bond_crops, level_h_bonds
    from hydrafm.simulate.dataset import AFMDataset
    from hydrafm.training.augment import Degradations, degrade

    rng = np.random.default_rng(a.seed)
    xs, ys = [], []
    n_degraded = 0
    for path in a.datasets:
        ds = AFMDataset(path)
        px = ds.settings.pixel_size
        for i in range(len(ds)):
            s = ds[i]
            labels = np.asarray(LABELS)[s.labels]
            bonds = level_h_bonds(s.positions, labels)
            if not bonds:
                continue
            stack = s.stack
            if a.degraded > 0 and rng.random() < a.degraded:  # training's degradations, the atoms kept in place
                x = torch.as_tensor(np.asarray(stack, np.float32))[None]
                stack = degrade(x, torch.zeros(1, 1, *x.shape[-2:]), rng, Degradations(), turn=False)[0][0].numpy()
                n_degraded += 1
            xy = s.positions[:, :2] + rng.normal(0, a.jitter / np.sqrt(2), (len(s.positions), 2))
            donor, acceptor = (np.array(v) for v in zip(*bonds))
            swap = rng.random(len(bonds)) < 0.5
            first = np.where(swap, acceptor, donor)
            second = np.where(swap, donor, acceptor)
            xs.append(bond_crops(stack, (px, px), (px / 2, px / 2), xy[first], xy[second]))
            ys.append((~swap).astype(np.float32))
    x, y = np.concatenate(xs), np.concatenate(ys)
    np.savez_compressed(a.out, x=x, y=y, datasets=np.array(a.datasets), jitter=a.jitter, degraded=a.degraded)
    print(json.dumps({"crops": len(y), "first_donates": round(float(y.mean()), 3), "degraded_stacks": n_degraded,
                      "out": a.out}))


def _noisy(x: torch.Tensor, level: float) -> torch.Tensor:
    """Crops with experiment-like noise (each up to ``level`` × the crop's std): white, smooth (a few Å across,
    like 1/f noise on this scale), a per-frame offset and contrast; z-scored again as Predict's crops are."""
    b, z = x.shape[:2]
    amp = torch.rand(b, 3, 1, 1, 1) * level
    k = torch.exp(-torch.arange(-6, 7, dtype=x.dtype) ** 2 / (2 * 3.0**2))
    k = k / k.sum()
    smooth = torch.randn(b * z, 1, x.shape[2] + 12, x.shape[3] + 12)
    smooth = torch.nn.functional.conv2d(smooth, k.view(1, 1, -1, 1))
    smooth = torch.nn.functional.conv2d(smooth, k.view(1, 1, 1, -1)).view(b, z, x.shape[2], x.shape[3])
    smooth = smooth / smooth.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    out = x * (1 + 0.1 * level * torch.randn(b, z, 1, 1)) + amp[:, 0] * torch.randn_like(x) + amp[:, 1] * smooth \
        + amp[:, 2] * torch.randn(b, z, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) / out.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def cmd_train(a) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from small_nets import cosine_lr, load_crops, start_from

    from hydrafm.models.bond_ends import BondEndInfo, BondEndNet, load_bond_ends, save_bond_ends

    torch.manual_seed(a.seed)
    parts, data, val, train = load_crops(a.crops, ("x", "y"), a.seed)
    x, y = data["x"], data["y"]
    info = BondEndInfo(n_heights=x.shape[1], tau=a.tau, provenance={
        "crops": [str(p) for p in a.crops], "datasets": sorted({str(d) for p in parts for d in p["datasets"]}),
        "command": " ".join(sys.argv), "threads": a.threads})
    net = BondEndNet(info)
    start_from(net, a.init, load_bond_ends)
    opt = torch.optim.AdamW(net.parameters(), a.lr, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0, c0, epoch, best = time.time(), time.process_time(), 0, -1.0
    budget = a.minutes * 60 * a.threads
    while time.process_time() - c0 < budget:
        net.train()
        for b in train[torch.randperm(len(train))].split(a.batch):
            if a.cosine:  # the learning rate falls to a tenth over the CPU budget
                cosine_lr(opt, a.lr, c0, budget)
            xb = x[b]
            mirror = torch.rand(len(b)) < 0.5  # across the bond: the same ends
            xb = torch.where(mirror[:, None, None, None], xb.flip(-1), xb)
            if a.noise > 0:
                xb = _noisy(xb, a.noise)
            opt.zero_grad()
            loss = loss_fn(net(xb), y[b])
            loss.backward()
            opt.step()
        epoch += 1
        net.eval()
        with torch.no_grad():
            acc = float(((net(x[val]) > 0).float() == y[val]).float().mean())
        net.info.provenance.update(epochs=epoch, samples=epoch * len(train), val_accuracy=round(acc, 4),
                                   cpu_minutes=round((time.process_time() - c0) / 60, 1))
        save_bond_ends(f"{a.out}.last", net)
        if acc > best:  # -o keeps the epoch best on the held-back tenth
            best = acc
            save_bond_ends(a.out, net)
        print(json.dumps({"epoch": epoch, "minutes": round((time.time() - t0) / 60, 2), "loss": round(loss.item(), 4),
                          "val_accuracy": round(acc, 4), "best": round(best, 4)}), flush=True)


def cmd_accuracy(a) -> None:
    from hydrafm.models.bond_ends import load_bond_ends

    net = load_bond_ends(a.model)
    z = np.load(a.crops)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.as_tensor(z["x"]))).numpy()
    y = z["y"]
    sure = np.abs(p - 0.5) > 0.3
    print(json.dumps({"crops": len(y), "accuracy": round(float(np.mean((p > 0.5) == y)), 4),
                      "confident_share": round(float(sure.mean()), 3),
                      "confident_accuracy": round(float(np.mean((p[sure] > 0.5) == y[sure])), 4)}))


def cmd_score(a) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from assembly_variants import held_out_scores

    from hydrafm.models.bond_ends import load_bond_ends, shipped_bond_ends_path

    net = load_bond_ends(a.model_file or shipped_bond_ends_path())
    taus = [float(v) for v in a.tau.split(",")]
    for key in a.sets.split(","):
        moved = {k: [0, 0, 0] for k in ["without"] + [f"tau {v:g}" for v in taus]}

        def way(tau: float | None, name: str, moved: dict = moved):
            def atoms_of(p):
                if tau is not None:
                    net.info.tau = tau
                atoms = p.atoms(None, True, bond_ends=net if tau is not None else False)
                said = atoms.info.get("bond_ends")
                if said:
                    v = [int(w) for w in said.replace(",", "").split() if w.isdigit()]
                    moved[name] = [m + w for m, w in zip(moved[name], v)]
                return atoms
            return atoms_of

        ways = {"without": way(None, "without"), **{f"tau {v:g}": way(v, f"tau {v:g}") for v in taus}}
        scores = held_out_scores(a.model, key, a.part, a.degraded, ways)
        out = {"set": key, "part": a.part, "degraded": a.degraded}
        for k, s in scores.items():
            m = s.summary()
            out[k] = {"O": m["O"]["f1"], "H": m["H"]["f1"], "class": m["H_orientation"],
                      "whole": m["whole_molecules"], "moved_dropped_checked": moved[k]}
        print(json.dumps(out), flush=True)


def main() -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from small_nets import add_train_options

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("crops")
    c.add_argument("datasets", nargs="+")
    c.add_argument("-o", "--out", required=True)
    c.add_argument("--jitter", type=float, default=0.15)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--degraded", type=float, default=0.0,
                   help="share of stacks degraded as training degrades them (hydrafm.training.augment) first")
    t = sub.add_parser("train")
    add_train_options(t, "crops", threads=2, tau=0.3, what="classifier")
    t.add_argument("--cosine", action="store_true", help="lr falls along a cosine to a tenth over the budget")
    t.add_argument("--noise", type=float, default=0.0,
                   help="experiment-like noise on the crops, each part up to this × the crop's std (0: none)")
    e = sub.add_parser("accuracy")
    e.add_argument("model")
    e.add_argument("crops")
    s = sub.add_parser("score")
    s.add_argument("model_file", nargs="?")
    s.add_argument("--sets", default="ice,water")
    s.add_argument("--part", choices=["cal", "held", "all"], default="cal")
    s.add_argument("--tau", default="0.2,0.3,0.4")
    s.add_argument("--model", default="water")
    s.add_argument("--degraded", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(getattr(a, "threads", 2))
    {"crops": cmd_crops, "train": cmd_train, "accuracy": cmd_accuracy, "score": cmd_score}[a.cmd](a)


if __name__ == "__main__":
    main()
