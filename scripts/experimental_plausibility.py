"""Plausibility of predicted water on the public experimental water/Au(111) stack (issue 14).

    python scripts/experimental_plausibility.py [MODEL ...] [--stack PATH] [--threshold T] [--flips] [--out JSON] [--png PNG]
    python scripts/experimental_plausibility.py MODEL ... --flips --threshold T --variants
    python scripts/experimental_plausibility.py water --o-check [FILE] | --no-o-check [--bond-ends]  # Predict's checks
    python scripts/experimental_plausibility.py water --flips --variants --height-step 0.2   # frames assumed 0.2 Å apart

There is no ground truth for a real scan, so this reports what a microscopist would check
first, per model (shipped name or checkpoint file):

* ``n_O`` and the median O–O nearest-neighbour distance (target 2.5–3.1 Å: H-bonded water);
* ``O_with_two_H_peaks``: the share of O whose two assembled H both stand on an H peak of
  the network (loose atoms within 0.6 Å) — the evidence, not the assembly, which gives every
  O two H by construction (``O_with_two_H``, reported as well);
* ``n_ions``: Na⁺/K⁺ predicted (models that report ions): the stack holds water only, so every
  one is false;
* an overlay of the O and H on the closest frame (``--png``);
* with ``--variants``, the same check on six versions of the stack that should not change the
  answer: which 10 of its 12 frames are used (the closest first, or starting one or two frames
  farther: the height spacing is unknown) × the whole field or its central 75 % (the
  normalisation sees a different share of empty gold). The stack holds only ~10 O, so one
  checkpoint's single answer moves with one or two O; the number of variants that pass
  (median O–O within 2.5–3.1 Å) is the steadier count.

The stack (``../shared/testdata/jiang_lab_water_Au111/L1_20_L2_1Ying_Jiang_1.npz``, ml-spm's
experimental layout, 12 frames over 32 Å) is read from ``../shared`` and never copied.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[2] / "shared/testdata/jiang_lab_water_Au111/L1_20_L2_1Ying_Jiang_1.npz"


def score(stack, model: str, threshold: float | None = None, flips: bool | None = None,
          denoise=None, checks: dict | None = None) -> tuple[dict, object]:
    from hydrafm.predict.predictor import iter_predict_maps
    from hydrafm.progress import drive

    pred = drive(iter_predict_maps(stack, model, "cpu", flips=flips, denoise=denoise), show=False)
    mol = pred.atoms(threshold, **(checks or {}))
    loose = pred.atoms(threshold, molecules=False)
    lab, ids = mol.arrays["label"], mol.arrays["mol"]
    from scipy.spatial import cKDTree

    o = np.flatnonzero(lab == "O")
    nn = cKDTree(mol.positions[o, :2]).query(mol.positions[o, :2], k=2)[0][:, 1] if len(o) > 1 else np.array([])
    hpk = loose.positions[np.char.startswith(loose.arrays["label"].astype(str), "H"), :2]
    peaks = cKDTree(hpk) if len(hpk) else None
    two, two_peaks = 0, 0
    for k in o:
        hs = np.flatnonzero((ids == ids[k]) & np.char.startswith(lab.astype(str), "H"))
        two += len(hs) == 2
        if len(hs) == 2 and peaks is not None:
            two_peaks += bool((peaks.query(mol.positions[hs, :2])[0] <= 0.6).all())
    n = max(len(o), 1)
    n_ions = int(np.isin(lab.astype(str), ("Na", "K")).sum())
    return {"model": model, "threshold": float(mol.info["threshold"]), "n_O": int(len(o)), "n_ions": n_ions,
            "n_H_peaks": int(len(hpk)), "median_OO_nn": float(np.median(nn)) if len(nn) else None,
            "O_with_two_H": two / n, "O_with_two_H_peaks": two_peaks / n}, mol


PLAUSIBLE_OO = (2.5, 3.1)  # Å: the median O–O nearest neighbour of H-bonded water (issue 14)


def variants(stack, n: int = 10):
    """``(name, stack)`` for the six versions of ``stack`` that ``--variants`` checks: ``n``
    frames starting at the closest, one or two farther, × the whole field or its central 75 %."""
    out = []
    for first in range(min(3, stack.n_heights - n + 1)):
        for keep in (1.0, 0.75):
            ny, nx = stack.data.shape[-2:]
            cy, cx = round(ny * (1 - keep) / 2), round(nx * (1 - keep) / 2)
            data = stack.data[first:first + n, cy:ny - cy, cx:nx - cx]
            origin = (stack.origin[0] + cy * stack.pixel_size[0], stack.origin[1] + cx * stack.pixel_size[1])
            heights = None if stack.heights is None else \
                np.asarray(stack.heights[first:first + n]) - stack.heights[first]
            out.append((f"frames {first}-{first + n - 1}, field {keep:.0%}",
                        stack.with_data(np.ascontiguousarray(data), origin=origin, heights=heights)))
    return out


def passes(row: dict) -> bool:
    """The median O–O nearest neighbour lies in :data:`PLAUSIBLE_OO`."""
    d = row["median_OO_nn"]
    return d is not None and PLAUSIBLE_OO[0] <= d <= PLAUSIBLE_OO[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["water"])
    ap.add_argument("--stack", type=Path, default=DEFAULT)
    ap.add_argument("--out", type=Path, help="write the numbers as JSON")
    ap.add_argument("--png", type=Path, help="overlay picture, one panel per model")
    ap.add_argument("--flips", action="store_true", help="average the four mirror images for every model (a "
                    "training checkpoint does not record it; shipped models say what they want)")
    ap.add_argument("--threshold", type=float, help="peak threshold for every model (default: each model's own; "
                    "give the calibrated one when checking a checkpoint before it is shipped)")
    ap.add_argument("--variants", action="store_true", help="also check six versions of the stack (frames "
                    "0-9, 1-10, 2-11 × whole field / central 75 %%) and count those that pass")
    ap.add_argument("--denoise", nargs="?", const=True, default=None, metavar="FILE",
                    help="denoise first with the shipped denoiser (or FILE); --no-denoise: never")
    ap.add_argument("--no-denoise", dest="denoise", action="store_const", const=False)
    ap.add_argument("--o-check", nargs="?", const=True, default=None, metavar="FILE",
                    help="Predict's O check (docs/predict.md), or the check in FILE; default: as the model's card "
                         "says (water's asks for it); --no-o-check: never")
    ap.add_argument("--no-o-check", dest="o_check", action="store_const", const=False)
    ap.add_argument("--bond-ends", action="store_true", help="Predict's opt-in bond-end check")
    ap.add_argument("--height-step", type=float, metavar="DZ",
                    help="read the stack as if its frames were DZ Å apart (Predict then interpolates to the "
                         "model's step); default: heights unknown, as the file says")
    args = ap.parse_args()
    checks = {} if args.o_check is None else {"o_check": args.o_check}
    if args.bond_ends:
        checks["bond_ends"] = True
    from hydrafm.io import load_stack

    if not args.stack.exists():
        raise SystemExit(f"{args.stack}: not found (the public test data live in ../shared/testdata)")
    stack = load_stack(args.stack)
    if args.height_step:
        stack = stack.with_data(stack.data, heights=np.arange(stack.n_heights) * args.height_step)
    rows, mols = [], []
    for m in args.models:
        row, mol = score(stack, m, args.threshold, True if args.flips else None, args.denoise, checks)
        row["denoise"] = args.denoise
        row.update({k: mol.info.get(k) for k in ("o_check", "bond_ends")})
        if args.variants:
            row["variants"] = []
            for name, st in variants(stack):
                v, _ = score(st, m, args.threshold, True if args.flips else None, args.denoise, checks)
                row["variants"].append({"stack": name, "n_O": v["n_O"], "median_OO_nn": v["median_OO_nn"],
                                        "n_ions": v["n_ions"], "passes": passes(v)})
            row["variants_passing"] = sum(v["passes"] for v in row["variants"])
            row["variants_ions"] = sum(v["n_ions"] for v in row["variants"])
        rows.append(row)
        mols.append(mol)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ny, nx = stack.data.shape[-2:]
        (py, px), (oy, ox) = stack.pixel_size, stack.origin
        ext = [ox - px / 2, ox + (nx - 0.5) * px, oy - py / 2, oy + (ny - 0.5) * py]
        fig, axes = plt.subplots(1, len(mols), figsize=(4 * len(mols), 4), squeeze=False)
        for ax, mol, row in zip(axes[0], mols, rows):
            ax.imshow(stack.data[0], cmap="gray", origin="lower", extent=ext)
            lab = mol.arrays["label"]
            for name, colour in (("O", "red"), ("H_up", "white"), ("H_flat", "yellow"), ("H_down", "cyan")):
                p = mol.positions[lab == name]
                ax.plot(p[:, 0], p[:, 1], "o", ms=5 if name == "O" else 3, color=colour, mec="k", mew=0.4)
            ax.set_title(f"{Path(row['model']).stem}: {row['n_O']} O, O–O {row['median_OO_nn'] or 0:.2f} Å",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
