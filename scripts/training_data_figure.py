"""Figure for docs/training-data.md: simulated stacks next to their labels.

Usage: python scripts/training_data_figure.py DATASET[@i,j] [DATASET ...] --out docs/images/training_data.png
Each dataset contributes its first two samples (or samples i, j): closest, middle and farthest Δf
frames, the a-vdW sphere picture, and the sum of the label maps.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hydrafm.simulate.dataset import AFMDataset  # noqa: E402
from hydrafm.simulate.labels import LABEL_COLORS, LABELS, vdw_sphere_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-dataset", type=int, default=2)
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for d in args.datasets:
        d, _, picks = d.partition("@")
        ds = AFMDataset(d)
        chosen = [int(v) for v in picks.split(",")] if picks else range(args.start, args.start + args.per_dataset)
        for i in chosen:
            rows.append((ds.manifest["kind"], ds, ds[i]))
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 3.1 * len(rows)), squeeze=False)
    for r, (kind, ds, s) in enumerate(rows):
        st = ds.settings
        ext = [0, st.scan_size, 0, st.scan_size]
        n = s.stack.shape[0]
        for c, (k, title) in enumerate(((n - 1, "farthest"), (n // 2, "middle"), (0, "closest"))):
            ax = axes[r, c]
            ax.imshow(s.stack[k], origin="lower", cmap="gray", extent=ext)
            ax.set_title(f"{kind}: Δf {title} (+{k * st.dz:.1f} Å)\n[{s.stack[k].min():.2f}, {s.stack[k].max():.2f}] Hz",
                         fontsize=9)
        img = vdw_sphere_image(s.positions, s.labels, s.stack.shape[1:], st.pixel_size,
                               (st.pixel_size / 2, st.pixel_size / 2))
        axes[r, 3].imshow(img, origin="lower", extent=ext)
        axes[r, 3].set_title("a-vdW sphere label", fontsize=9)
        rgb = np.ones(s.maps.shape[1:] + (3,))
        for ch, name in enumerate(LABELS):
            m = s.maps[ch][..., None]
            rgb = rgb * (1 - m) + m * np.asarray(LABEL_COLORS[name])
        axes[r, 4].imshow(rgb, origin="lower", extent=ext)
        axes[r, 4].set_title("label maps (network target)", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=LABEL_COLORS[k], label=k) for k in LABELS]
    fig.legend(handles=handles, loc="lower center", ncol=6, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
