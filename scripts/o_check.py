"""Train and score the O check (``hydrafm.models.o_check``; issue 14: the O of a bilayer's lower half).

    python scripts/o_check.py data DATASET [DATASET...] -o PEAKS.npz [--degraded 0.3] [--seed 0]
    python scripts/o_check.py train PEAKS.npz [PEAKS.npz...] -o o_check.pt [--minutes 20] [--threads 1]
                                    [--init o_check.pt] [--tau 0.5] [--head offset|cells] [--width 32]
    python scripts/o_check.py score [MODEL.pt] --sets ice,water [--part cal|held|all] [--tau 0.2,0.3,0.5]
                                    [--degraded] [--bond-ends] [--drop-only]

``data``: the structure network (``--model``, default ``water``, with its mirror images) predicts
every stack of simulated datasets (``hydrafm simulate``), a ``--degraded`` share of them first
degraded as training degrades stacks; each O peak at the model's threshold becomes a crop
(:func:`~hydrafm.models.o_check.o_crops`) labelled 1 when a true O of the top 1.5 Å is matched
to it within 1.5 Å (one to one), with the offset to that O; peaks on deeper visible O are left
out. ``train``: AdamW on the crops (turned and mirrored at random, offsets with them), for the
``offset`` head log-loss plus a smooth-L1 loss on the offsets of real O, for the ``cells`` head
the cross-entropy over its cells and "no O" plus a smooth-L1 loss on the place within the true
cell; the learning rate falling along a cosine to a tenth over ``--minutes`` of CPU; a tenth held
back; ``-o`` keeps the epoch best on it (log-loss / cross-entropy).
``score``: Predict's molecules on held-out sets (``HYDRAFM_EVAL``, cached maps as
``scripts/compare_heldout.py`` makes them) without and with the check at each ``--tau``, atoms
in the top 1.5 Å: O / H F1, H class, whole waters (``--bond-ends``: both with the shipped bond-end check;
``--drop-only``: the check drops unlikely O and moves none).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def cmd_data(a) -> None:
    from hydrafm.io.xyz import LABELS
    from hydrafm.models.o_check import o_crops
    from hydrafm.predict.evaluate import _predict_sample
    from hydrafm.predict.metrics import _match, within_top
    from hydrafm.predict.predictor import default_threshold, resolve_model
    from hydrafm.simulate.dataset import AFMDataset
    from hydrafm.training.augment import Degradations, degrade

    model = resolve_model(a.model, "cpu")
    t = default_threshold(model[1])
    rng = np.random.default_rng(a.seed)
    xs, ys, offs, n, t0 = [], [], [], 0, time.time()
    for path in a.datasets:
        ds = AFMDataset(path)
        for i in range(len(ds)):
            prefilter = None
            if a.degraded > 0 and rng.random() < a.degraded:  # training's degradations, the atoms kept in place
                seed = int(rng.integers(2**31))

                def prefilter(frames, seed=seed):
                    x = torch.as_tensor(np.asarray(frames, np.float32))[None]
                    return degrade(x, torch.zeros(1, 1, *x.shape[-2:]), np.random.default_rng(seed), Degradations(),
                                   turn=False)[0][0].numpy()
            s, pred = _predict_sample(ds, i, model, "cpu", True, prefilter=prefilter)
            n += 1
            peaks = pred.atoms(t, False)
            po = np.flatnonzero(peaks.arrays["label"].astype(str) == "O")
            if not len(po):
                continue
            xy = peaks.positions[po, :2]
            tl = np.asarray(LABELS)[s.labels]
            top = within_top(s.positions, 1.5)
            deeper = ~top & within_top(s.positions, 3.0)
            to = np.flatnonzero(top & (tl == "O"))
            rows, cols = _match(xy, s.positions[to, :2], 1.5)
            rest = np.setdiff1d(np.arange(len(po)), rows)
            on_deeper = rest[_match(xy[rest], s.positions[np.flatnonzero(deeper & (tl == "O")), :2], 0.75)[0]]
            y = np.zeros(len(po), np.float32)
            y[rows] = 1
            off = np.zeros((len(po), 2), np.float32)
            off[rows] = s.positions[to[cols], :2] - xy[rows]
            keep = np.ones(len(po), bool)
            keep[on_deeper] = False  # a deeper visible O: not scored, so not taught either way
            xs.append(o_crops(pred.frames, pred.maps, pred.info.labels, pred.pixel_size, pred.origin,
                              xy[keep]).astype(np.float16))
            ys.append(y[keep])
            offs.append(off[keep])
            if n % 100 == 0:
                print(json.dumps({"stacks": n, "peaks": sum(map(len, ys)), "seconds": round(time.time() - t0)}),
                      flush=True)
    y = np.concatenate(ys)
    np.savez(a.out, x=np.concatenate(xs), y=y, off=np.concatenate(offs), datasets=np.array(a.datasets),
             degraded=a.degraded, model=a.model)
    print(json.dumps({"peaks": len(y), "real": round(float(y.mean()), 3), "out": a.out}))


def _loss(net, xb: torch.Tensor, y: torch.Tensor, off: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(the loss to descend, the loss that chooses the epoch)`` of crops ``xb`` with labels ``y`` and offsets
    ``off``: the ``offset`` head's log-loss plus a smooth-L1 loss on the offsets of real O; the ``cells``
    head's cross-entropy over the cells and "no O", plus a smooth-L1 loss on the place within the true cell."""
    from hydrafm.models.o_check import CELLS, cell_targets

    real = y == 1
    smooth = torch.nn.functional.smooth_l1_loss
    if net.info.head == "cells":
        cell, within = cell_targets(off)
        logits, w = net(xb)
        choice = torch.nn.functional.cross_entropy(logits, torch.where(real, cell, CELLS * CELLS))
        if not real.any():
            return choice, choice
        b = torch.arange(len(y))[real]
        row, col = cell[real] // CELLS, cell[real] % CELLS
        return choice + 2 * smooth(torch.stack([w[b, 0, row, col], w[b, 1, row, col]], 1), within[real],
                                   beta=0.1), choice
    out = net(xb)
    logloss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)
    if not real.any():
        return logloss, logloss
    return logloss + smooth(out[real, 1:], off[real], beta=0.2) * 2, logloss


def cmd_train(a) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from small_nets import cosine_lr, load_crops, start_from

    from hydrafm.models.o_check import OCheckInfo, OCheckNet, load_o_check, save_o_check, turn_crops

    torch.manual_seed(a.seed)
    parts, data, val, train = load_crops(a.peaks, ("x", "y", "off"), a.seed)
    x, y, off = data["x"], data["y"], data["off"]
    made_from = sorted({str(d) for p in parts if "datasets" in p.files for d in p["datasets"]})
    models = {str(p["model"]) for p in parts if "model" in p.files}  # whose peaks (Predict warns for another)
    info = OCheckInfo(n_heights=x.shape[1] - 2, width=a.width, tau=a.tau, move=not a.drop_only, head=a.head,
                      provenance={"peaks": [str(p) for p in a.peaks], "datasets": made_from,
                                  "command": " ".join(sys.argv), "threads": a.threads,
                                  **({"model": models.pop()} if len(models) == 1 else {})})
    net = OCheckNet(info)
    start_from(net, a.init, load_o_check)
    opt = torch.optim.AdamW(net.parameters(), a.lr, weight_decay=1e-4)
    t0, c0, epoch, best = time.time(), time.process_time(), 0, float("inf")
    budget = a.minutes * 60 * a.threads
    while time.process_time() - c0 < budget:
        net.train()
        for b in train[torch.randperm(len(train))].split(a.batch):
            if time.process_time() - c0 > budget:
                break
            cosine_lr(opt, a.lr, c0, budget)  # a cosine to a tenth over the budget
            xb, ob = turn_crops(x[b].float(), off[b], int(torch.randint(4, (1,))), bool(torch.rand(1) < 0.5))
            loss = _loss(net, xb, y[b], ob)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        net.eval()
        with torch.no_grad():
            val_loss = sum(float(_loss(net, x[v].float(), y[v], off[v])[1]) * len(v)
                           for v in val.split(512)) / len(val)
            p, o = zip(*(net.verdicts(x[v].float()) for v in val.split(512)))
        p, o = torch.cat(p), torch.cat(o)
        acc = float(((p > 0.5).float() == y[val]).float().mean())
        real = y[val] == 1
        err = torch.hypot(*(o[real] - off[val][real]).T)
        far = torch.hypot(*off[val][real].T) > 0.75
        net.info.provenance.update(epochs=epoch, samples=epoch * len(train), val_accuracy=round(acc, 4),
                                   val_loss=round(val_loss, 4), cpu_minutes=round((time.process_time() - c0) / 60, 1))
        if val_loss < best:  # -o keeps the epoch best on the held-back tenth
            best = val_loss
            save_o_check(a.out, net)
        print(json.dumps({"epoch": epoch, "minutes": round((time.time() - t0) / 60, 2), "val_loss": round(val_loss, 4),
                          "val_accuracy": round(acc, 4), "real_share": round(float(real.float().mean()), 3),
                          "offset_error_median": round(float(err.median()), 3),
                          "far_brought_within_0.75": round(float((err[far] < 0.75).float().mean()), 3)}), flush=True)


def cmd_score(a) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from assembly_variants import held_out_scores

    from hydrafm.models.o_check import load_o_check, shipped_o_check_path

    net = load_o_check(a.model_file or shipped_o_check_path())

    def way(tau: float | None, min_move: float = 0.0, views: int = 1):
        def atoms_of(p):
            if tau is not None:
                net.info.tau = tau
                net.info.move = not a.drop_only
                net.info.min_move = min_move
                net.info.views = views
            return p.atoms(None, True, bond_ends=a.bond_ends, o_check=net if tau is not None else False)
        return atoms_of

    moves = [float(m) for m in a.min_move.split(",")]
    ways = {"without": way(None)}
    for v in a.tau.split(","):
        for m in moves:
            for n in (int(n) for n in a.views.split(",")):
                name = f"tau {float(v):g}" + (f" min_move {m:g}" if m else "") + (f" views {n}" if n != 1 else "")
                ways[name] = way(float(v), m, n)
    for key in a.sets.split(","):
        scores = held_out_scores(a.model, key, a.part, a.degraded, ways)
        out = {"set": key, "part": a.part, "degraded": a.degraded, "bond_ends": a.bond_ends,
               "drop_only": a.drop_only}
        for k, s in scores.items():
            m = s.summary()
            out[k] = {"O": m["O"]["f1"], "H": m["H"]["f1"], "class": m["H_orientation"],
                      "whole": m["whole_molecules"]}
        print(json.dumps(out), flush=True)


def main() -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from small_nets import add_train_options

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("datasets", nargs="+")
    d.add_argument("-o", "--out", required=True)
    d.add_argument("--model", default="water")
    d.add_argument("--degraded", type=float, default=0.3,
                   help="share of stacks degraded as training degrades them (hydrafm.training.augment) first")
    d.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    add_train_options(t, "peaks", threads=1, tau=0.5, what="check")
    t.add_argument("--head", choices=("offset", "cells"), default="offset",
                   help="offset: a log-odds and a regressed offset; cells: which 0.4 A cell holds the O, or none")
    t.add_argument("--width", type=int, default=32, help="channels of the first level")
    t.add_argument("--drop-only", action="store_true", help="recorded: Predict only drops O with this check")
    s = sub.add_parser("score")
    s.add_argument("model_file", nargs="?")
    s.add_argument("--sets", default="ice,water")
    s.add_argument("--part", choices=["cal", "held", "all"], default="cal")
    s.add_argument("--tau", default="0.2,0.3,0.5")
    s.add_argument("--model", default="water")
    s.add_argument("--degraded", action="store_true")
    s.add_argument("--bond-ends", action="store_true")
    s.add_argument("--drop-only", action="store_true", help="the check only drops O (no moves, no clash rule)")
    s.add_argument("--min-move", default="0",
                   help="Å (comma list): a kept O whose read offset is shorter stays where the network put it")
    s.add_argument("--views", default="1", help="views each crop is read in (comma list of 1, 4, 8)")
    a = ap.parse_args()
    torch.set_num_threads(getattr(a, "threads", 2))
    {"data": cmd_data, "train": cmd_train, "score": cmd_score}[a.cmd](a)


if __name__ == "__main__":
    main()
