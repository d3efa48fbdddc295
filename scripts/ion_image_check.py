"""Can the image itself tell Na⁺ from K⁺? A check through the simulator, on held-out hydrate clusters.

    python scripts/ion_image_check.py [-n 40] [--seed 0] [--model na-hydrate]

For ``n`` held-out clusters of the ``hydrates`` pool (indices 2000–2399, never trained on),
centred in the 25 Å window and simulated with the torch engine (closest probe 2.5–3.5 Å):

* **truth**: the true structure is simulated again with each ion swapped (Na ↔ K); the swap
  should fit the stack worse (mean squared Δf difference within 2.5 Å of the ion, all heights);
* **prediction**: at each ion the model predicts within 1 Å of a true ion, its predicted
  structure is simulated with that ion as Na and as K (the true tip, placed the same height
  above the true top); the element that fits the stack better is the image's pick.

Prints the image's picks against the truth and the network's labels, and the relative size
of the Na/K difference. The tip is given, not fitted: this is the most the image can say.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from hydrafm.paths import pool_path
from hydrafm.predict.predictor import predict_atoms, resolve_model
from hydrafm.simulate.engine import TorchSimulator
from hydrafm.simulate.settings import SampledTip, SimulationSettings
from hydrafm.structures.pool import StructurePool

NA, K = 11, 19


def crop_error(sim, data, pixel, positions, numbers, centre, distance, radius=2.5) -> float:
    """Mean squared Δf difference (all heights) within ``radius`` Å of ``centre`` (x, y)."""
    frames = np.asarray(sim.simulate(positions, numbers, SampledTip(distance)).data, float)
    ny, nx = data.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    near = np.hypot((xx + 0.5) * pixel - centre[0], (yy + 0.5) * pixel - centre[1]) <= radius
    return float(((frames - data)[:, near] ** 2).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="na-hydrate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pool = StructurePool.load(pool_path("hydrates"))
    settings = SimulationSettings()
    sim = TorchSimulator(settings)
    model = resolve_model(args.model)
    rng = np.random.default_rng(args.seed)
    truth_right, picks, gaps = [], [], []
    for idx in rng.choice(np.arange(2000, len(pool)), args.n, replace=False):
        pos, num = pool.arrays(int(idx))
        pos = pos.copy()
        pos[:, :2] += settings.scan_size / 2 - pos[:, :2].mean(0)
        distance = float(rng.uniform(2.5, 3.5))
        stack = sim.simulate(pos, num, SampledTip(distance))
        data, pixel = np.asarray(stack.data, float), stack.pixel_size[0]
        ions = np.flatnonzero(np.isin(num, [NA, K]))
        for i in ions:
            swapped = num.copy()
            swapped[i] = NA + K - num[i]
            truth_right.append(crop_error(sim, data, pixel, pos, num, pos[i], distance)
                               < crop_error(sim, data, pixel, pos, swapped, pos[i], distance))
        pred = predict_atoms(stack, model)
        labels = np.asarray(pred.arrays["label"]).astype(str)
        # the engine puts the probe ``distance`` above the structure's highest atom: keep the true tip height
        pred_distance = distance + pos[:, 2].max() - pred.positions[:, 2].max()
        for j in np.flatnonzero(np.isin(labels, ["Na", "K"])):
            lateral = np.hypot(*(pos[ions, :2] - pred.positions[j, :2]).T)
            if lateral.min() > 1.0:
                continue
            true_element = int(num[ions[np.argmin(lateral)]])
            err = {}
            for element in (NA, K):
                trial = pred.numbers.copy()
                trial[j] = element
                err[element] = crop_error(sim, data, pixel, pred.positions, trial, pred.positions[j], pred_distance)
            pick = min(err, key=err.get)
            picks.append((true_element, int(pred.numbers[j]), pick))
            gaps.append(abs(err[NA] - err[K]) / max(err[NA], err[K]))
    print(f"truth, one ion swapped: the image prefers the true ion at {sum(truth_right)} of {len(truth_right)}")
    if picks:
        p = np.array(picks)
        print(f"predicted ions on true ions: {len(p)}; the network's label right at {(p[:, 0] == p[:, 1]).sum()}, "
              f"the image's pick right at {(p[:, 0] == p[:, 2]).sum()}; Na/K difference "
              f"{100 * np.median(gaps):.1f} % of the crop's mismatch (median)")


if __name__ == "__main__":
    main()
