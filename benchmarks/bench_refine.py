"""Refine benchmark: simulated stacks of held-out structures, and the public experimental water/Au(111) stack.

    python benchmarks/bench_refine.py perturbed -n 3 [--threads 2] [--steps 60]
    python benchmarks/bench_refine.py predict -n 3
    python benchmarks/bench_refine.py experiment [--figure docs/images/refine_experiment.png]

``perturbed``: held-out MD water windows (pool ``water``, runs 4 and 13, never trained on;
``--pool ice``: the ice pool's held-out Pt(111) bilayers and 4–8-ring networks),
simulated at 128 px over 25 Å, 10 heights 0.1 Å apart, 1 Å amplitude, CO tip at a random
closest distance 2.3–2.9 Å (no tilt). The truth is perturbed: every molecule shifted
rigidly by 0.3 Å RMS (3D) and 20 % of the waters turned so that their H classes change.
Scores: the fraction of atoms back within 0.2 Å of the truth laterally, and in 3D after
removing the common z offset (a scan fixes heights only up to the tip distance), and the
fraction of H with the right class; over all atoms and over those in the top 2 Å; per window also a
``breakdown`` by depth and of the turned waters' O (where the atoms are lost).
``predict``: the shipped ``water`` model's molecules for the same kind of stacks, scored
with ``hydrafm.predict.metrics.score_atoms`` (top 2 Å, as the model card) before and after;
``--pool hydrates --model na-hydrate``: windows of 1–3 held-out Na⁺/K⁺ hydrates (clusters
2000–2399, composed as training composes them) and the hydrate model.
Diagnostics (what limits the refine): ``predict --start oracle-z`` moves each predicted
molecule rigidly in z to the height of the true O nearest it (laterally); ``--start oracle-o``
moves it rigidly onto that true O (the O exact, Predict's H orientation kept; both drop
predicted H that belong to no O); ``--start oracle-mol`` replaces it by that true molecule (only the
missing molecules are wrong); ``--oracle-error E`` then shifts each placed molecule sideways
by a random E Å RMS (how exact the O must be). ``perturbed --known-tip`` gives the refine the true tip
(distance, stiffness, charge) and no drift to fit.
``--split train`` takes training windows instead (the ice pool's training families, MD runs other than 4
and 13): to choose a setting without looking at the held-out ones.
``experiment``: the Jiang-lab water/Au(111) stack from ``../shared/testdata``: the
model's molecules refined; residual and per-frame correlation before and after.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from hydrafm.refine import RefineSettings, refine_atoms
from hydrafm.refine.bodies import rotate
from hydrafm.simulate.engine import TorchSimulator
from hydrafm.simulate.labels import atom_labels, h_labels
from hydrafm.simulate.settings import SampledTip, SimulationSettings

TESTDATA = Path(os.environ.get("HYDRAFM_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


#: held-out ice-pool families of water only (the hydrate-in-network ones hold ions)
ICE_FAMILIES = ("bilayer-Pt111", "amorphous-8ring")


def held_out_structures(n: int, seed: int, pool_name: str = "water", split: str = "held-out"):
    """``n`` random held-out windows: MD water runs 4 and 13, or the ice pool's held-out water-only families.

    ``split="train"``: windows of the training part instead (to choose a setting without looking at held-out data).
    """
    from hydrafm.paths import pool_path
    from hydrafm.structures.pool import StructurePool

    if pool_name == "hydrates":  # 1–3 clusters per window, composed as training does, from the pool's split
        from hydrafm.structures.hydrates import compose_hydrate_window
        from hydrafm.training.onthefly import default_split

        source = default_split("hydrates")[0 if split == "train" else 1]
        clusters = source.pool.subset(source.indices)
        rng = np.random.default_rng(seed)
        for _ in range(n):
            pos, numbers, picked = compose_hydrate_window(clusters, rng, (25.0, 25.0))
            yield int(source.indices[picked[0]]), pos, numbers
        return
    pool = StructurePool.load(pool_path(pool_name))
    if pool_name == "ice":
        from hydrafm.structures.ice import held_out_mask

        family = np.asarray(pool.info["family"]).astype(str)
        water_only = np.array([not f.startswith("hydrate") for f in family])
        idx = np.flatnonzero(held_out_mask(pool) & np.isin(family, ICE_FAMILIES) if split == "held-out"
                             else ~held_out_mask(pool) & water_only)
    else:
        from hydrafm.training.train import VAL_RUNS

        held = np.isin(pool.info["run"], VAL_RUNS)
        idx = np.flatnonzero(held if split == "held-out" else ~held)
    rng = np.random.default_rng(seed)
    for i in rng.choice(idx, n, replace=False):
        pos, numbers = pool.arrays(int(i))
        yield int(i), pos, numbers


def simulate(pos, numbers, rng):
    s = SimulationSettings()
    tip = SampledTip(float(rng.uniform(2.3, 2.9)))
    return TorchSimulator(s).simulate(pos, numbers, tip), tip


def perturb(pos, numbers, rng, rms=0.3, wrong=0.2):
    """Every molecule shifted rigidly (0.3 Å RMS in 3D); 20 % of waters turned to other H classes."""
    out = pos.copy()
    mols = pos.reshape(-1, 3, 3)
    n = len(mols)
    flip = rng.choice(n, int(round(wrong * n)), replace=False)
    for m in range(n):
        o, hs = mols[m, 0], mols[m, 1:]
        if m in flip:
            cur = tuple(h_labels(hs - o))
            for _ in range(200):
                axis = rng.normal(size=3)
                axis /= np.linalg.norm(axis)
                new = o + rotate(hs - o, axis, rng.uniform(np.radians(60), np.pi))
                if tuple(h_labels(new - o)) != cur:
                    hs = new
                    break
        shift = rng.normal(0, rms / np.sqrt(3), 3)
        out[3 * m] = o + shift
        out[3 * m + 1:3 * m + 3] = hs + shift
    return out


def as_atoms(pos, numbers, mol=True):
    atoms = Atoms(numbers=numbers, positions=pos)
    atoms.new_array("label", atom_labels(pos, numbers))
    atoms.new_array("confidence", np.ones(len(numbers)))
    if mol:
        atoms.new_array("mol", np.repeat(np.arange(len(numbers) // 3), 3))
    return atoms


def by_molecule(atoms, n):
    """Positions and labels of the refined atoms in the truth's order (NaN / '' for removed molecules)."""
    pos = np.full((n, 3), np.nan)
    lab = np.full(n, "", dtype="<U6")
    mol = np.asarray(atoms.arrays["mol"])
    for m in np.unique(mol[(mol >= 0) & (mol < n // 3)]):
        sel = np.flatnonzero(mol == m)
        pos[3 * m:3 * m + len(sel)] = atoms.positions[sel][:3]
        lab[3 * m:3 * m + len(sel)] = np.asarray(atoms.arrays["label"])[sel][:3]
    return pos, lab


def recovery(pos, truth, labels, true_labels, top):
    lat = np.nan_to_num(np.hypot(*(pos - truth)[:, :2].T), nan=99.0)
    dz = (pos - truth)[:, 2]
    d3 = np.nan_to_num(np.sqrt(lat**2 + (dz - np.nanmedian(dz)) ** 2), nan=99.0)
    h = np.char.startswith(true_labels.astype(str), "H")
    return {"lateral_0.2": float(np.mean(lat[top] <= 0.2)), "3d_0.2": float(np.mean(d3[top] <= 0.2)),
            "h_class": float(np.mean(labels[top & h] == true_labels[top & h]))}


def breakdown(start, pos1, truth, numbers, start_labels, true_labels) -> dict:
    """Where the atoms are lost (top 2 Å): O and H in the top 1 Å and 1–2 Å below the highest atom, and the O of
    the waters the perturbation turned apart from the others; each [atoms, within 0.2 Å laterally before, after,
    median lateral error after (Å)]."""
    depth = truth[:, 2].max() - truth[:, 2]
    lat0 = np.hypot(*(start - truth)[:, :2].T)
    lat1 = np.nan_to_num(np.hypot(*(pos1 - truth)[:, :2].T), nan=99.0)
    is_o = numbers == 8
    turned = np.repeat((start_labels != true_labels).reshape(-1, 3).any(1), 3)
    parts = {"O_top1": is_o & (depth < 1), "O_1to2": is_o & (depth >= 1) & (depth < 2),
             "H_top1": ~is_o & (depth < 1), "H_1to2": ~is_o & (depth >= 1) & (depth < 2),
             "O_turned": is_o & turned & (depth < 2), "O_not_turned": is_o & ~turned & (depth < 2)}
    return {name: [int(sel.sum()), round(float(np.mean(lat0[sel] <= 0.2)), 3), round(float(np.mean(lat1[sel] <= 0.2)), 3),
                   round(float(np.median(lat1[sel])), 3)] for name, sel in parts.items() if sel.any()}


def settings(args):
    cfg = RefineSettings(steps=args.steps, flips=args.h_flips, hbond_turns=args.hbond_turns, pull=args.pull)
    for item in args.set or []:  # e.g. --set fit_tip=False --set distances=2.6
        key, value = item.split("=", 1)
        cfg = replace(cfg, **{key: ast.literal_eval(value) if key != "distances" else
                              tuple(float(v) for v in value.split(","))})
    return cfg


def cmd_perturbed(args):
    if args.pool == "hydrates":
        raise SystemExit("perturbed needs water-only windows (three atoms per molecule): --pool water or ice")
    rng = np.random.default_rng(args.seed)
    rows = []
    for i, pos, numbers in held_out_structures(args.n, args.seed, args.pool, args.split):
        stack, tip = simulate(pos, numbers, rng)
        start = perturb(pos, numbers, rng, *args.perturb)
        truth_lab = atom_labels(pos, numbers)
        top = pos[:, 2] >= pos[:, 2].max() - 2.0
        every = np.ones(len(pos), bool)
        cfg = settings(args)
        if args.known_tip:  # the tip the stack was simulated with, at the height of the start's highest atom
            distance = pos[:, 2].max() + tip.distance - start[:, 2].max()
            cfg = replace(cfg, fit_tip=False, fit_drift=False, declash=False, distances=(float(distance),))
        t, c = time.perf_counter(), time.process_time()
        res = refine_atoms(stack, as_atoms(start, numbers), cfg, args.device)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        lab0 = atom_labels(start, numbers)
        pos1, lab1 = by_molecule(res.atoms, len(pos))
        row = {"structure": i, "atoms": len(pos), "distance": round(tip.distance, 2), "seconds": round(secs, 1),
               "cpu_seconds": round(cpu, 1), "image_loss": [round(v, 4) for v in res.image_loss], "moves": res.moves,
               "before_all": recovery(start, pos, lab0, truth_lab, every),
               "after_all": recovery(pos1, pos, lab1, truth_lab, every),
               "before_top2": recovery(start, pos, lab0, truth_lab, top),
               "after_top2": recovery(pos1, pos, lab1, truth_lab, top),
               "breakdown": breakdown(start, pos1, pos, numbers, lab0, truth_lab)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: {m: round(float(np.mean([r[k][m] for r in rows])), 4) for m in rows[0][k]}
               for k in ("before_all", "after_all", "before_top2", "after_top2")}
    summary["seconds_median"] = float(np.median([r["seconds"] for r in rows]))
    summary["cpu_seconds_median"] = float(np.median([r["cpu_seconds"] for r in rows]))
    summary["image_loss_mean"] = [round(float(np.mean([r["image_loss"][k] for r in rows])), 4) for k in (0, 1)]
    print(json.dumps({"summary": summary}))


def cmd_predict(args):
    from hydrafm.predict.metrics import Scores, score_atoms
    from hydrafm.predict.predictor import predict_atoms, resolve_model

    model = resolve_model(args.model)
    rng = np.random.default_rng(args.seed)
    before, after = Scores(), Scores()
    for i, pos, numbers in held_out_structures(args.n, args.seed, args.pool, args.split):
        stack, true_tip = simulate(pos, numbers, rng)
        truth_lab = atom_labels(pos, numbers)
        pred = oracle_start(predict_atoms(stack, model, depth=args.depth), pos, numbers, args.start, args.oracle_error,
                            np.random.default_rng([args.seed, i]))
        t, c = time.perf_counter(), time.process_time()
        res = refine_atoms(stack, pred, settings(args), args.device)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        s0 = score_atoms(pred.positions[:, :2], pred.arrays["label"], pos, truth_lab, top=2.0)
        s1 = score_atoms(res.atoms.positions[:, :2], res.atoms.arrays["label"], pos, truth_lab, top=2.0)
        before.add(s0)
        after.add(s1)
        if args.save:
            _save(Path(args.save) / f"{args.pool}_{i}.npz", pos, numbers, truth_lab, pred, res)
        print(json.dumps({"structure": i, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
                          "moves": res.moves,
                          "image_loss": [round(v, 4) for v in res.image_loss],
                          "closest_probe": pred.info.get("closest_probe"),
                          "tip_distance": round(res.tip.distance, 3), "true_distance": round(true_tip.distance, 3),
                          "before": s0.summary(), "after": s1.summary()}), flush=True)
    print(json.dumps({"summary": {"predict": before.summary(), "refined": after.summary()}}))


def _save(path: Path, pos, numbers, truth_labels, pred, res) -> None:
    """One window's truth, start and refined molecules (with their fit scores), for analysis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = res.atoms
    scores = np.array([res.fit_score.get(int(m), np.nan) for m in out.arrays["mol"]])
    np.savez_compressed(path, truth_positions=pos, truth_numbers=numbers, truth_labels=np.asarray(truth_labels),
                        start_positions=pred.positions, start_labels=np.asarray(pred.arrays["label"]),
                        start_mol=np.asarray(pred.arrays["mol"]), refined_positions=out.positions,
                        refined_labels=np.asarray(out.arrays["label"]), refined_mol=np.asarray(out.arrays["mol"]),
                        refined_fit_score=scores)


def oracle_start(pred, pos, numbers, start: str, error: float = 0.0, rng=None):
    """The prediction, or (diagnostics) its molecules with one kind of error removed using the truth.

    ``error``: each molecule placed by the truth is then shifted sideways by a random ``error`` Å RMS.
    """
    if start == "prediction":
        return pred
    rng = rng if rng is not None else np.random.default_rng(0)

    def jitter() -> np.ndarray:
        return np.append(rng.normal(0.0, error / np.sqrt(2), 2), 0.0)

    mol = np.asarray(pred.arrays["mol"])
    o_idx = np.flatnonzero(pred.arrays["label"] == "O")
    true_o = np.flatnonzero(numbers == 8)
    nearest = [int(true_o[np.argmin(np.hypot(*(pos[true_o, :2] - pred.positions[j, :2]).T))]) for j in o_idx]
    if start == "oracle-mol":
        idx = np.concatenate([[t, t + 1, t + 2] for t in nearest]) if nearest else np.zeros(0, int)
        moved = pos[idx] + np.repeat([jitter() for _ in nearest], 3, axis=0) if nearest else pos[idx]
        return as_atoms(moved, numbers[idx])
    out = pred[np.isin(mol, mol[o_idx])]  # only molecules with an O can be placed on a true O
    keep_mol = np.asarray(out.arrays["mol"])
    p = out.positions.copy()
    for j, t in zip(o_idx, nearest):
        shift = pos[t] - pred.positions[j]
        if start == "oracle-z":
            shift[:2] = 0.0
        p[keep_mol == mol[j]] += shift + jitter()
    out.positions = p
    return out


def cmd_experiment(args):
    from hydrafm import load_stack
    from hydrafm.predict.predictor import predict_atoms

    path = TESTDATA / "jiang_lab_water_Au111" / "L1_20_L2_1Ying_Jiang_1.npz"
    stack = load_stack(path)
    pred = predict_atoms(stack, args.model, depth=args.depth)
    t, c = time.perf_counter(), time.process_time()
    res = refine_atoms(stack, pred, settings(args), args.device)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    out = {"stack": str(path.name), "frames": stack.n_heights, "atoms": len(pred), "seconds": round(secs, 1),
           "cpu_seconds": round(cpu, 1),
           "moves": res.moves, "image_loss": [round(v, 4) for v in res.image_loss],
           "residual_rms": [round(float(np.sqrt(np.mean(res.residual_before ** 2))), 4),
                            round(float(np.sqrt(np.mean(res.residual ** 2))), 4)],
           "r_before": [round(float(v), 3) for v in res.similarity_before],
           "r_after": [round(float(v), 3) for v in res.similarity],
           "mean_r": [round(float(res.similarity_before.mean()), 4), round(float(res.similarity.mean()), 4)],
           "tip": {"distance": round(res.tip.distance, 3), "k_lateral": round(res.tip.k_lateral, 3),
                   "charge": round(res.tip.charge, 4), "height_step": res.tip.height_step,
                   "drift": [round(v, 4) for v in res.tip.drift]}}
    print(json.dumps(out))
    if args.figure:
        figure(stack, pred, res, args.figure)


def figure(stack, pred, res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hydrafm.simulate.labels import LABEL_COLORS

    k = [0, stack.n_heights // 2, stack.n_heights - 1]
    fig, ax = plt.subplots(3, 4, figsize=(13, 9.5))
    ny, nx = stack.data.shape[1:]
    ext = [stack.origin[1], stack.origin[1] + nx * stack.pixel_size[1], stack.origin[0],
           stack.origin[0] + ny * stack.pixel_size[0]]
    for row, f in enumerate(k):
        ax[row, 0].imshow(stack.data[f], origin="lower", cmap="gray", extent=ext)
        ax[row, 0].set_title(f"experiment, frame {f}")
        ax[row, 1].imshow(res.simulated.data[f], origin="lower", cmap="gray", extent=ext)
        ax[row, 1].set_title(f"refined simulation, r {res.similarity_before[f]:.2f} → {res.similarity[f]:.2f}")
        lim = 3
        ax[row, 2].imshow(res.residual_before[f], origin="lower", cmap="PiYG", vmin=-lim, vmax=lim, extent=ext)
        ax[row, 2].set_title("residual before")
        ax[row, 3].imshow(res.residual[f], origin="lower", cmap="PiYG", vmin=-lim, vmax=lim, extent=ext)
        ax[row, 3].set_title("residual after")
    for atoms, a, mark in ((pred, ax[0, 0], "x"), (res.atoms, ax[0, 1], "o")):
        for lab, col in LABEL_COLORS.items():
            sel = np.asarray(atoms.arrays["label"]).astype(str) == lab
            a.scatter(atoms.positions[sel, 0], atoms.positions[sel, 1], s=14, c=[col], marker=mark,
                      edgecolors="white" if mark == "o" else None, linewidths=0.4)
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Refine on the Jiang-lab water/Au(111) stack: predicted (x, frame 0 left) and refined (o) atoms")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(json.dumps({"figure": str(path)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["perturbed", "predict", "experiment"])
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", choices=["water", "ice", "hydrates"], default="water",
                    help="held-out windows: MD water runs 4, 13 (3 Å deep films), the ice pool's held-out "
                         "Pt(111) bilayers and 4-8-ring networks (the layers microscopists scan), or (predict "
                         "only; with --model na-hydrate) 1-3 held-out Na+/K+ hydrate clusters 2000-2399")
    ap.add_argument("--split", choices=["held-out", "train"], default="held-out",
                    help="windows never trained on (the benchmark), or training ones (to choose settings on)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device the refine runs on (cpu, cuda)")
    ap.add_argument("--figure")
    ap.add_argument("--model", default="water", help="predict and experiment: the model whose molecules are refined")
    ap.add_argument("--save", metavar="DIR", help="predict: write each window's truth, start and refined molecules")
    ap.add_argument("--pull", type=float, default=RefineSettings.pull,
                    help="weight of the pull of each molecule back to where it started")
    ap.add_argument("--h-flips", action="store_true", help="refine with the (experimental) H-flip moves")
    ap.add_argument("--hbond-turns", action="store_true",
                    help="refine with the H-bond turns (waters whose H do not point along H bonds)")
    ap.add_argument("--start", choices=["prediction", "oracle-z", "oracle-o", "oracle-mol"], default="prediction",
                    help="predict (diagnostics): refine the prediction, or it with one kind of error taken away")
    ap.add_argument("--oracle-error", type=float, default=0.0,
                    help="predict --start oracle-*: then shift each molecule sideways by this RMS (Å)")
    ap.add_argument("--no-depth", dest="depth", action="store_const", const=False, default=None,
                    help="predict and experiment: start from every O at z = 0 (no depth network)")
    ap.add_argument("--perturb", type=lambda v: tuple(float(x) for x in v.split(",")), default=(0.3, 0.2),
                    metavar="RMS,TURNED", help="perturbed: Å RMS shift of every molecule, share of waters turned "
                                               "(default 0.3,0.2; 0,0 starts from the truth itself)")
    ap.add_argument("--known-tip", action="store_true",
                    help="perturbed (diagnostics): give the refine the true tip and no drift (declash off)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any other RefineSettings field (repeatable), e.g. --set move_rounds=3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"mode": args.mode, "pool": args.pool, "model": args.model, "threads": args.threads, "h_flips": args.h_flips,
                      "hbond_turns": args.hbond_turns, "set": args.set, "start": args.start,
                      "oracle_error": args.oracle_error, "known_tip": args.known_tip, "perturb": list(args.perturb),
                      "pull": args.pull, "device": args.device,
                      "load_1min": round(os.getloadavg()[0], 2)}), flush=True)
    {"perturbed": cmd_perturbed, "predict": cmd_predict, "experiment": cmd_experiment}[args.mode](args)


if __name__ == "__main__":
    main()
