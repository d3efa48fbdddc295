"""Where a model's ions land: every predicted Na / K matched to the nearest true heavy atom at any depth.

    python scripts/ion_confusion.py $HYDRAFM_EVAL/hydrates3-heldout [--model na-hydrate] [--json out.json]

Prints, per (predicted ion, true atom, top 1.5 Å or deeper): how many, the mean Na and K map values
at the ion, and the median lateral distance to its two nearest predicted O (the hydration shell as
predicted). "none": no true heavy atom within 0.75 Å.
"""
import argparse
import json
import os

import numpy as np
import torch

from hydrafm.io.xyz import LABELS
from hydrafm.predict.evaluate import _predict_sample
from hydrafm.predict.predictor import default_threshold, resolve_model
from hydrafm.simulate.dataset import AFMDataset

ap = argparse.ArgumentParser()
ap.add_argument("dataset")
ap.add_argument("--model", default="na-hydrate")
ap.add_argument("--json", default="")
args = ap.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
ds = AFMDataset(args.dataset)
net = resolve_model(args.model, "cpu")
threshold, labels = default_threshold(net[1]), list(net[1].labels)
rows = []
for i in range(len(ds)):
    s, pred = _predict_sample(ds, i, net, "cpu", True)
    atoms = pred.atoms(threshold, True)
    lab, xy = atoms.arrays["label"], atoms.positions[:, :2]
    truth = np.array(LABELS)[s.labels]
    heavy = ~np.char.startswith(truth.astype(str), "H")
    z_top = s.positions[:, 2].max()
    o_xy = xy[lab == "O"]
    (py, px), (oy, ox) = pred.pixel_size, pred.origin
    for j in np.flatnonzero(np.isin(lab, ["Na", "K"])):
        d = np.where(heavy, np.hypot(*(s.positions[:, :2] - xy[j]).T), np.inf)
        k = int(np.argmin(d))
        r = int(np.clip(round((xy[j, 1] - oy) / py), 0, pred.maps.shape[1] - 1))
        c = int(np.clip(round((xy[j, 0] - ox) / px), 0, pred.maps.shape[2] - 1))
        shell = np.sort(np.hypot(*(o_xy - xy[j]).T))[:2] if len(o_xy) >= 2 else np.full(2, np.inf)
        rows.append({"stack": i, "predicted": str(lab[j]), "true": str(truth[k]) if d[k] <= 0.75 else "none",
                     "depth": float(z_top - s.positions[k, 2]),
                     "Na_map": float(pred.maps[labels.index("Na"), r, c]),
                     "K_map": float(pred.maps[labels.index("K"), r, c]), "shell_O": float(shell.mean())})
    print(f"\r{i + 1}/{len(ds)}", end="", flush=True)
print()
if args.json:
    with open(args.json, "w") as f:
        json.dump(rows, f)
print(f"{'predicted -> true':24s} {'n':>4s} {'Na map':>7s} {'K map':>6s} {'shell O (Å)':>11s}")
for p in ("Na", "K"):
    for t in ("Na", "K", "O", "none"):
        for top in (True, False):
            sel = [r for r in rows if r["predicted"] == p and r["true"] == t and (r["depth"] <= 1.5) == top]
            if sel:
                name = f"{p} -> {t} ({'top 1.5 Å' if top else 'deeper'})"
                print(f"{name:24s} {len(sel):4d} {np.mean([r['Na_map'] for r in sel]):7.2f} "
                      f"{np.mean([r['K_map'] for r in sel]):6.2f} {np.median([r['shell_O'] for r in sel]):11.2f}")
