"""How well Predict's heights match the truth, with and without the depth network.

Every predicted O / Na / K that matches a true one (0.75 Å in the plane, true atoms within
``--top`` Å of the highest atom) is compared in height. Heights are relative in both: Predict puts
its shallowest heavy atom at z = 0, the truth is counted from its highest heavy atom. Reported:

- ``mae``: mean |Δz| with those zeros (what a user sees in the .xyz);
- ``mae_relative``: the same after removing each stack's median Δz (the layering alone);
- ``within_0.3``: share of matched atoms with |Δz| ≤ 0.3 Å (relative);
- ``spread_true`` / ``spread_pred``: the mean per-stack standard deviation of the heights.

Without the depth network every heavy atom is at z = 0, which is the baseline.

    python scripts/depth_check.py --sets ice,water,hydrates --half second [--degrade] [--depth FILE]
    python scripts/depth_check.py --sets /path/to/rt-heldout --half all   # random-tip held-out set
    python scripts/depth_check.py --sample-figure docs/images/depth_sample.png  # the sample, side view
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from hydrafm.predict.evaluate import degrade_like_experiment
from hydrafm.predict.metrics import _match
from hydrafm.predict.predictor import iter_predict_maps, resolve_model
from hydrafm.progress import drive
from hydrafm.simulate.dataset import AFMDataset
from hydrafm.stack import AFMStack

HEAVY = {0: "O", 1: "Na", 2: "K"}


def folder(name: str) -> Path:
    if os.path.isdir(name):
        return Path(name)
    return Path(os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")) / f"{name}-heldout"


def sample_figure(path: str, model: str, depth) -> dict:
    """Side view of the bundled sample's O: the truth, Predict without and with the depth network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hydrafm._sample_data import sample_path
    from hydrafm.io import load_stack
    from hydrafm.io.xyz import read_xyz
    from hydrafm.predict.predictor import predict_atoms

    stack = load_stack(sample_path())
    truth = read_xyz(Path(sample_path()).with_suffix(".xyz"))
    tp = truth.get_positions()[truth.get_atomic_numbers() == 8]
    tz = tp[:, 2] - tp[:, 2].max()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    res = {}
    modes = (("every O at z = 0 (--no-depth)", False), ("with the depth network", depth))
    for ax, (title, d) in zip(axes, modes):
        atoms = predict_atoms(stack, model, depth=d)
        lab = np.asarray(atoms.arrays["label"]).astype(str)
        p = atoms.get_positions()[lab == "O"]
        r, c = _match(p[:, :2], tp[:, :2], 0.75)
        err = np.abs(p[r, 2] - tz[c])
        res[title] = {"O": int(len(p)), "matched": int(len(r)), "mean_abs_dz": round(float(err.mean()), 3)}
        ax.scatter(tp[:, 0], tz, s=90, facecolors="none", edgecolors="0.5", label="true O")
        ax.scatter(p[:, 0], p[:, 2], s=30, c="tab:red", marker="x", label="predicted O")
        for i, j in zip(r, c):
            ax.plot([p[i, 0], tp[j, 0]], [p[i, 2], tz[j]], c="tab:red", lw=0.6, alpha=0.5)
        ax.set_title(f"{title}: mean |Δz| {err.mean():.2f} Å")
        ax.set_xlabel("x (Å)")
    axes[0].set_ylabel("z below the highest O (Å)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="water")
    ap.add_argument("--depth", default=None, help="depth network file (default: the shipped one)")
    ap.add_argument("--sets", default="ice,water,hydrates", help="held-out set names or dataset folders")
    ap.add_argument("--half", choices=("first", "second", "all"), default="second")
    ap.add_argument("--top", type=float, default=1.5)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--degrade", action="store_true",
                    help="experiment-like degradations (evaluate --degrade)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample-figure", metavar="PNG", help="only draw the bundled sample's side view")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    depth = a.depth if a.depth else True
    if a.sample_figure:
        print(json.dumps(sample_figure(a.sample_figure, a.model, depth)))
        return
    net_info = resolve_model(a.model)
    out = {"model": a.model, "depth": str(a.depth or "shipped"), "half": a.half, "top": a.top,
           "degrade": a.degrade, "sets": {}}
    for name in a.sets.split(","):
        ds = AFMDataset(folder(name))
        n = len(ds)
        idx = {"first": range(n // 2), "second": range(n // 2, n), "all": range(n)}[a.half]
        st = ds.settings
        rows = {"with": [], "without": []}
        spread_t, spread_p = [], []
        for i in idx:
            s = ds[i]
            data = s.stack
            if a.degrade:
                data = degrade_like_experiment(data, np.random.default_rng([i, 2026]), st.pixel_size)
            stack = AFMStack(data, (st.pixel_size, st.pixel_size), np.arange(st.n_heights) * st.dz,
                             (st.pixel_size / 2, st.pixel_size / 2))
            pred = drive(iter_predict_maps(stack, net_info, depth=depth), show=False)
            atoms = pred.atoms(a.threshold)
            lab = np.asarray(atoms.arrays["label"]).astype(str)
            heavy = np.isin(lab, list(HEAVY.values()))
            p = atoms.get_positions()[heavy]
            pos, labels = s.positions, s.labels
            top = pos[:, 2].max()
            tk = np.isin(labels, list(HEAVY)) & (pos[:, 2] >= top - a.top)
            t = pos[tk]
            if not len(t) or not len(p):
                continue
            r, c = _match(p[:, :2], t[:, :2], 0.75)
            if not len(r):
                continue
            zt = t[c, 2] - pos[np.isin(labels, list(HEAVY)), 2].max()
            zp = p[r, 2]
            spread_t.append(float(np.std(zt)))
            spread_p.append(float(np.std(zp)))
            rows["with"].append(zp - zt)
            rows["without"].append(0.0 - zt)
        res = {"stacks": len(spread_t), "matched": int(sum(len(e) for e in rows["with"])),
               "spread_true": round(float(np.mean(spread_t)), 3),
               "spread_pred": round(float(np.mean(spread_p)), 3)}
        for key, errs in rows.items():
            e = np.concatenate(errs)
            rel = np.concatenate([x - np.median(x) for x in errs])
            res[key] = {"mae": round(float(np.mean(np.abs(e))), 3),
                        "mae_relative": round(float(np.mean(np.abs(rel))), 3),
                        "within_0.3": round(float(np.mean(np.abs(rel) <= 0.3)), 3)}
        out["sets"][name] = res
        print(json.dumps({name: res}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
