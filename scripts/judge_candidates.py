"""Judge candidate checkpoints (or a GPU run's snapshots) against a shipped model by the ship rules (issue 14).

    python scripts/judge_candidates.py water OUT/water/snapshots.tar OUT/water/water-otf.pt --out judged.json
    python scripts/judge_candidates.py na-hydrate OUT/na-hydrate/snapshots.tar OUT/na-hydrate/water-otf.pt

Candidates in training order (the snapshots first, the final checkpoint last): the last line names the latest that
passes, the one rule R20 ships.

What session 48 did by hand after its GPU run (rules R13, R14, R20 in
``benchmarks/results/rules_2026_11_29_session48.md``), in one command:

1. every candidate (a ``.pt``, or every ``.pt`` in a ``.tar`` of snapshots) without a recorded threshold gets
   one chosen as the shipped one was: the best mean F1 on the calibration halves (``water``: the first halves
   of ``ice`` and ``water``, O and H, no ions; ``na-hydrate``: the first half of ``hydrates``, O, Na, K, H), and
   is copied with it into ``--work``;
2. the shipped model and each candidate are scored with Predict as shipped (``water``: the shipped O check on),
   atoms in the top 1.5 Å, on every stack of ``--sets`` (``$HYDRAFM_EVAL/<set>-heldout``), clean and, on
   ``--degraded-sets``, after the robustness protocol;
3. on the public water/Au(111) stack (``scripts/experimental_plausibility.py``, four mirror images, six
   versions): O found, versions that pass, ions predicted;
4. each candidate's items and verdict (:func:`verdict`), one JSON line each, and ``--out`` with everything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

#: default sets per model kind: the unlooked sets of rule R20 for water, rule R14's for na-hydrate
DEFAULT_SETS = {"water": ("ice16,ice-rt16,water16,water-rt16,icemd16", "ice16,water16,icemd16"),
                "na-hydrate": ("hydrates3,hydrates-rt6", "hydrates3,hydrates-rt6")}


def verdict(kind: str, base: dict, cand: dict) -> dict:
    """Rule R13 (``water``) or R14 (``na-hydrate``) for one candidate: ``{"items": ..., "ships": bool}``.

    ``base`` / ``cand``: ``{"clean": {set: {"O", "H", "whole", ...}}, "degraded": {set: {...}},
    "real": {"passing": int, "n_ions": int}}``, as :func:`main` measures them.
    """
    def mean(d, sets, k):
        return float(np.mean([d[s][k] for s in sets]))

    items = {}
    if kind == "water":
        sets, dsets = list(base["clean"]), list(base["degraded"])
        d_o = [cand["clean"][s]["O"] - base["clean"][s]["O"] for s in sets]
        d_h = [cand["clean"][s]["H"] - base["clean"][s]["H"] for s in sets]
        items["1_O_mean_up_0.01_none_down_0.01"] = (float(np.mean(d_o)) >= 0.01) and min(d_o) >= -0.01
        items["2_H_mean_not_down_0.005_none_down_0.02"] = (float(np.mean(d_h)) >= -0.005) and min(d_h) >= -0.02
        items["3_whole_not_down_0.01"] = mean(cand["clean"], sets, "whole") - mean(base["clean"], sets, "whole") >= -0.01
        items["4_degraded_O_H_not_down_0.01"] = all(
            mean(cand["degraded"], dsets, k) - mean(base["degraded"], dsets, k) >= -0.01 for k in ("O", "H"))
        items["5_real_versions_not_fewer"] = cand["real"]["passing"] >= base["real"]["passing"]
    else:
        first = next(iter(base["clean"]))

        def four(d, s):
            return float(np.mean([d[s][k] for k in ("O", "Na", "K", "H")]))

        items["1_first_set_clean_mean_up"] = four(cand["clean"], first) > four(base["clean"], first)
        items["2_first_set_degraded_mean_not_down"] = four(cand["degraded"], first) >= four(base["degraded"], first)
        items["3_other_sets_not_down_0.005"] = all(
            four(cand[p], s) - four(base[p], s) >= -0.005
            for p in ("clean", "degraded") for s in list(base[p])[1:])
        items["4_real_ions_not_more"] = cand["real"]["n_ions"] <= base["real"]["n_ions"]
    return {"items": items, "ships": all(items.values())}


def _candidates(paths: list[str], work: Path) -> list[Path]:
    """The checkpoints named, with every ``.pt`` of each ``.tar`` unpacked into ``work``."""
    out = []
    for p in map(Path, paths):
        if p.suffix == ".tar":
            dest = work / p.parent.name / p.stem
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(p) as tar:
                tar.extractall(dest, filter="data")
            out += sorted(dest.glob("*.pt"))
        elif p.exists():
            out.append(p)
        else:
            raise SystemExit(f"{p}: no such checkpoint or snapshot tar")
    return out


def _calibrated(path: Path, kind: str, work: Path, root: str) -> Path:
    """``path`` itself when it records a threshold, else a copy in ``work`` with one chosen on the
    calibration halves (as ``scripts/compare_heldout.py`` chooses it)."""
    from hydrafm.models.checkpoint import load_checkpoint, save_checkpoint
    from hydrafm.predict.evaluate import calibrate_threshold
    from hydrafm.predict.predictor import resolve_model
    from hydrafm.progress import drive
    from hydrafm.simulate.dataset import AFMDataset

    model, info, _ = load_checkpoint(path)
    if "threshold" in info.provenance:
        return path
    net = resolve_model(str(path), "cpu")
    sets, classes = (("ice", "water"), ("O", "H")) if kind == "water" else (("hydrates",), ("O", "Na", "K", "H"))
    if kind == "water":
        net[1].provenance["ions"] = False
    t, _ = drive(calibrate_threshold([AFMDataset(f"{root}/{k}-heldout") for k in sets], net, classes, top=1.5,
                                     flips=True, visible=3.0), show=False)
    info.provenance["threshold"] = float(t)
    out = work / f"{path.parent.name}-{path.stem}-calibrated.pt"
    save_checkpoint(out, model, info)
    return out


def _measure(model: str, kind: str, sets: list[str], dsets: list[str]) -> dict:
    """Predict as shipped on the sets (clean, degraded) and on the water/Au(111) stack."""
    sys.path.insert(0, os.path.dirname(__file__))
    from assembly_variants import held_out_scores
    from experimental_plausibility import DEFAULT, passes, score, variants

    from hydrafm.io import load_stack

    checks = {"o_check": True} if kind == "water" else {}
    ways = {"as shipped": lambda p: p.atoms(None, True, **checks)}
    out: dict = {"clean": {}, "degraded": {}}
    for part, names in (("clean", sets), ("degraded", dsets)):
        for key in names:
            m = held_out_scores(model, key, "all", part == "degraded", ways)["as shipped"].summary()
            row = {"O": m["O"]["f1"], "H": m["H"]["f1"], "class": m["H_orientation"], "whole": m["whole_molecules"]}
            row.update({ion: m[ion]["f1"] for ion in ("Na", "K") if ion in m})
            out[part][key] = row
    if DEFAULT.exists():
        stack = load_stack(DEFAULT)
        row, _ = score(stack, model, None, True, checks=checks)
        vs = [score(v, model, None, True, checks=checks)[0] for _, v in variants(stack)]
        out["real"] = {"n_O": row["n_O"], "passing": sum(passes(v) for v in vs),
                       "n_ions": sum(v["n_ions"] for v in vs), "O_per_version": [v["n_O"] for v in vs]}
    else:
        out["real"] = {"n_O": None, "passing": 0, "n_ions": 0, "note": f"{DEFAULT} not found"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=sorted(DEFAULT_SETS))
    ap.add_argument("candidates", nargs="+", help="checkpoints (.pt) or snapshot tars (.tar)")
    ap.add_argument("--sets", help="held-out sets scored clean (default: the rule's)")
    ap.add_argument("--degraded-sets", help="held-out sets scored degraded (default: the rule's)")
    ap.add_argument("--work", type=Path, default=Path("judged"), help="where calibrated copies go")
    ap.add_argument("--out", type=Path, help="write everything as JSON")
    a = ap.parse_args()
    root = os.environ.get("HYDRAFM_EVAL", "/work/cache/eval")
    sets = (a.sets or DEFAULT_SETS[a.kind][0]).split(",")
    dsets = (a.degraded_sets or DEFAULT_SETS[a.kind][1]).split(",")
    a.work.mkdir(parents=True, exist_ok=True)
    base = _measure(a.kind, a.kind, sets, dsets)
    print(json.dumps({"model": a.kind, **base}), flush=True)
    rows = []
    for path in _candidates(a.candidates, a.work):
        model = _calibrated(path, a.kind, a.work, root)
        got = _measure(str(model), a.kind, sets, dsets)
        rows.append({"candidate": str(path), "calibrated": str(model), **got, **verdict(a.kind, base, got)})
        print(json.dumps(rows[-1]), flush=True)
    passing = [r["candidate"] for r in rows if r["ships"]]
    print(json.dumps({"passing": passing, "latest_passing": passing[-1] if passing else None}), flush=True)
    if a.out:
        a.out.write_text(json.dumps({"shipped": base, "candidates": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
