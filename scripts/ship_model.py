"""Calibrate a trained checkpoint's threshold on held-out data, score it, and ship it in the package.

    python scripts/ship_model.py CKPT NAME DATASET [--val-runs 4,13 | --indices A:B] [-n 200] \\
        [--summary "..."] [--also-top 2.0] [--overwrite]
    python scripts/ship_model.py CKPT NAME --compare compare.json [--summary "..."] [--overwrite]

With ``--compare``, the threshold and the scores are those ``scripts/compare_heldout.py``
measured for CKPT (threshold on the first halves of the held-out ice-like and MD-water sets,
scores per set, family and distance regime on the second halves, clean and degraded). Label
margins CKPT records (``scripts/label_margins.py``; the comparison used them) are kept.

The held-out samples are split in two: the threshold with the best mean F1 is chosen
on the first half and the scores are measured on the second half, which neither
training nor the calibration saw. The checkpoint is copied to
src/hydrafm/models/weights/NAME.pt with the threshold, the scores and a summary in its
provenance, and the numbers go to docs/models/NAME.json for the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from hydrafm.cli import _split_water_runs
    from hydrafm.models.checkpoint import load_checkpoint, save_checkpoint
    from hydrafm.predict.evaluate import best_threshold, evaluate_thresholds
    from hydrafm.progress import drive
    from hydrafm.simulate.dataset import AFMDataset

    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("name")
    ap.add_argument("dataset", type=Path, nargs="?", help="dataset holding the held-out samples")
    ap.add_argument("--compare", type=Path, help="take threshold and scores from scripts/compare_heldout.py output")
    ap.add_argument("--val-runs", help="water: the MD runs held out in training (e.g. 4,13)")
    ap.add_argument("--indices", help="A:B, the held-out sample indices of DATASET")
    ap.add_argument("-n", type=int, default=200, help="held-out samples used (half calibrate, half score)")
    ap.add_argument("--top", type=float, default=3.0)
    ap.add_argument("--also-top", type=float, help="also report scores for this depth")
    ap.add_argument("--summary", default="")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-ions", action="store_true", help="the model reports no Na/K atoms (its ion maps are left out)")
    args = ap.parse_args()

    if args.compare:
        return ship_compared(args)
    if args.dataset is None:
        sys.exit("give a DATASET or --compare")
    ds = AFMDataset(args.dataset)
    if args.val_runs:
        idx = _split_water_runs(ds, args.val_runs)[1]
    elif args.indices:
        a, b = (int(v) for v in args.indices.split(":"))
        idx = np.arange(a, min(b, len(ds)))
    else:
        idx = np.arange(len(ds))
    idx = np.random.default_rng(0).permutation(idx)[: args.n]
    calib, report = np.sort(idx[: len(idx) // 2]), np.sort(idx[len(idx) // 2 :])
    thresholds = np.round(np.arange(0.1, 0.751, 0.05), 2).tolist()
    net, info, _ = load_checkpoint(args.checkpoint)
    sweep = drive(evaluate_thresholds(ds, (net, info), calib, thresholds, top=args.top))
    t = best_threshold(sweep)
    scores = drive(evaluate_thresholds(ds, (net, info), report, [t], top=args.top))[t].summary()
    result = {"name": args.name, "threshold": t, "top": args.top, "scores": scores,
              "calibration": {str(k): {g: v["f1"] for g, v in s.summary().items() if isinstance(v, dict)}
                              for k, s in sweep.items()},
              "held_out": {"dataset": str(args.dataset), "val_runs": args.val_runs, "indices": args.indices,
                           "calibration_samples": len(calib), "scored_samples": len(report)}}
    if args.also_top:
        result[f"scores_top{args.also_top:g}"] = drive(
            evaluate_thresholds(ds, (net, info), report, [t], top=args.also_top))[t].summary()
    out = ROOT / "src" / "hydrafm" / "models" / "weights" / f"{args.name}.pt"
    if out.exists() and not args.overwrite:
        sys.exit(f"{out} exists; pass --overwrite")
    info.provenance.update({"threshold": t, "metrics": scores, "summary": args.summary,
                            "held_out": result["held_out"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, net, info)
    _write_card_numbers(args.name, result)
    print(json.dumps(result))


def _write_card_numbers(name: str, result: dict) -> None:
    """docs/models/NAME.json := ``result``; the model it replaces goes under ``previous`` and the
    records of candidates not shipped (``not_shipped_*``) stay."""
    path = ROOT / "docs" / "models" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = json.loads(path.read_text())
        kept = {k: v for k, v in old.items() if k.startswith("not_shipped_")}
        result = {**result, "previous": {k: v for k, v in old.items() if k not in kept}, **kept}
    path.write_text(json.dumps(result, indent=1))


def ship_compared(args) -> None:
    """Ship CKPT with the threshold and held-out scores compare_heldout.py measured for it."""
    from hydrafm.models.checkpoint import INHERITED, load_checkpoint, save_checkpoint

    table = json.loads(args.compare.read_text())
    key = next((k for k in table if Path(k).resolve() == args.checkpoint.resolve()), None)
    if key is None:
        sys.exit(f"{args.checkpoint} is not in {args.compare} (has: {', '.join(table)})")
    res = table[key]
    t = float(res["threshold"])
    flips, top, calib = bool(res.get("flips", False)), float(res.get("top", 3.0)), res.get("calibrated_on", "ice,water")
    # the scored sets are the entries holding scores; every other key is how they were measured
    sets = {k: v for k, v in res.items() if isinstance(v, dict) and "all" in v}
    result = {"name": args.name, "threshold": t, "flips": flips, "top": top, "visible": res.get("visible"),
              "scores": sets,
              "calibration": res["calibration"],
              "held_out": {"how": f"scripts/compare_heldout.py: threshold on the first halves of the {calib} "
                                  "held-out sets, scores on the second halves (48 stacks each)"
                                  + (", averaging the four mirror images" if flips else ""),
                           "sets": "hydrafm simulate {ice,water,hydrates} -n 96 --split held-out --distance 2.5:3.5 "
                                   "--seed 7 --shard-size 16"}}
    out = ROOT / "src" / "hydrafm" / "models" / "weights" / f"{args.name}.pt"
    if out.exists() and not args.overwrite:
        sys.exit(f"{out} exists; pass --overwrite")
    net, info, _ = load_checkpoint(args.checkpoint)
    groups = ("O", "H") if args.no_ions else ("O", "Na", "K", "H")  # no ion scores for a model that reports none
    flat = {f"{g} ({k})": sets[k]["all"][g] for k in sets if not k.endswith("_degraded")
            for g in groups if g in sets[k]["all"]}
    if res.get("ions", True) != (not args.no_ions):
        sys.exit(f"{args.compare} was measured with ions={res.get('ions', True)}; ship with the same setting")
    info.provenance.update({"threshold": t, "flips": flips, "ions": not args.no_ions, "metrics": flat, "held_out_scores": sets, "summary": args.summary,
                            "held_out": result["held_out"], "scored_top": top, "scored_visible": res.get("visible")})
    for key in INHERITED:  # prediction settings chosen on calibration data, put into CKPT before the comparison
        if info.provenance.get(key):
            result[key] = info.provenance[key]
    save_checkpoint(out, net, info)
    _write_card_numbers(args.name, result)
    print(json.dumps({"shipped": str(out), "threshold": t}))


if __name__ == "__main__":
    main()
