"""Predict as shipped (with the checks its card asks for), one setting varied, on held-out sets.

Unlike ``scripts/assembly_variants.py`` (the assembly alone, from the maps), this runs
``Prediction.atoms`` with the stack's frames, so the O check and the bond-end check run as Predict
runs them. Maps come from the same cache (``HYDRAFM_CACHE/assembly_maps``). One JSON line per set,
one entry per value (O, H F1, H class, whole waters, O precision / recall, and Na / K F1 where the
set has ions)::

    python scripts/predict_variants.py --sets ice,water,hydrates --part cal --constant FIT_SHIFT=0,0.5,1
    python scripts/predict_variants.py --sets ice11,water11 --part all --o-margin 0,-0.05,-0.1
    python scripts/predict_variants.py --model na-hydrate --sets hydrates4 --part all --constant FIT_SHIFT=0,0.5

``--constant NAME=V1,V2`` sets ``hydrafm.predict.molecules.NAME`` for each value; ``--o-margin``
sets the O label margin (``label_margins`` {"O": m}: the O peaks' threshold is the model's + m).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def _constant(name: str, value: float) -> Iterator[None]:
    from hydrafm.predict import molecules

    old = getattr(molecules, name)
    setattr(molecules, name, value)
    try:
        yield
    finally:
        setattr(molecules, name, old)


@contextmanager
def _o_margin(info, value: float) -> Iterator[None]:
    prov = info.provenance
    old = prov.get("label_margins")
    prov["label_margins"] = {**(old or {}), "O": value}
    try:
        yield
    finally:
        if old is None:
            prov.pop("label_margins")
        else:
            prov["label_margins"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="water")
    ap.add_argument("--sets", required=True, help="held-out set keys (HYDRAFM_EVAL/<key>-heldout), comma-separated")
    ap.add_argument("--part", choices=["cal", "held", "all"], default="cal")
    ap.add_argument("--degraded", action="store_true", help="after the robustness protocol")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--constant", metavar="NAME=V1,V2", help="a hydrafm.predict.molecules constant")
    what.add_argument("--o-margin", metavar="M1,M2", help="the O label margin")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, os.path.dirname(__file__))
    from assembly_variants import held_out_scores

    from hydrafm.predict import molecules

    if a.constant:
        name, _, values = a.constant.partition("=")
        if not hasattr(molecules, name) or not values:
            ap.error(f"--constant wants NAME=V1,V2 with NAME a hydrafm.predict.molecules constant, not {a.constant!r}")
        setting: Callable = lambda p, v: _constant(name, v)
        label = name
    else:
        values = a.o_margin
        setting = lambda p, v: _o_margin(p.info, v)
        label = "O margin"

    def way(v: float):
        def atoms_of(p):
            with setting(p, v):
                return p.atoms(None, True)
        return atoms_of

    ways = {f"{label} {float(v):g}": way(float(v)) for v in values.split(",")}
    for key in a.sets.split(","):
        scores = held_out_scores(a.model, key, a.part, a.degraded, ways)
        out = {"model": a.model, "set": key, "part": a.part, "degraded": a.degraded}
        for k, s in scores.items():
            m = s.summary()
            out[k] = {"O": m["O"]["f1"], "H": m["H"]["f1"], "class": round(m["H_orientation"], 4),
                      "whole": round(m["whole_molecules"], 4), "O_precision": m["O"]["precision"],
                      "O_recall": m["O"]["recall"], **{g: m[g]["f1"] for g in ("Na", "K") if g in m}}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
