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
from .molecules import maps_to_molecules
from .predictor import default_threshold, predict_maps, resolve_model

__all__ = ["evaluate_dataset", "evaluate_thresholds", "best_threshold"]


def evaluate_thresholds(
    ds: AFMDataset,
    model,
    indices: Sequence[int] | None = None,
    thresholds: Sequence[float] = (0.5,),
    device: str = "cpu",
    top: float = 3.0,
    flips: bool = False,
    molecules: bool = True,
) -> Generator[Progress, None, dict[float, Scores]]:
    """Predict every chosen sample once and score its atoms at each threshold: ``{threshold: Scores}``.

    ``molecules`` scores the whole molecules :func:`~hydrafm.predict.predictor.predict_atoms`
    returns by default; ``False`` the loose atoms.
    """
    st = ds.settings
    net_info = resolve_model(model, device)
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    totals = {float(t): Scores() for t in thresholds}
    for k, i in enumerate(idx):
        s = ds[int(i)]
        stack = AFMStack(s.stack, (st.pixel_size, st.pixel_size), np.arange(st.n_heights) * st.dz,
                         (st.pixel_size / 2, st.pixel_size / 2))
        maps, px, origin, info = predict_maps(stack, net_info, device, flips=flips)
        truth = np.array(LABELS)[s.labels]
        for t, total in totals.items():
            atoms = (maps_to_molecules if molecules else maps_to_atoms)(maps, px, origin, t, info.labels)
            total.add(score_atoms(atoms.positions[:, :2], atoms.arrays["label"], s.positions, truth, top=top))
        yield Progress("evaluating", k + 1, len(idx))
    return totals


def evaluate_dataset(
    ds: AFMDataset,
    model,
    indices: Sequence[int] | None = None,
    threshold: float | None = None,
    device: str = "cpu",
    top: float = 3.0,
    flips: bool = False,
    molecules: bool = True,
) -> Generator[Progress, None, Scores]:
    """Predict every chosen sample of ``ds`` and add up the scores; yields progress, returns :class:`Scores`.

    True atoms count when they lie within ``top`` Å of the structure's highest atom.
    ``threshold`` None uses the model's recommended one.
    """
    net_info = resolve_model(model, device)
    t = default_threshold(net_info[1]) if threshold is None else float(threshold)
    totals = yield from evaluate_thresholds(ds, net_info, indices, (t,), device, top, flips, molecules)
    return totals[t]


def best_threshold(totals: dict[float, Scores], groups: Sequence[str] = ("O", "Na", "K", "H")) -> float:
    """The threshold with the best mean F1 over the groups present."""
    def score(s: Scores) -> float:
        summ = s.summary()
        f1 = [summ[g]["f1"] for g in groups if g in summ]
        return float(np.mean(f1)) if f1 else 0.0

    return max(totals, key=lambda t: score(totals[t]))
