"""Sub-pixel peak refinement: the 3 × 3 centroid against the log-parabola (Predict's since 2026-11-28).

    python scripts/subpixel_check.py MODEL [THRESHOLD] [--degrade] [--sets ice,water,hydrates]

On the second halves of the held-out ice-like and MD-water sets (``$HYDRAFM_EVAL``, see
compare_heldout.py), with the four mirror images: O / H F1 (true atoms in the top 1.5 Å) and the
lateral error of the matched O and H (median, RMS, share within 0.2 Å), one JSON line at the end.
``--degrade``: the same after the experiment-like degradations of ``hydrafm evaluate --degrade``.
"""
import os, sys, json, numpy as np, torch
torch.set_num_threads(1)
import hydrafm.predict.atoms as A
from hydrafm.simulate.dataset import AFMDataset
from hydrafm.predict.evaluate import _predict_sample
from hydrafm.predict.metrics import score_atoms, Scores, _match
from hydrafm.predict.predictor import resolve_model, default_threshold
from hydrafm.simulate.labels import LABELS, within_top
parabola = A._peaks  # what Predict uses since 2026-11-28: the log-parabola vertex


def centroid(m, min_px, threshold):
    """The weighted centroid of the 3 × 3 neighbourhood (what Predict used until 2026-11-28)."""
    from skimage.feature import peak_local_max
    idx = peak_local_max(m, min_distance=max(1, min_px), threshold_abs=threshold, exclude_border=False)
    if len(idx) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    pad = np.clip(np.pad(m, 1, mode="edge"), 0, None)
    r, c = idx[:, 0] + 1, idx[:, 1] + 1
    offs = np.array([-1, 0, 1])
    w = pad[r[:, None, None] + offs[None, :, None], c[:, None, None] + offs[None, None, :]]
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-12)
    out = np.column_stack([idx[:, 0] + (w.sum(axis=2) @ offs) / tot, idx[:, 1] + (w.sum(axis=1) @ offs) / tot])
    return out, m[idx[:, 0], idx[:, 1]]


degrade = "--degrade" in sys.argv
argv = [a for a in sys.argv[1:] if a != "--degrade"]
sets = ("ice", "water")
if "--sets" in argv:
    k = argv.index("--sets"); sets = tuple(argv[k + 1].split(",")); del argv[k:k + 2]
model = argv[0]; top = 1.5
net = resolve_model(model, "cpu"); net[1].provenance["ions"] = False
th = float(argv[1]) if len(argv) > 1 else default_threshold(net[1])
res = {}
for k in sets:
    ds = AFMDataset(f"{os.environ.get('HYDRAFM_EVAL', '/work/cache/eval')}/{k}-heldout"); idx = np.arange(len(ds) // 2, len(ds))
    tot = {"centroid": Scores(), "parabola": Scores()}; err = {"centroid": {"O": [], "H": []}, "parabola": {"O": [], "H": []}}
    for i in idx:
        s, pred = _predict_sample(ds, int(i), net, "cpu", True, degrade=degrade)
        truth = np.array(LABELS)[s.labels]
        for name, fn in (("centroid", centroid), ("parabola", parabola)):
            A._peaks = fn
            atoms = pred.atoms(th, True)
            lab = atoms.arrays["label"]
            tot[name].add(score_atoms(atoms.positions[:, :2], lab, s.positions, truth, top=top))
            keep = within_top(s.positions, top)
            for g, mem in (("O", ("O",)), ("H", ("H_up", "H_flat", "H_down"))):
                pi = np.isin(lab, mem); ti = np.isin(truth, mem) & keep
                rows, cols = _match(atoms.positions[pi, :2], s.positions[ti, :2], 0.75)
                err[name][g] += list(np.hypot(*(atoms.positions[pi][rows, :2] - s.positions[ti][cols, :2]).T))
        A._peaks = parabola
    for name in tot:
        sm = tot[name].summary()
        res[f"{k}/{name}"] = {"O_f1": round(sm["O"]["f1"], 4), "H_f1": round(sm["H"]["f1"], 4),
            **{f"{g}_err_median": round(float(np.median(v)), 4) for g, v in err[name].items()},
            **{f"{g}_err_rms": round(float(np.sqrt(np.mean(np.square(v)))), 4) for g, v in err[name].items()},
            **{f"{g}_within_0.2": round(float(np.mean(np.array(v) < 0.2)), 4) for g, v in err[name].items()}}
        print(k, name, res[f"{k}/{name}"], flush=True)
print(json.dumps({"model": model, "threshold": th, "top": top, "degraded": degrade, "results": res}))
