"""Score the molecule assembly's choices on cached network maps (issue 14): the network runs once per
held-out stack, then every assembly variant rescoring the same maps takes seconds.

    python scripts/assembly_variants.py MODEL --sets ice,water,hydrates --part cal   # choose here
    python scripts/assembly_variants.py MODEL --sets ice,water,hydrates --part rep   # then report
    python scripts/assembly_variants.py MODEL --sets ice4,water4 --part all          # and on fresh sets
    python scripts/assembly_variants.py water --sets ice,water --part cal --variants default,grid
    python scripts/assembly_variants.py water --part rep --constants '{"W_HBOND": 0.1}'
    python scripts/assembly_variants.py na-hydrate --sets hydrates-rt2 --part all --without label_margins

Sets are folders ``$HYDRAFM_EVAL/<set>-heldout`` (made as ``scripts/compare_heldout.py`` says);
``--part`` cal / rep / all: their first half, second half, or all of it; ``--degraded``: the
stacks after the robustness protocol. The maps (four mirror
images averaged) are cached in ``$HYDRAFM_CACHE/assembly_maps``. Scores: atoms in the top
``--top`` Å (default 1.5), the model's threshold, one JSON line per variant with O (Na, K) and H
F1, H precision / recall, H class accuracy and whole molecules per set.

Variants (``hydrafm.predict.molecules``): ``default``; ``nearest-peak`` (H peaks given to O
nearest first, as before 2026-11-28); ``confidence-only`` (most confident first, no distance term);
``grid``: each of the assembly's constants varied alone (the grid of 2026-11-27); ``--constants``
JSON: the default with those constants changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np


def _maps(model: str, key: str, net, root: str, cache: str, degraded: bool = False):
    """The model's maps of every stack of a set (cached), with the grid and the truth."""
    from hydrafm.io.xyz import LABELS
    from hydrafm.predict.evaluate import _predict_sample
    from hydrafm.simulate.dataset import AFMDataset

    ds = AFMDataset(f"{root}/{key}-heldout")
    # keyed by the weights themselves: a shipped model's name outlives its weights (a stale cache once
    # scored an older na-hydrate under the new one's name)
    digest = hashlib.sha1(b"".join(v.detach().cpu().numpy().tobytes() for v in net[0].state_dict().values()))
    name = (f"{os.path.basename(model).replace('.pt', '')}_{digest.hexdigest()[:10]}_{key}"
            f"{'_degraded' if degraded else ''}.npz")
    path = os.path.join(cache, name)
    if not os.path.exists(path):
        maps = []
        for i in range(len(ds)):
            _, pred = _predict_sample(ds, i, net, "cpu", True, degrade=degraded)
            maps.append(pred.maps.astype(np.float32))
        os.makedirs(cache, exist_ok=True)
        np.savez_compressed(path, maps=np.stack(maps), pixel=pred.pixel_size, origin=np.array(pred.origin))
    z = np.load(path)
    truth = [(ds[i].positions, np.array(LABELS)[ds[i].labels]) for i in range(len(ds))]
    return z["maps"], tuple(z["pixel"]), tuple(z["origin"]), truth


def held_out_scores(model: str, key: str, part: str, degraded: bool, ways: dict) -> dict:
    """Scores (atoms in the top 1.5 Å) of Predict's molecules of one held-out set under each of ``ways``
    (name → function of a :class:`~hydrafm.predict.predictor.Prediction` that keeps the stack's frames,
    returning atoms), from the model's cached maps; ``part`` cal / held / all: the first half, the
    second, or all of the set; ``degraded``: after the robustness protocol (the same draws as the maps)."""
    from hydrafm.paths import cache_dir
    from hydrafm.predict.evaluate import degrade_like_experiment
    from hydrafm.predict.metrics import Scores, score_atoms
    from hydrafm.predict.predictor import Prediction, resolve_model
    from hydrafm.simulate.dataset import AFMDataset

    net = resolve_model(model, "cpu")
    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    maps, px, origin, truth = _maps(model, key, net, root, str(cache_dir("assembly_maps")), degraded)
    ds = AFMDataset(f"{root}/{key}-heldout")
    n = len(maps)
    scores = {name: Scores() for name in ways}
    for i in {"cal": range(n // 2), "held": range(n // 2, n), "all": range(n)}[part]:
        frames = ds[i].stack
        if degraded:  # the same draws as the cached degraded maps (predict.evaluate._predict_sample)
            frames = degrade_like_experiment(frames, np.random.default_rng([i, 2026]), ds.settings.pixel_size)
        tx, tl = truth[i]
        p = Prediction(maps[i], px, origin, net[1], model, frames=frames)
        for name, way in ways.items():
            atoms = way(p)
            scores[name].add(score_atoms(atoms.positions[:, :2], atoms.arrays["label"], tx, tl, top=1.5))
    return scores


#: each constant varied alone (``--variants grid``)
GRID = {"W_HBOND": [0.1, 0.6, 1.0], "HBOND_CONE": [15.0, 35.0], "MIN_TILT": [30.0, 50.0],
        "MAX_LEVEL_TILT": [10.0, 30.0], "PEAK_WEIGHT": [0.5, 2.0], "W_SETTLED": [0.0, 0.15],
        "PRIOR": [{"H_up": 0.1, "H_flat": 0.05, "H_down": 0.0}, {"H_up": 0.0, "H_flat": 0.03, "H_down": 0.0},
                  {"H_up": 0.03, "H_flat": 0.0, "H_down": 0.02}]}


def main() -> None:
    import torch

    import hydrafm.predict.molecules as molecules
    from hydrafm.paths import cache_dir
    from hydrafm.predict.metrics import Scores, score_atoms
    from hydrafm.predict.predictor import Prediction, default_threshold, reports_ions, resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--sets", default="ice,water,hydrates")
    ap.add_argument("--part", choices=["cal", "rep", "all"], default="cal")
    ap.add_argument("--top", type=float, default=1.5)
    ap.add_argument("--variants", default="default,nearest-peak,confidence-only")
    ap.add_argument("--degraded", action="store_true",
                    help="the stacks after the robustness protocol (as hydrafm evaluate --degrade)")
    ap.add_argument("--threshold", type=float, help="instead of the model's")
    ap.add_argument("--constants", help="JSON: molecules constants changed in every variant")
    ap.add_argument("--without", default="", help="settings the model records to leave out, comma-separated: "
                    "label_margins, assembly_prior (to measure what each does)")
    ap.add_argument("--figure", metavar="PNG", help="the stack of the first set where the first two variants'"
                    " matched H differ most: its closest frame with each variant's molecules and the true H")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    import hydrafm.predict.predictor as predictor

    for name in filter(None, a.without.split(",")):
        if name not in ("label_margins", "assembly_prior"):
            ap.error(f"--without takes label_margins or assembly_prior, not {name!r}")
        setattr(predictor, name, (lambda info: {}) if name == "label_margins" else (lambda info: None))
    net = resolve_model(a.model, "cpu")
    info = net[1]
    t = default_threshold(info) if a.threshold is None else a.threshold
    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    cache = str(cache_dir("assembly_maps"))
    data = {k: _maps(a.model, k, net, root, cache, a.degraded) for k in a.sets.split(",")}
    base = json.loads(a.constants) if a.constants else {}
    variants = {"default": {}, "nearest-peak": {"_peak_cost": lambda d, c, label: d},
                "confidence-only": {"_peak_cost": lambda d, c, label: -c}}
    runs = []
    for name in a.variants.split(","):
        if name == "grid":
            runs += [(f"{k}={v}", {k: v}) for k, vals in GRID.items() for v in vals]
        else:
            runs.append((name, variants[name]))
    first = next(iter(data))
    kept: dict[str, list] = {}  # variant → per-stack (atoms, H F1) of the first set, for --figure
    for name, change in runs:
        change = {**base, **change}
        original = {k: getattr(molecules, k) for k in change}
        for k, v in change.items():
            setattr(molecules, k, v)
        row = {}
        try:
            for key, (maps, px, origin, truth) in data.items():
                n = len(maps)
                idx = {"cal": range(n // 2), "rep": range(n // 2, n), "all": range(n)}[a.part]
                total = Scores()
                for i in idx:
                    atoms = Prediction(maps[i], px, origin, info, a.model).atoms(t, True)
                    xy, labels = atoms.positions[:, :2], atoms.arrays["label"]
                    one = score_atoms(xy, labels, *truth[i], top=a.top)
                    total.add(one)
                    if a.figure and key == first:
                        kept.setdefault(name, []).append((i, atoms, one.tp["H"], one.summary().get("H", {})))
                s = total.summary()
                groups = ("O", "Na", "K", "H") if reports_ions(info) else ("O", "H")
                row[key] = {g: s[g]["f1"] for g in groups if g in s}
                row[key].update({f"{g}_predicted": s[g]["predicted"] for g in ("Na", "K") if g in s})
                row[key].update(H_precision=s["H"]["precision"], H_recall=s["H"]["recall"],
                                H_class=round(s["H_orientation"], 4), whole=round(s["whole_molecules"], 4))
        finally:
            for k, v in original.items():
                setattr(molecules, k, v)
        head = {"variant": name, "constants": a.constants, "without": a.without, "part": a.part, "top": a.top,
                "degraded": a.degraded, "threshold": t}
        print(json.dumps({**head, **row}), flush=True)
    if a.figure:
        _figure(a.figure, root, first, data[first][3], kept, a.top)


def _figure(path: str, root: str, key: str, truth, kept: dict, top: float) -> None:
    """Closest frame of the stack where the first variant matches the most H more than the second, one
    panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hydrafm.simulate.dataset import AFMDataset

    (n0, r0), (n1, r1) = list(kept.items())[:2]
    k = int(np.argmax([b[2] - c[2] for b, c in zip(r0, r1)]))  # the most H gained
    i = r0[k][0]
    ds = AFMDataset(f"{root}/{key}-heldout")
    st = ds.settings
    frame = ds[i].stack[0]
    ext = [0, frame.shape[1] * st.pixel_size, 0, frame.shape[0] * st.pixel_size]
    pos, lab = truth[i]
    top_h = np.char.startswith(lab.astype(str), "H") & (pos[:, 2] >= pos[:, 2].max() - top)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.4))
    for ax, (name, rows) in zip(axes, ((n1, r1), (n0, r0))):
        atoms, h = rows[k][1], rows[k][3]
        ax.imshow(frame, cmap="gray", origin="lower", extent=ext)
        ax.plot(pos[top_h, 0], pos[top_h, 1], "x", color="lime", ms=6, mew=1.2, label="true H (top 1.5 Å)")
        al = np.asarray(atoms.arrays["label"]).astype(str)
        for name_l, colour in (("O", "red"), ("H_up", "white"), ("H_flat", "yellow"), ("H_down", "cyan")):
            p = atoms.positions[al == name_l]
            ax.plot(p[:, 0], p[:, 1], "o", ms=6 if name_l == "O" else 3.5, color=colour, mec="k", mew=0.4,
                    label=name_l)
        ax.set_title(f"{name}: H F1 {h.get('f1', 0):.2f} (precision {h.get('precision', 0):.2f}, "
                     f"recall {h.get('recall', 0):.2f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=6, loc="lower left", framealpha=0.7)
    fig.suptitle(f"{key} held-out stack {i} ({ds.draws()['group'][i]}), closest frame", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
