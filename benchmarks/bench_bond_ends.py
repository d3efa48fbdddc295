"""What the opt-in checks cost Predict: the maps → molecules step without them, with the bond-end check,
with the O check, and with both.

    python benchmarks/bench_bond_ends.py [DATASET] [-n 8] [--threads 2]

DATASET: simulated stacks (``hydrafm simulate``; default ``$HYDRAFM_EVAL/ice4-heldout``, held-out ice-like
layers). The maps are made once per stack; ``Prediction.atoms`` is timed twice each way.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from hydrafm.predict.predictor import iter_predict_maps
from hydrafm.progress import drive
from hydrafm.simulate.dataset import AFMDataset
from hydrafm.stack import AFMStack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", nargs="?", default=os.path.join(os.environ.get("HYDRAFM_EVAL", "."), "ice4-heldout"))
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="water")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = AFMDataset(a.dataset)
    st = ds.settings
    ways = {"without": {}, "with_bond_ends": {"bond_ends": True}, "with_o_check": {"o_check": True},
            "with_both": {"bond_ends": True, "o_check": True}}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(min(a.n, len(ds))):
        s = ds[i]
        stack = AFMStack(s.stack, (st.pixel_size,) * 2, np.arange(st.n_heights) * st.dz, (st.pixel_size / 2,) * 2)
        p = drive(iter_predict_maps(stack, a.model, depth=False), show=False)
        for _ in range(2):
            for way, checks in ways.items():
                t = time.perf_counter()
                p.atoms(None, bond_ends=checks.get("bond_ends", False), o_check=checks.get("o_check", False))
                times[way].append(time.perf_counter() - t)
    print(json.dumps({"dataset": a.dataset, "stacks": min(a.n, len(ds)), "threads": a.threads,
                      "maps_to_molecules_ms_median": {k: round(1000 * float(np.median(v)), 1)
                                                      for k, v in times.items()}}))


if __name__ == "__main__":
    main()
