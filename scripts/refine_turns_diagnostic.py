"""Why the refine's turns miss the wrongly turned waters (docs/refine.md, "The waters the fit drags").

    python scripts/refine_turns_diagnostic.py [--window 2] [-n 4] [--seed 3] [--split train]

Takes window ``--window`` of ``bench_refine.py perturbed -n N --pool ice --split SPLIT --seed SEED`` (the same
draw), refines it with ``--hbond-turns`` and reports, for the waters the perturbation turned: how far the first
coarse stage moved each O (against the other waters), and in each move round whether a candidate within 0.45 Å
of the true H was offered and how its crop loss (before polishing) ranked against the unchanged pose. It wraps
the refine's private move-round functions to watch them; nothing is changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_refine as br

from hydrafm.refine import fit, refine_atoms
from hydrafm.simulate.labels import atom_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--split", default="train")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rounds: list[dict] = []
    crop_losses, move_round = fit._crop_losses, fit._move_round

    def watched_losses(level, cands, *args, **kw):
        losses = yield from crop_losses(level, cands, *args, **kw)
        rounds[-1]["cands"], rounds[-1]["raw"] = cands, np.asarray(losses, float).copy()
        return losses

    def watched_round(level, structure, *args, **kw):
        rounds.append({"O": structure.positions[structure.bodies.numbers == 8].copy(),
                       "score_only": bool(kw.get("score_only"))})
        return (yield from move_round(level, structure, *args, **kw))

    fit._crop_losses, fit._move_round = watched_losses, watched_round
    rng = np.random.default_rng(a.seed)
    for k, (i, pos, numbers) in enumerate(br.held_out_structures(a.n, a.seed, "ice", a.split)):
        stack, _ = br.simulate(pos, numbers, rng)
        start = br.perturb(pos, numbers, rng, 0.3, 0.2)
        if k == a.window:
            break
    truth_lab, lab0 = atom_labels(pos, numbers), atom_labels(start, numbers)
    turned = (lab0 != truth_lab).reshape(-1, 3).any(1)
    res = refine_atoms(stack, br.as_atoms(start, numbers), br.RefineSettings(hbond_turns=True))
    _, lab1 = br.by_molecule(res.atoms, len(pos))
    rounds = [rd for rd in rounds if not rd["score_only"]]  # the fit scores at the end move nothing

    def right(p, m):
        h, t = p[3 * m + 1: 3 * m + 3] - p[3 * m], pos[3 * m + 1: 3 * m + 3] - pos[3 * m]
        return min(np.abs(h - t).max(), np.abs(h[::-1] - t).max()) < 0.45

    report = {"structure": int(i), "waters": len(turned), "turned": int(turned.sum())}
    if len(rounds) > 1:
        moved = np.hypot(*(rounds[1]["O"][:, :2] - rounds[0]["O"][:, :2]).T)
        report["first_stage_O_moved_turned"] = np.round(moved[turned], 2).tolist()
        report["first_stage_O_moved_others_median_p90"] = [round(float(np.median(moved[~turned])), 2),
                                                           round(float(np.percentile(moved[~turned], 90)), 2)]
    for r, rd in enumerate(rounds):
        cands, raw, seen = rd.get("cands", []), rd.get("raw"), []
        for m in np.flatnonzero(turned):
            idx = [j for j, c in enumerate(cands) if c.body == m]
            flips = [j for j in idx if cands[j].kind == "flip"]
            ok = [j for j in flips if right(cands[j].positions, m)]
            if not ok:
                seen.append("not offered" if not flips else f"none right of {len(flips)}")
                continue
            base = next(j for j in idx if cands[j].kind == "base")
            seen.append(f"right: loss {raw[ok[0]]:.4f} vs unchanged {raw[base]:.4f}")
        report[f"round_{r}"] = seen
    report["turned_right_at_the_end"] = int(sum(lab1[3 * m + 1: 3 * m + 3].tolist() == truth_lab[3 * m + 1: 3 * m + 3]
                                                .tolist() for m in np.flatnonzero(turned)))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
