"""The ship rules as scripts/judge_candidates.py applies them (R13 for water, R14 for na-hydrate)."""

from __future__ import annotations

import copy
import runpy
from pathlib import Path

judge = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "judge_candidates.py"), run_name="judge")
verdict = judge["verdict"]

SETS = ("ice16", "ice-rt16", "water16", "water-rt16", "icemd16")


def _water(o=0.8, h=0.6, whole=0.4, passing=3):
    row = {"O": o, "H": h, "whole": whole, "class": 0.9}
    return {"clean": {s: dict(row) for s in SETS}, "degraded": {s: dict(row) for s in SETS[::2]},
            "real": {"passing": passing, "n_ions": 0}}


def test_a_water_candidate_ships_only_when_every_item_holds():
    base = _water()
    assert verdict("water", base, _water(o=0.815))["ships"]
    assert not verdict("water", base, _water(o=0.805))["ships"]  # O up by less than 0.01
    fewer = verdict("water", base, _water(o=0.83, h=0.62, passing=2))  # session 48's first candidate
    assert not fewer["ships"] and not fewer["items"]["5_real_versions_not_fewer"]
    one_set_down = copy.deepcopy(_water(o=0.83))
    one_set_down["clean"]["water16"]["O"] = 0.785  # the mean is up, one set down by 0.015
    assert not verdict("water", base, one_set_down)["items"]["1_O_mean_up_0.01_none_down_0.01"]
    worse_degraded = _water(o=0.83)
    for row in worse_degraded["degraded"].values():
        row["H"] = 0.585
    assert not verdict("water", base, worse_degraded)["ships"]


def _na(k=0.95, k_deg=0.9, ions=0):
    def rows(kk):
        return {s: {"O": 0.99, "Na": 0.95, "K": kk, "H": 0.84} for s in ("hydrates3", "hydrates-rt6")}
    return {"clean": rows(k), "degraded": rows(k_deg), "real": {"passing": 0, "n_ions": ions}}


def test_a_na_hydrate_candidate_must_gain_on_the_first_set_and_keep_its_ions_honest():
    base = _na(ions=6)
    assert verdict("na-hydrate", base, _na(k=0.96, k_deg=0.9))["ships"]
    assert not verdict("na-hydrate", base, _na(k=0.95, k_deg=0.9))["ships"]  # clean mean not above
    assert not verdict("na-hydrate", base, _na(k=0.70, k_deg=0.6, ions=0))["ships"]  # session 48's candidate
    assert not verdict("na-hydrate", base, _na(k=0.96, k_deg=0.9, ions=7))["ships"]  # more false ions
