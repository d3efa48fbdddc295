"""Re-choose the whole-molecule assembly's constants (``hydrafm.predict.molecules``) on calibration halves.

    python scripts/assembly_sweep.py grid            # each constant varied alone, first halves of ice + water
    python scripts/assembly_sweep.py check '{"W_HBOND": 0.1}'   # old vs new on the scored second halves

The held-out sets are those of ``scripts/compare_heldout.py`` (``$HYDRAFM_EVAL/{ice,water,hydrates}-heldout``).
The network's maps are predicted once (shipped ``water``, four mirror images) and cached in
``$HYDRAFM_CACHE/assembly_sweep.pkl``; each variant only re-runs the assembly, threshold 0.4, and is
scored like the model card (top 1.5 Å, visible zone 3 Å, 0.75 Å matching). Prints the mean O/H F1 of
the two first halves and, per set, (O F1, H F1, H class, whole molecules).
"""
import json, os, pickle, sys

import numpy as np
import torch

from hydrafm.predict import molecules as M
from hydrafm.predict.evaluate import _predict_sample
from hydrafm.predict.metrics import Scores, score_atoms
from hydrafm.predict.predictor import resolve_model
from hydrafm.simulate.dataset import AFMDataset
from hydrafm.simulate.labels import LABELS

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
cache = os.path.join(os.environ.get("HYDRAFM_CACHE", os.path.expanduser("~/.cache/hydrafm")), "assembly_sweep.pkl")
if os.path.exists(cache):
    P = pickle.load(open(cache, "rb"))
else:
    net = resolve_model("water", "cpu")
    P = {}
    for k in ("ice", "water", "hydrates"):
        ds = AFMDataset(f"{root}/{k}-heldout")
        n = len(ds) // 2
        for half, idx in (("first", range(n)), ("second", range(n, len(ds)))):
            if k == "hydrates" and half == "first":
                continue
            P[(k, half)] = []
            for i in idx:
                s, pred = _predict_sample(ds, int(i), net, "cpu", True)
                P[(k, half)].append((s.positions, np.array(LABELS)[s.labels], pred))
        print("predicted", k, flush=True)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    pickle.dump(P, open(cache, "wb"))

DEFAULT = dict(W_HBOND=M.W_HBOND, HBOND_CONE=M.HBOND_CONE, MIN_TILT=M.MIN_TILT, MAX_LEVEL_TILT=M.MAX_LEVEL_TILT,
               PEAK_WEIGHT=M.PEAK_WEIGHT, W_SETTLED=M.W_SETTLED, PRIOR=dict(M.PRIOR))


def score(key, **kw):
    for k, v in {**DEFAULT, **kw}.items():
        setattr(M, k, v)
    try:
        tot = Scores()
        for pos, lab, pred in P[key]:
            a = pred.atoms(0.4, True)
            tot.add(score_atoms(a.positions[:, :2], a.arrays["label"], pos, lab, top=1.5, visible=3.0))
    finally:
        for k, v in DEFAULT.items():
            setattr(M, k, v)
    s = tot.summary()
    return s["O"]["f1"], s["H"]["f1"], s["H_orientation"], s["whole_molecules"]


def calib(**kw):
    a, b = score(("ice", "first"), **kw), score(("water", "first"), **kw)
    return round((a[0] + a[1] + b[0] + b[1]) / 4, 4), a, b


if sys.argv[1] == "grid":
    print("default", calib(), flush=True)
    grid = {"W_HBOND": [0.1, 0.6, 1.0], "HBOND_CONE": [15.0, 35.0], "MIN_TILT": [30.0, 50.0],
            "MAX_LEVEL_TILT": [10.0, 30.0], "PEAK_WEIGHT": [0.5, 2.0], "W_SETTLED": [0.0, 0.15],
            "PRIOR": [{"H_up": 0.1, "H_flat": 0.05, "H_down": 0.0}, {"H_up": 0.0, "H_flat": 0.03, "H_down": 0.0},
                      {"H_up": 0.03, "H_flat": 0.0, "H_down": 0.02}]}
    for k, vals in grid.items():
        for v in vals:
            print(k, v, calib(**{k: v}), flush=True)
else:
    kw = json.loads(sys.argv[2])
    for key in (("ice", "second"), ("water", "second"), ("hydrates", "second")):
        print(key, "old", score(key), "new", score(key, **kw), flush=True)
