"""What each part of the robustness protocol costs, and whether a filter before the network pays (issue 14).

    python scripts/degradation_parts.py parts [MODEL]
    python scripts/degradation_parts.py prefilter [MODEL] [--blur 1,1.5] [--highpass 15,30] [--zpoly 2,3]
                                                  [--unsharp 5:1,5:2]
    python scripts/degradation_parts.py denoise [MODEL] [--denoiser FILE] [--halves first|second|all]
                                                [--sets ice,water]

Both score the calibration (first) halves of the held-out ice-like and MD-water sets (made as
``scripts/compare_heldout.py`` says; ``HYDRAFM_EVAL`` points at them), atoms in the top 1.5 Å,
the model's threshold, its mirror images, and print one JSON line per variant with the four
O/H F1 and their mean.

``parts``: clean, the whole protocol (``predict.evaluate.degrade_like_experiment``), and each of
its parts alone (drift, white, pink = 1/f, plane, jump) with the same random draws.
``prefilter``: clean and degraded after a lateral Gaussian blur of σ px, or a per-frame high-pass
(the frame minus its Gaussian blur of σ px), or an unsharp mask (the frame plus a × itself minus its
Gaussian blur of σ px, ``--unsharp σ:a``: more atomic contrast against the broad background), or a fit across heights (each pixel's Δf over the
frames replaced by its least-squares polynomial of degree d in the frame index: the frames' noise
is independent, the signal smooth in height), applied to the frames before the network.
``denoise``: clean and degraded without and with the denoiser (``hydrafm.models.denoise``; the
shipped one unless ``--denoiser``), as Predict runs it; ``--halves``/``--sets`` choose the stacks
(e.g. ``--halves all --sets ice4,water4``).
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial

import numpy as np


def unsharp_mask(frames, sigma: float, amount: float) -> np.ndarray:
    """Each frame plus ``amount`` × (itself minus its Gaussian blur of ``sigma`` px): more atomic contrast
    against the broad background."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(frames, np.float32)
    return x + amount * (x - gaussian_filter(x, (0, sigma, sigma), mode="nearest"))


def _score(model, degrade, prefilter=None, sets=("ice", "water"), halves="first") -> dict:
    from hydrafm.predict.evaluate import evaluate_groups
    from hydrafm.progress import drive
    from hydrafm.simulate.dataset import AFMDataset

    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    row = {}
    for k in sets:
        ds = AFMDataset(f"{root}/{k}-heldout")
        n = len(ds)
        idx = {"first": np.arange(n // 2), "second": np.arange(n // 2, n), "all": np.arange(n)}[halves]
        g = drive(evaluate_groups(ds, model, idx, None, top=1.5, degrade=degrade, visible=3.0,
                                  prefilter=prefilter), show=False).summary()
        row[k] = [round(g["all"]["O"]["f1"], 4), round(g["all"]["H"]["f1"], 4)]
    row["mean"] = round(float(np.mean([v for k in sets for v in row[k]])), 4)
    return row


def main() -> None:
    import torch
    from scipy.ndimage import gaussian_filter

    from hydrafm.predict.evaluate import DEGRADATION_PARTS
    from hydrafm.predict.predictor import resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["parts", "prefilter", "denoise"])
    ap.add_argument("model", nargs="?", default="water")
    ap.add_argument("--blur", default="1,1.5", help="σ (px) of the Gaussian blurs to try")
    ap.add_argument("--highpass", default="15,30", help="σ (px) of the high-passes to try")
    ap.add_argument("--zpoly", default="", help="degrees of the fits across heights to try")
    ap.add_argument("--unsharp", default="", help="σ:amount pairs (σ in px) of unsharp masks to try")
    ap.add_argument("--denoiser", help="denoise: this denoiser file (default: the shipped one)")
    ap.add_argument("--halves", default="first", choices=["first", "second", "all"])
    ap.add_argument("--sets", default="ice,water")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = resolve_model(a.model, "cpu")
    if a.mode == "denoise":
        sets = tuple(a.sets.split(","))
        for den in (False, a.denoiser or True):
            model[1].provenance["denoise"] = den
            clean, degraded = (_score(model, d, None, sets, a.halves) for d in (False, True))
            print(json.dumps({"denoise": den, "halves": a.halves, "clean": clean, "degraded": degraded}),
                  flush=True)
        return
    if a.mode == "parts":
        for name, deg in [("clean", False), ("whole protocol", True)] + [(p, (p,)) for p in DEGRADATION_PARTS]:
            print(json.dumps({"degradation": name, **_score(model, deg)}), flush=True)
        return

    def blur(s):
        return lambda f: gaussian_filter(np.asarray(f, np.float32), (0, s, s))

    def highpass(s):
        return lambda f: np.asarray(f, np.float32) - gaussian_filter(np.asarray(f, np.float32), (0, s, s),
                                                                     mode="nearest")

    def zpoly(d):
        def f(frames):
            x = np.asarray(frames, np.float32)
            v = np.vander(np.linspace(-1, 1, len(x)), d + 1)
            proj = (v @ np.linalg.pinv(v)).astype(np.float32)  # (Z, Z) projection onto the polynomials
            return np.tensordot(proj, x, axes=1)
        return f

    variants = [("none", None)]
    variants += [(f"blur {float(s):g} px", blur(float(s))) for s in a.blur.split(",") if s]
    variants += [(f"high-pass {float(s):g} px", highpass(float(s))) for s in a.highpass.split(",") if s]
    variants += [(f"z-polynomial degree {int(d)}", zpoly(int(d))) for d in a.zpoly.split(",") if d]
    variants += [(f"unsharp {float(p.split(':')[0]):g} px x {float(p.split(':')[1]):g}",
                  partial(unsharp_mask, sigma=float(p.split(":")[0]), amount=float(p.split(":")[1])))
                 for p in a.unsharp.split(",") if p]
    for name, f in variants:
        print(json.dumps({"prefilter": name, "clean": _score(model, False, f), "degraded": _score(model, True, f)}),
              flush=True)


if __name__ == "__main__":
    main()
