"""The torch probe-particle engine against ppafm: equivalence on many structures, and speed.

    python benchmarks/bench_engine.py equivalence [-n 48] [--seed 0]
    python benchmarks/bench_engine.py speed [-n 20] [--engine both|torch|ppafm] [--device cpu] [--batch 1]

``equivalence`` simulates ``n`` structures with both engines at random tips drawn from the
training ranges (``simulate.settings.TipRanges``: closest distance 2.3–3.8 Å, lateral
stiffness 0.25–0.8 N/m, tip charge −0.2…+0.1 e, a d_z² quadrupole on 30 %, tilt ≤ 8°),
a third each from held-out MD water windows (top 3 Å), the ice-like pool (if built) and
Na⁺/K⁺ hydrates, and prints per-frame Pearson r (median, minimum), the RMS difference as a
share of each frame's Δf range (maximum), and the shift of the atom features (Δf maxima)
in the closest frame (median, maximum; sub-pixel by a parabola through the 3 × 3 peak).

``speed`` times the whole generation pipeline per stack (structure draw → simulation →
labels), 128 × 128 × 10 over 25 Å, after one warm-up stack; ``--batch`` simulates that many
stacks at once (torch only).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def _structures(n: int, rng: np.random.Generator):
    from hydrafm.simulate.dataset import draw_structure
    from hydrafm.structures.pool import StructurePool
    from hydrafm.training.onthefly import default_split
    from hydrafm.paths import pool_path

    water_val = default_split("water")[1]
    kinds = ["water", "hydrates"]
    try:
        ice = default_split("ice")[1]  # held-out ice-like families
        kinds.insert(1, "ice")
    except Exception:  # noqa: BLE001 - the ice pool may not be built
        ice = None
    hyd = StructurePool.load(pool_path("hydrates"))
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "water":
            pos, num = water_val.draw(rng, 25.0, 3.0)
        elif kind == "ice":
            pos, num = ice.draw(rng, 25.0, None)
        else:
            pos, num, _ = draw_structure("hydrates", hyd, rng, 25.0)
        out.append((kind, pos, num))
    return out


def _features(frame: np.ndarray, pixel: float, with_curvature: bool = False):
    """Sub-pixel positions (Å, (x, y)) of the Δf maxima of a frame (and their curvature, Hz/Å²).

    Each maximum is located by a least-squares 2D quadratic over the 5 × 5 pixels around it
    (a 3 × 3 parabola per axis jumps by a tenth of an Å when two pixels of a ridge nearly tie).
    """
    from skimage.feature import peak_local_max

    thr = frame.mean() + 0.5 * frame.std()
    idx = peak_local_max(frame, min_distance=3, threshold_abs=thr, exclude_border=3)
    yy, xx = np.mgrid[-2:3, -2:3]
    A = np.column_stack([np.ones(25), xx.ravel(), yy.ravel(), xx.ravel() ** 2, xx.ravel() * yy.ravel(),
                         yy.ravel() ** 2])
    pts, curv = [], []
    for r, c in idx:
        w = frame[r - 2 : r + 3, c - 2 : c + 3].astype(float).ravel()
        a0, bx, by, dxx, dxy, dyy = np.linalg.lstsq(A, w, rcond=None)[0]
        H = np.array([[2 * dxx, dxy], [dxy, 2 * dyy]])
        try:
            off = -np.linalg.solve(H, [bx, by])
        except np.linalg.LinAlgError:
            off = np.zeros(2)
        off = np.clip(off, -1.0, 1.0)
        curv.append(float(-np.linalg.eigvalsh(H).max()) / pixel**2)  # the flatter direction
        pts.append(((c + off[0] + 0.5) * pixel, (r + off[1] + 0.5) * pixel))
    pts = np.asarray(pts).reshape(-1, 2)
    return (pts, np.asarray(curv)) if with_curvature else pts


def _sharp_max(shifts, curvatures) -> float:
    if not shifts:
        return math.nan
    d, c = np.asarray(shifts), np.asarray(curvatures)
    return float(d[c >= np.median(c)].max())


def equivalence(n: int, seed: int, solver: str = "newton") -> dict:
    from hydrafm.simulate.engine import TorchSimulator
    from hydrafm.simulate.settings import SimulationSettings
    from hydrafm.simulate.simulators import make_simulator
    from hydrafm.structures.pool import BadStructureError
    from hydrafm.simulate.settings import TipRanges

    from scipy.spatial import cKDTree

    s = SimulationSettings()
    rng = np.random.default_rng(seed)
    ref = make_simulator(s, "ppafm", isolate=False)
    eng = TorchSimulator(s)
    ranges = TipRanges()
    rs, rms, shifts, per_kind, skipped, worst, curvatures = [], [], [], {}, 0, [], []
    for i, (kind, pos, num) in enumerate(_structures(n, rng)):
        tip = ranges.draw(rng, s.probe_length)
        try:
            a = ref.simulate(pos, num, tip).data
        except BadStructureError:
            skipped += 1
            continue
        b = eng.simulate(pos, num, tip, solver=solver).data
        for k in range(s.n_heights):
            r = float(np.corrcoef(a[k].ravel(), b[k].ravel())[0, 1])
            rs.append(r)
            per_kind.setdefault(kind, []).append(r)
            rms.append(float(np.sqrt(np.mean((a[k] - b[k]) ** 2)) / max(np.ptp(a[k]), 1e-12)))
        (fa, ca), fb = _features(a[0], s.pixel_size, True), _features(b[0], s.pixel_size)
        if len(fa) and len(fb):
            d, _ = cKDTree(fb).query(fa, distance_upper_bound=s.pixel_size * 1.5)
            ok = np.isfinite(d)
            d, ca = d[ok], ca[ok]
            shifts.extend(d.tolist())
            curvatures.extend(ca.tolist())
            if len(d) and d.max() > 0.05:
                worst.append({"structure": i, "kind": kind, "shift_A": round(float(d.max()), 3),
                              "curvature_Hz_per_A2": round(float(ca[np.argmax(d)]), 1),
                              "frame0_r": round(float(np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1]), 6)})
    res = {
        "structures": n - skipped, "frames": len(rs), "skipped": skipped,
        "r_median": float(np.median(rs)), "r_min": float(np.min(rs)),
        "rms_over_range_max": float(np.max(rms)), "rms_over_range_median": float(np.median(rms)),
        "feature_shift_median_A": float(np.median(shifts)) if shifts else math.nan,
        "feature_shift_max_A": float(np.max(shifts)) if shifts else math.nan,
        "features": len(shifts),
        "feature_shift_p95_A": float(np.percentile(shifts, 95)) if shifts else math.nan,
        "features_within_0.05A": float(np.mean(np.asarray(shifts) <= 0.05)) if shifts else math.nan,
        "features_over_0.05A": worst,
        # sharp maxima (curvature above the median) are the atom features; broad maxima (e.g. over
        # an ion) can move by a tenth of an Å between two images with r = 1.000000
        "sharp_feature_shift_max_A": _sharp_max(shifts, curvatures),
        "solver": solver,
        "r_min_by_kind": {k: float(np.min(v)) for k, v in per_kind.items()},
    }
    return res


def speed(n: int, engine: str, device: str, batch: int) -> dict:
    from hydrafm.simulate.dataset import draw_structure
    from hydrafm.simulate.labels import atom_labels, label_index
    from hydrafm.simulate.settings import SampledTip, SimulationSettings
    from hydrafm.simulate.simulators import make_simulator
    from hydrafm.structures.pool import BadStructureError, StructurePool
    from hydrafm.paths import pool_path

    s = SimulationSettings()
    pool = StructurePool.load(pool_path("water"))
    out = {}
    for eng in (["torch", "ppafm"] if engine == "both" else [engine]):
        sim = make_simulator(s, eng, device, isolate=False)
        rng = np.random.default_rng(1)

        def one():
            pos, num, _ = draw_structure("water", pool, rng, s.scan_size, 3.0)
            tip = SampledTip.draw(s, rng)
            try:
                st = sim.simulate(pos, num, tip)
            except BadStructureError:
                return 0
            label_index(atom_labels(pos, num))
            return 1 if st is not None else 0

        def many():
            import torch

            from hydrafm.simulate.engine import TipBatch

            items = [draw_structure("water", pool, rng, s.scan_size, 3.0) for _ in range(batch)]
            tips = TipBatch.from_tips([SampledTip.draw(s, rng) for _ in items], s, sim.device)
            with torch.no_grad():
                x = sim([p for p, _, _ in items], [z for _, z, _ in items], tips)
                x.cpu()
            for p, z, _ in items:
                label_index(atom_labels(p, z))
            return batch

        step = many if (eng == "torch" and batch > 1) else one
        step()  # warm-up (kernel build, caches)
        t0, done = time.perf_counter(), 0
        while done < n:
            done += step()
        dt = time.perf_counter() - t0
        out[eng] = {"stacks": done, "seconds": round(dt, 2), "stacks_per_s": round(done / dt, 3)}
    if "torch" in out and "ppafm" in out:
        out["torch_over_ppafm"] = round(out["torch"]["stacks_per_s"] / out["ppafm"]["stacks_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["equivalence", "speed"])
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", default="both", choices=["both", "torch", "ppafm"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--solver", default="newton", choices=["newton", "fire"], help="torch relaxation")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.what == "equivalence":
        res = equivalence(args.n or 48, args.seed, args.solver)
    else:
        res = speed(args.n or 20, args.engine, args.device, args.batch)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
