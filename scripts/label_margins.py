"""Choose label margins (extra confidence some labels' peaks need above the threshold) on held-out sets.

    python scripts/label_margins.py MODEL SET[:first|second|all][:degraded] ... \\
        --margin Na=0,0.1,0.2,0.3,0.4 --margin K=0,0.1,0.2,0.3,0.4 [--fixed Na=0.2] \\
        [--classes O,Na,K,H] [--out grid.json]

Each stack of each SET (``$HYDRAFM_EVAL/SET-heldout``; ``first``/``second`` half or ``all``,
``degraded`` with the experiment-like degradations) is predicted once, as the model predicts
(its mirror images, its threshold), and its atoms are scored at every combination of the
margins given (``H`` stands for the three H classes). Scores pool all SETs; the table is
ranked by the mean F1 of ``--classes`` (atoms in the top 1.5 Å, predictions on visible atoms
below not scored). Ties go to the smaller margins. The chosen margins go into the model as
``label_margins`` (``hydrafm.predict.predictor.label_margins``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np

from hydrafm.io.xyz import LABELS
from hydrafm.predict.atoms import H_LABELS
from hydrafm.predict.evaluate import _predict_sample
from hydrafm.predict.metrics import Scores, score_atoms
from hydrafm.predict.predictor import default_threshold, resolve_model
from hydrafm.simulate.dataset import AFMDataset


def _parse(items: list[str]) -> dict[str, list[float]]:
    out = {}
    for item in items:
        name, values = item.split("=", 1)
        out[name] = [float(v) for v in values.split(",")]
    return out


def _expand(margins: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, v in margins.items():
        for label in (H_LABELS if name == "H" else (name,)):
            out[label] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--margin", action="append", default=[], metavar="LABEL=V1,V2,...")
    ap.add_argument("--fixed", action="append", default=[], metavar="LABEL=V")
    ap.add_argument("--classes", default="O,Na,K,H")
    ap.add_argument("--top", type=float, default=1.5)
    ap.add_argument("--out", default="label_margins.json")
    args = ap.parse_args()
    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    net = resolve_model(args.model, "cpu")
    info = net[1]
    threshold = default_threshold(info)
    fixed = {k: v[0] for k, v in _parse(args.fixed).items()}
    grid_axes = _parse(args.margin)
    names = list(grid_axes)
    grid = list(itertools.product(*(grid_axes[n] for n in names)))
    totals = {c: Scores() for c in grid}
    for spec in args.sets:
        name, *opts = spec.split(":")
        part = next((o for o in opts if o in ("first", "second", "all")), "all")
        ds = AFMDataset(f"{root}/{name}-heldout")
        n = len(ds)
        idx = {"all": np.arange(n), "first": np.arange(n // 2), "second": np.arange(n // 2, n)}[part]
        for k, i in enumerate(idx):
            s, pred = _predict_sample(ds, int(i), net, "cpu", None, degrade="degraded" in opts)
            truth = np.array(LABELS)[s.labels]
            for combo, total in totals.items():
                info.provenance["label_margins"] = _expand({**fixed, **dict(zip(names, combo))})
                atoms = pred.atoms(threshold)
                total.add(score_atoms(atoms.positions[:, :2], atoms.arrays["label"], s.positions, truth,
                                      top=args.top, visible=3.0))
            if k % 48 == 0:
                print(f"{spec}: {k}/{len(idx)}", flush=True)
    classes = args.classes.split(",")
    rows = []
    for combo, total in totals.items():
        summ = total.summary()
        mean = float(np.mean([summ[g]["f1"] for g in classes if g in summ]))
        rows.append({"margins": dict(zip(names, combo)), "mean_f1": round(mean, 4), "scores": summ})
    rows.sort(key=lambda r: (-r["mean_f1"], sum(abs(v) for v in r["margins"].values())))
    for r in rows:
        print(r["mean_f1"], r["margins"], {g: r["scores"][g]["f1"] for g in classes if g in r["scores"]})
    with open(args.out, "w") as fh:
        json.dump({"model": args.model, "threshold": threshold, "fixed": fixed, "sets": args.sets, "rows": rows}, fh)


if __name__ == "__main__":
    main()
