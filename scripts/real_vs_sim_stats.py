"""How the real water/Au(111) stack differs from simulated held-out stacks, in unit-free numbers (issue 14, item 2).

    python scripts/real_vs_sim_stats.py ice15,icemd15,water15,ice-rt15     # sets: $HYDRAFM_EVAL/<set>-heldout

Per stack, at the model's pixel (25/128 Å): the lateral std of the tenth frame over the first's, the mean's shift
from the first frame to the tenth in units of the first frame's std, the correlation of the first frame with the
tenth and with the second, the share of the first frame's power at wavelengths below 2 Å (of that below 20 Å),
and the first frame's skewness. Simulated sets: 10th / 50th / 90th percentiles over ~24 stacks each.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from experimental_plausibility import DEFAULT
from scipy.ndimage import zoom

from hydrafm.io import load_stack
from hydrafm.simulate.dataset import AFMDataset


def stats(fr, px):
    fr = np.asarray(fr, np.float64)
    if abs(px - 25 / 128) > 1e-3:  # to the model's pixel
        fr = np.stack([zoom(f, px / (25 / 128), order=1) for f in fr])
    s0, s9 = fr[0].std(), fr[-1].std()
    c = np.corrcoef(fr[0].ravel(), fr[-1].ravel())[0, 1]
    c1 = np.corrcoef(fr[0].ravel(), fr[1].ravel())[0, 1]
    f0 = fr[0] - fr[0].mean()
    P = np.abs(np.fft.rfft2(f0)) ** 2
    ky = np.fft.fftfreq(f0.shape[0], 25 / 128)[:, None]; kx = np.fft.rfftfreq(f0.shape[1], 25 / 128)[None, :]
    k = np.hypot(ky, kx)
    sharp = P[k > 1 / 2.0].sum() / P[k > 1 / 20].sum()  # power below 2 A wavelength among that below 20 A
    skew = float(((f0 / f0.std()) ** 3).mean())
    return {"std9/std0": s9 / s0, "mean shift 0->9 / std0": (fr[-1].mean() - fr[0].mean()) / s0,
            "corr(0,9)": c, "corr(0,1)": c1, "sharp<2A": sharp, "skew0": skew}

s = load_stack(DEFAULT)
rows = {"real frames 0-9": stats(s.data[:10], s.pixel_size[0]), "real frames 2-11": stats(s.data[2:12], s.pixel_size[0])}
for key in sys.argv[1].split(','):
    ds = AFMDataset(os.path.join(os.environ.get("HYDRAFM_EVAL", "/work/cache/eval"), f"{key}-heldout"))
    st = [stats(ds[i].stack, ds.settings.pixel_size) for i in range(0, len(ds), max(1, len(ds) // 24))]
    rows[key] = {k: (float(np.percentile([x[k] for x in st], 10)), float(np.median([x[k] for x in st])), float(np.percentile([x[k] for x in st], 90))) for k in st[0]}
for name, r in rows.items():
    print(name.ljust(18), "  ".join(f"{k} " + (f"{v:.3f}" if isinstance(v, float) else "/".join(f"{x:.3f}" for x in v)) for k, v in r.items()))
