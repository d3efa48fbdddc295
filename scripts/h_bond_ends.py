"""Does a model know which end of an H-bond its H sits on? (issue 14: the largest H error on ice-like layers)

A level H lies 0.97 Å from the O that donates it and ~1.8 Å from the one that accepts it. Three measurements:

``maps``     on held-out sets (cached maps, as ``scripts/assembly_variants.py``): for every true H_flat in the top
             1.5 Å that lies along an O–O bond whose two O the model found, the H_flat map near the true end
             (0.8–1.06 Å from the donor) against the mirror end (the same distance from the acceptor).
             Prints P(true end higher) and the margin's quantiles: 0.5 is a coin flip. ``ceiling``: H F1 and
             whole waters before and after putting every predicted level H that sits at the mirror end of a
             true H-bond on that bond's true H (an oracle: what knowing the end is worth).
``response`` simulated held-out ice layers (the torch engine, closest probe ``--distance``, 2.6 Å): one H_flat moved to the mirror end
             of its bond; the map at both ends before and after. A model that sees the H follows it.
``image``    the same moves: the change of the stack in a 4 × 4 Å crop around the bond, relative to the crop's
             std, against moving the H 0.3 Å sideways and removing it. Says whether the physics tells the ends apart.

    python scripts/h_bond_ends.py maps water --sets ice4,water4
    python scripts/h_bond_ends.py response water -n 30 --seed 3 [--figure docs/images/h_bond_ends.png]
    python scripts/h_bond_ends.py image -n 4 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ENDS = (0.8, 0.93, 1.06)  # Å from an O along the bond: where a level H of that O would be


def _end_values(hmaps, p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """Largest H_flat map value near the ``p`` end and near the ``q`` end of the bond p–q."""
    v = (q - p) / np.linalg.norm(q - p)
    flat = np.full(len(ENDS), 1)  # index of H_flat in H_LABELS
    near_p = np.stack([p + v * r for r in ENDS])
    near_q = np.stack([q - v * r for r in ENDS])
    return float(hmaps.sample(flat, near_p).max()), float(hmaps.sample(flat, near_q).max())


def _bond_of(pos: np.ndarray, o_idx: np.ndarray, h: int, min_cos: float = 0.8):
    """(donor, acceptor) O indices of the H-bond H ``h`` lies along (lateral), or None."""
    from hydrafm.models.bond_ends import bond_partner

    k = int(np.argmin(np.linalg.norm(pos[o_idx] - pos[h], axis=1)))
    j = bond_partner(pos[o_idx], k, pos[h], min_cos)
    return (int(o_idx[k]), int(o_idx[j])) if j is not None else None


def cmd_maps(a) -> dict:
    sys.path.insert(0, os.path.dirname(__file__))
    from assembly_variants import _maps

    from hydrafm.paths import cache_dir
    from hydrafm.predict.metrics import GROUPS, Scores, _match, h_owners, score_atoms, within_top
    from hydrafm.predict.molecules import _HMaps
    from hydrafm.predict.predictor import Prediction, default_threshold, resolve_model

    net = resolve_model(a.model, "cpu")
    info, t = net[1], default_threshold(net[1])
    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    out = {"mode": "maps", "model": a.model}
    for key in a.sets.split(","):
        maps, px, origin, truth = _maps(a.model, key, net, root, str(cache_dir("assembly_maps")))
        margins, moved = [], 0
        before, after = Scores(), Scores()
        for i in range(len(maps)):
            atoms = Prediction(maps[i], px, origin, info, a.model).atoms(t, True)
            hm = _HMaps(maps[i], px, origin, tuple(info.labels))
            tx, tl = truth[i]
            top = within_top(tx, 1.5)
            is_h = np.isin(tl, GROUPS["H"])
            owner = np.full(len(tx), -1)
            owner[is_h] = h_owners(tx, is_h, tl == "O")[0]
            lab = atoms.arrays["label"].astype(str)
            oi, to = np.flatnonzero(lab == "O"), np.flatnonzero(tl == "O")
            r, c = _match(atoms.positions[oi, :2], tx[to, :2], 0.75)
            found = dict(zip(to[c].tolist(), oi[r].tolist()))
            for h in np.flatnonzero((tl == "H_flat") & top):
                bond = _bond_of(tx, to, h, np.cos(np.radians(25)))
                if bond is None or owner[h] != bond[0] or bond[0] not in found or bond[1] not in found:
                    continue
                p, q = atoms.positions[found[bond[0]], :2], atoms.positions[found[bond[1]], :2]
                true_end, mirror = _end_values(hm, p, q)
                margins.append(true_end - mirror)
            # the ceiling: every predicted level H at the mirror end of a true H-bond put on that bond's true H
            xy = atoms.positions[:, :2].copy()
            before.add(score_atoms(xy, lab, tx, tl, top=1.5))
            mol = atoms.arrays["mol"]
            for j in np.flatnonzero((lab == "H_flat") & (mol >= 0)):
                o = np.flatnonzero((mol == mol[j]) & (lab == "O"))[0]
                d_o = np.hypot(*(tx[to, :2] - xy[o]).T)
                d_h = np.where(is_h, np.hypot(*(tx[:, :2] - xy[j]).T), np.inf)
                k = int(np.argmin(d_h))
                if d_o.min() > 0.75 or not 0.75 <= d_h[k] < 1.0 or owner[k] in (-1, to[np.argmin(d_o)]):
                    continue
                if 2.2 < np.hypot(*(tx[owner[k], :2] - tx[to[np.argmin(d_o)], :2])) < 3.4:
                    xy[j] = tx[k, :2]
                    moved += 1
            after.add(score_atoms(xy, lab, tx, tl, top=1.5))
        m = np.array(margins)
        b, f = before.summary(), after.summary()
        out[key] = {"bonds": len(m), "p_true_end_higher": round(float(np.mean(m > 0)), 3),
                    "margin_quantiles_10_25_50_75_90": np.round(np.percentile(m, [10, 25, 50, 75, 90]), 3).tolist(),
                    "ceiling": {"h_moved": moved, "H_f1": [b["H"]["f1"], f["H"]["f1"]],
                                "whole": [round(b["whole_molecules"], 4), round(f["whole_molecules"], 4)]}}
    return out


def _windows(a):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import bench_refine

    from hydrafm.simulate.labels import atom_labels

    for i, pos, numbers in bench_refine.held_out_structures(a.n, a.seed, "ice", "held-out"):
        lab = atom_labels(pos, numbers)
        o_idx = np.flatnonzero(numbers == 8)
        top = pos[:, 2].max()
        for h in [h for h in np.flatnonzero(lab == "H_flat") if top - pos[h, 2] < 1.0][: a.per_window]:
            bond = _bond_of(pos, o_idx, h)
            if bond is None:
                continue
            d, acc = bond
            moved = pos.copy()
            v = pos[acc, :2] - pos[d, :2]
            moved[h, :2] = pos[acc, :2] - v / np.linalg.norm(v) * np.linalg.norm(pos[h, :2] - pos[d, :2])
            yield i, pos, numbers, h, d, acc, moved


def cmd_response(a) -> dict:
    from hydrafm.predict.molecules import _HMaps
    from hydrafm.predict.predictor import predict_maps, resolve_model
    from hydrafm.simulate.engine import SampledTip, TorchSimulator
    from hydrafm.simulate.settings import SimulationSettings

    model = resolve_model(a.model, "cpu")
    sim, tip = TorchSimulator(SimulationSettings()), SampledTip(a.distance)
    rows = []
    for _, pos, numbers, h, d, acc, moved in _windows(a):
        ends, shown = [], []
        for p in (pos, moved):
            stack = sim.simulate(p, numbers, tip)
            maps, px, origin, *_ = predict_maps(stack, model)
            ends += _end_values(_HMaps(maps, px, origin, tuple(model[1].labels)), pos[d, :2], pos[acc, :2])
            shown.append((stack, maps[list(model[1].labels).index("H_flat")], p[h]))
        rows.append(ends)
        if a.figure and len(rows) == 1:
            _figure(a.figure, shown, pos[[d, acc]])
    r = np.array(rows)
    return {"mode": "response", "model": a.model, "bonds": len(r),
            "truth_donor_acceptor": r[:, :2].mean(0).round(3).tolist(),
            "moved_donor_acceptor": r[:, 2:].mean(0).round(3).tolist(),
            "share_following_the_h": round(float(np.mean((r[:, 2] < r[:, 0]) & (r[:, 3] > r[:, 1]))), 3)}


def _figure(path: str, shown, o_xy: np.ndarray, half: float = 3.0) -> None:
    """Closest frame and H_flat map around one bond, with the H at its true end and at the mirror end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = o_xy[:, :2].mean(axis=0)
    fig, ax = plt.subplots(2, 3, figsize=(9, 6))
    frames = [st.data[0] for st, _, _ in shown]
    px = shown[0][0].pixel_size[0]
    r0, c0, n = int(c[1] / px), int(c[0] / px), int(half / px)
    rows, cols = slice(r0 - n, r0 + n), slice(c0 - n, c0 + n)

    def cut(img: np.ndarray) -> np.ndarray:
        return img[rows, cols]

    ext = [c[0] - half, c[0] + half, c[1] + half, c[1] - half]
    diff = cut(frames[1]) - cut(frames[0])
    for row, ((_, hmap, hxy), frame) in enumerate(zip(shown, frames)):
        ax[row, 0].imshow(cut(frame), cmap="gray", extent=ext)
        ax[row, 1].imshow(cut(hmap), cmap="viridis", vmin=0, vmax=1, extent=ext)
        for k in (0, 1):
            ax[row, k].plot(o_xy[:, 0], o_xy[:, 1], "o", mfc="none", mec="red", ms=12)
            ax[row, k].plot(*hxy[:2], "+", color="cyan", ms=12, mew=2)
        ax[row, 0].set_title(("H at the donor end" if row == 0 else "H moved to the mirror end") + ": closest frame",
                             fontsize=9)
        ax[row, 1].set_title("network's H_flat map", fontsize=9)
    ax[0, 2].imshow(diff, cmap="RdBu", extent=ext)
    ax[0, 2].set_title("image change (moved − true)", fontsize=9)
    ax[1, 2].imshow(cut(shown[1][1]) - cut(shown[0][1]), cmap="RdBu", vmin=-0.3, vmax=0.3, extent=ext)
    ax[1, 2].set_title("map change (moved − true)", fontsize=9)
    for x in ax.ravel():
        x.set_xticks([]), x.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cmd_image(a) -> dict:
    from hydrafm.simulate.engine import SampledTip, TorchSimulator
    from hydrafm.simulate.settings import SimulationSettings

    s = SimulationSettings()
    sim, tip = TorchSimulator(s), SampledTip(a.distance)
    px = s.scan_size / s.n_pixels
    half = int(2.0 / px)
    change: dict[str, list[float]] = {"mirror end": [], "0.3 A sideways": [], "removed": []}
    cache: dict[int, np.ndarray] = {}
    for i, pos, numbers, h, d, acc, moved in _windows(a):
        c = (pos[d, :2] + pos[acc, :2]) / 2
        r0, c0 = int(c[1] / px), int(c[0] / px)
        if min(r0, c0) < half or max(r0, c0) > s.n_pixels - half:
            continue
        window = (slice(None), slice(r0 - half, r0 + half), slice(c0 - half, c0 + half))
        if i not in cache:
            cache = {i: sim.simulate(pos, numbers, tip).data}
        ref = cache[i][window]
        u = pos[h, :2] - pos[d, :2]
        u /= np.linalg.norm(u)
        side = pos.copy()
        side[h, :2] += 0.3 * np.array([-u[1], u[0]])
        keep = np.arange(len(pos)) != h
        for name, (p, z) in {"mirror end": (moved, numbers), "0.3 A sideways": (side, numbers),
                             "removed": (pos[keep], numbers[keep])}.items():
            img = sim.simulate(p, z, tip).data[window]
            change[name].append(float(np.sqrt(np.mean((img - ref) ** 2)) / ref.std()))
    return {"mode": "image", "bonds": len(change["removed"]),
            **{f"{k}: median relative change": round(float(np.median(v)), 3) for k, v in change.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["maps", "response", "image"])
    ap.add_argument("model", nargs="?", default="water")
    ap.add_argument("--sets", default="ice4,water4", help="maps: held-out sets in $HYDRAFM_EVAL")
    ap.add_argument("-n", type=int, default=4, help="response, image: held-out ice windows")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-window", type=int, default=4, help="H moved per window")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--distance", type=float, default=2.6, help="response, image: closest probe distance, Å")
    ap.add_argument("--figure", metavar="PNG", help="response: the first bond's closest frame and H_flat map, "
                    "with the H at either end, and their changes")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    print(json.dumps({"maps": cmd_maps, "response": cmd_response, "image": cmd_image}[a.mode](a)))


if __name__ == "__main__":
    main()
