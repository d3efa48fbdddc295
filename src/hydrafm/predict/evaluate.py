"""Score a model on a simulated dataset (the truth is in the shards)."""

from __future__ import annotations

from typing import Generator, Sequence

import numpy as np

from ..io.xyz import LABELS
from ..progress import Progress
from ..simulate.dataset import AFMDataset
from ..stack import AFMStack
from .atoms import maps_to_atoms
from .metrics import Scores, score_atoms
from .predictor import predict_maps

__all__ = ["evaluate_dataset"]


def evaluate_dataset(
    ds: AFMDataset,
    model,
    indices: Sequence[int] | None = None,
    threshold: float = 0.5,
    device: str = "cpu",
    top: float = 3.0,
) -> Generator[Progress, None, Scores]:
    """Predict every chosen sample of ``ds`` and add up the scores; yields progress, returns :class:`Scores`.

    True atoms count when they lie within ``top`` Å of the structure's highest atom.
    """
    st = ds.settings
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    total = Scores()
    for k, i in enumerate(idx):
        s = ds[int(i)]
        stack = AFMStack(s.stack, (st.pixel_size, st.pixel_size), np.arange(st.n_heights) * st.dz,
                         (st.pixel_size / 2, st.pixel_size / 2))
        maps, px, origin, info = predict_maps(stack, model, device)
        atoms = maps_to_atoms(maps, px, origin, threshold, info.labels)
        total.add(score_atoms(atoms.positions[:, :2], atoms.arrays["label"], s.positions,
                              np.array(LABELS)[s.labels], top=top))
        yield Progress("evaluating", k + 1, len(idx))
    return total
