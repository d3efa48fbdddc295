"""Predict's maps averaged with those of an unsharp-masked copy of the stack (a test-time view; issue 14).

    python scripts/unsharp_view.py --sets ice,water --part cal --sigma 5 --amount 1 [--weight 0.5] [--degraded]

Each stack's maps (four mirror images, as Predict) are averaged with the maps of the same stack after an unsharp
mask (each frame plus ``amount`` × itself minus its Gaussian blur of ``sigma`` px), weight ``weight`` on the
unsharp view; the molecules are then assembled as Predict does (the shipped O check on, reading the raw frames).
One JSON line per set: O / H F1, H class and whole waters, without the view, with it alone, and averaged.
Sets are ``$HYDRAFM_EVAL/<set>-heldout``; ``--part`` cal / held / all as ``scripts/o_check.py score``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

import numpy as np


def main() -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from assembly_variants import _maps
    from degradation_parts import unsharp_mask

    from hydrafm.paths import cache_dir
    from hydrafm.predict.evaluate import _predict_sample, degrade_like_experiment
    from hydrafm.predict.metrics import Scores, score_atoms
    from hydrafm.predict.predictor import Prediction, resolve_model
    from hydrafm.simulate.dataset import AFMDataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="water")
    ap.add_argument("--sets", default="ice,water")
    ap.add_argument("--part", choices=["cal", "held", "all"], default="cal")
    ap.add_argument("--sigma", type=float, default=5.0)
    ap.add_argument("--amount", type=float, default=1.0)
    ap.add_argument("--weight", default="0.5", help="weights of the unsharp view to try (comma list)")
    ap.add_argument("--degraded", action="store_true")
    a = ap.parse_args()

    net = resolve_model(a.model, "cpu")
    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    weights = [float(w) for w in a.weight.split(",")]
    for key in a.sets.split(","):
        maps, px, origin, truth = _maps(a.model, key, net, root, str(cache_dir("assembly_maps")), a.degraded)
        ds = AFMDataset(f"{root}/{key}-heldout")
        n = len(maps)
        ways = {"without": 0.0, **{f"weight {w:g}": w for w in weights}}
        scores = {k: Scores() for k in ways}
        for i in {"cal": range(n // 2), "held": range(n // 2, n), "all": range(n)}[a.part]:
            frames = ds[i].stack
            if a.degraded:
                frames = degrade_like_experiment(frames, np.random.default_rng([i, 2026]), ds.settings.pixel_size)
            _, pu = _predict_sample(ds, i, net, "cpu", True, degrade=a.degraded, prefilter=partial(unsharp_mask, sigma=a.sigma, amount=a.amount))
            tx, tl = truth[i]
            for name, w in ways.items():
                m = (1 - w) * maps[i] + w * pu.maps.astype(np.float32)
                p = Prediction(m, px, origin, net[1], a.model, frames=frames)
                atoms = p.atoms(None, True)
                scores[name].add(score_atoms(atoms.positions[:, :2], atoms.arrays["label"], tx, tl, top=1.5))
        out = {"set": key, "part": a.part, "degraded": a.degraded, "sigma_px": a.sigma, "amount": a.amount}
        for k, s in scores.items():
            m = s.summary()
            out[k] = {"O": m["O"]["f1"], "H": m["H"]["f1"], "class": m["H_orientation"], "whole": m["whole_molecules"]}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
