"""Pictures of how a model does: the worst cases of an evaluation, truth against prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.xyz import LABELS
from ..simulate.labels import LABEL_COLORS, within_top

__all__ = ["worst_cases_figure"]


def worst_cases_figure(ds, cases: Sequence[tuple[int, float, object]], path: str | Path, top: float = 3.0,
                       columns: int = 4) -> Path:
    """A grid of the closest frame of each case with the true atoms (open circles, top ``top`` Å)
    and the predicted ones (filled dots), coloured by label; written atomically to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .._atomic import atomic_path

    n = max(1, len(cases))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    st = ds.settings
    size = st.pixel_size * st.n_pixels
    draws = ds.draws()
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, f1, atoms) in zip(axes.ravel(), cases):
        s = ds[int(i)]
        ax.imshow(s.stack[0], cmap="gray", origin="lower", extent=(0, size, 0, size))
        seen = within_top(s.positions, top)
        for lab_i, name in enumerate(LABELS):
            t = seen & (s.labels == lab_i)
            if t.any():
                ax.scatter(s.positions[t, 0], s.positions[t, 1], s=42, facecolors="none",
                           edgecolors=[LABEL_COLORS[name]], linewidths=1.2)
            pred = np.asarray(atoms.arrays["label"]).astype(str) == name
            if pred.any():
                ax.scatter(atoms.positions[pred, 0], atoms.positions[pred, 1], s=10, c=[LABEL_COLORS[name]])
        ax.set_title(f"#{i} {draws['group'][i]}\nd={draws['distance'][i]:.2f} Å  F1={f1:.2f}", fontsize=8)
    fig.suptitle("worst cases: true atoms (circles) vs predicted (dots)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
