"""Train the depth network (:mod:`hydrafm.models.depth`) on clean simulated stacks.

Like the denoiser, no simulation while training: the stacks come from datasets made once
(``hydrafm simulate``, or ``scripts/simulate_random_tips.py`` for random tips), training
structures only. Each sample's target is a depth map: around every O, Na and K within
``DepthConfig.depth`` Å of the highest atom, a patch of width ``DepthInfo.sigma`` carrying the
height of the closest probe above that atom (the stack's ``distance`` + highest atom − the atom's
height). Every step draws fresh experiment-like noise for the stacks
(:func:`hydrafm.training.denoise.experiment_noise`), so the depths are learnt from noisy scans.

    hydrafm train-depth DATASET [DATASET ...] -o depth.pt --cpu-minutes 40
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from ..models.depth import DepthInfo, DepthNet, save_depth
from ..models.preprocess import normalize_stack_torch
from ..progress import Progress
from .budget import StackNetConfig, StackNetRecord, descend, hold_out, start_run
from ..simulate.dataset import AFMDataset
from .denoise import experiment_noise

__all__ = ["DepthConfig", "DepthRecord", "depth_targets", "train_depth"]

HEAVY = (0, 1, 2)  # O, Na, K in hydrafm.io.xyz.LABELS


@dataclass(frozen=True)
class DepthConfig(StackNetConfig):
    """Settings of a depth-network run (stored in the checkpoint's provenance)."""

    crop: int = 96
    clean_share: float = 0.3
    max_drift: float = 0.3  # Å, at the farthest frame
    val_size: int = 64
    depth: float = 3.0  # Å below the highest atom (the metrics' visible zone): deeper atoms get no target


@dataclass(frozen=True)
class DepthRecord(StackNetRecord):
    """A report every ``report_every`` steps: mean absolute depth error (Å) over the validation
    stacks' visible heavy atoms (noised once, fixed seed), raw (``val``) and after removing each
    stack's median error (``val_relative``: what Predict uses, depths relative to each other)."""

    val_relative: float


def depth_targets(positions: np.ndarray, labels: np.ndarray, distance: float, shape: tuple[int, int],
                  pixel_size: float, sigma: float, depth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target depth map, weight map ``(H, W)`` and the atoms it holds ``(k, 3)`` (row, col, depth).

    ``positions`` Å in the scan frame (pixel centres at ``(i + 0.5) · pixel_size``); the weight is the
    largest Gaussian (``sigma`` Å) of the visible heavy atoms, the depth that of the nearest one.
    """
    positions = np.asarray(positions, np.float64)
    top = positions[:, 2].max()
    keep = np.isin(labels, HEAVY) & (positions[:, 2] >= top - depth)
    p = positions[keep]
    d = distance + top - p[:, 2]
    rows, cols = p[:, 1] / pixel_size - 0.5, p[:, 0] / pixel_size - 0.5
    h, w = shape
    inside = (rows > -0.5) & (rows < h - 0.5) & (cols > -0.5) & (cols < w - 0.5)
    atoms = np.stack([rows[inside], cols[inside], d[inside]], axis=1)
    if not len(p):
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32), atoms
    yy, xx = np.arange(h)[:, None, None], np.arange(w)[None, :, None]
    r2 = ((yy - rows) ** 2 + (xx - cols) ** 2) * pixel_size**2  # (H, W, k)
    near = np.argmin(r2, axis=-1)
    weight = np.exp(-0.5 * np.take_along_axis(r2, near[..., None], -1)[..., 0] / sigma**2)
    return d[near].astype(np.float32), weight.astype(np.float32), atoms


def _load(datasets: Sequence[str | Path], info: DepthInfo, depth: float):
    stacks, targets, weights, atoms = [], [], [], []
    for path in datasets:
        ds = AFMDataset(path)
        px = ds.settings.pixel_size
        if abs(px - info.pixel_size) > 1e-3:
            raise ValueError(f"{path}: {px:.4f} Å pixels; the depth network takes {info.pixel_size:.4f}")
        for shard in ds.shards:
            with np.load(shard) as z:
                st, pos, lab = z["stacks"], z["positions"], z["labels"]
                off, dist = z["offsets"], z["distance"]
            if st.shape[1] != info.n_heights:
                raise ValueError(f"{shard}: stacks of {st.shape[1]} heights; the depth network takes "
                                 f"{info.n_heights}")
            for j in range(len(st)):
                t, w, a = depth_targets(pos[off[j]:off[j + 1]], lab[off[j]:off[j + 1]], float(dist[j]),
                                        st.shape[-2:], px, info.sigma, depth)
                stacks.append(st[j])
                targets.append(t.astype(np.float16))
                weights.append(w.astype(np.float16))
                atoms.append(a)
    if not stacks:
        raise ValueError("no stacks in " + ", ".join(str(p) for p in datasets))
    return (torch.from_numpy(np.stack(stacks)), torch.from_numpy(np.stack(targets)),
            torch.from_numpy(np.stack(weights)), atoms)


def _val_errors(model: DepthNet, x: torch.Tensor, atoms: list[np.ndarray]) -> tuple[float, float]:
    with torch.no_grad():
        pred = model(x).numpy()
    err, rel = [], []
    for k, a in enumerate(atoms):
        if not len(a):
            continue
        r = np.clip(np.round(a[:, 0]).astype(int), 0, pred.shape[1] - 1)
        c = np.clip(np.round(a[:, 1]).astype(int), 0, pred.shape[2] - 1)
        e = pred[k, r, c] - a[:, 2]
        err.append(np.abs(e))
        rel.append(np.abs(e - np.median(e)))
    return float(np.mean(np.concatenate(err))), float(np.mean(np.concatenate(rel)))


def train_depth(datasets: Sequence[str | Path], out: str | Path, cfg: DepthConfig = DepthConfig(),
                  info: DepthInfo | None = None) -> Generator[Progress | DepthRecord, None, Path]:
    """Train a depth network on ``datasets`` for ``cfg.minutes`` CPU minutes (or ``cfg.max_steps``);
    yields :class:`Progress` and a :class:`DepthRecord` every ``cfg.report_every`` steps, saves ``out``
    at each report and at the end (atomically), returns ``out``."""
    info = info or DepthInfo()
    yield Progress("loading stacks", 0, 1)
    data, target, weight, atoms = _load(datasets, info, cfg.depth)
    g, val_idx, train_idx = hold_out(data, cfg)
    drift_px = cfg.max_drift / info.pixel_size
    val_g = torch.Generator().manual_seed(cfg.seed + 1)
    val_x = experiment_noise(data[val_idx].float(), val_g, cfg.amplitude, cfg.clean_share, drift_px)
    val_x = normalize_stack_torch(val_x)
    val_atoms = [atoms[int(i)] for i in val_idx]
    model = DepthNet(info)
    opt, budget = start_run(model, cfg, datasets, len(data))
    step, last = 0, float("nan")
    while budget.running(step):
        for pg in opt.param_groups:
            pg["lr"] = budget.lr(step)
        idx = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=g)]
        k = int(torch.randint(4, (1,), generator=g))
        flip = bool(torch.randint(2, (1,), generator=g))
        r = int(torch.randint(data.shape[-2] - cfg.crop + 1, (1,), generator=g))
        c = int(torch.randint(data.shape[-1] - cfg.crop + 1, (1,), generator=g))

        def view(t: torch.Tensor) -> torch.Tensor:
            t = t[idx][..., r:r + cfg.crop, c:c + cfg.crop].float()
            t = torch.rot90(t, k, (-2, -1))
            return t.flip(-1) if flip else t

        x, t, w = view(data), view(target), view(weight)
        x = normalize_stack_torch(experiment_noise(x, g, cfg.amplitude, cfg.clean_share, drift_px))
        model.train()
        loss = torch.sum(w * torch.abs(model(x) - t)) / torch.clamp(w.sum(), min=1.0)
        last = descend(opt, loss)
        step += 1
        if cfg.max_steps:
            yield Progress("training the depth network", step, cfg.max_steps)
        if step % cfg.report_every == 0 or step == cfg.max_steps:
            model.eval()
            v, vr = _val_errors(model, val_x, val_atoms)
            info.provenance.update(steps=step, cpu_minutes=round(budget.minutes, 2),
                                   val_mae=round(v, 4), val_mae_relative=round(vr, 4))
            save_depth(out, model)
            yield DepthRecord(step, step * cfg.batch_size, round(budget.minutes, 2),
                               round(last, 4), round(v, 4), round(vr, 4))
    model.eval()
    info.provenance.update(steps=step, cpu_minutes=round(budget.minutes, 2))
    return save_depth(out, model)
