"""Train the denoiser (:mod:`hydrafm.models.denoise`) on clean simulated stacks.

No simulation while training: the clean stacks come from datasets made once by ``hydrafm
simulate`` (training structures only), and every step draws fresh noise for them from a family
broader than the robustness test's (:func:`experiment_noise`), so the denoiser is not fitted to one
noise model. A step costs only the network, so the denoiser sees far more samples per CPU-minute
than the structure network (which simulates every batch).

    hydrafm train-denoiser DATASET [DATASET ...] -o denoise.pt --minutes 30
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from ..models.denoise import Denoiser, DenoiserInfo, save_denoiser
from ..models.preprocess import normalize_stack_torch
from .augment import one_over_k
from ..progress import Progress
from .budget import StackNetConfig, StackNetRecord, descend, hold_out, start_run
from ..simulate.dataset import AFMDataset

__all__ = ["DenoiseConfig", "DenoiseRecord", "experiment_noise", "train_denoiser"]


@dataclass(frozen=True)
class DenoiseConfig(StackNetConfig):
    """Settings of a denoiser run (stored in the checkpoint's provenance): :class:`StackNetConfig`'s
    defaults (20 % of the samples left clean: the denoiser must leave clean stacks alone)."""


@dataclass(frozen=True)
class DenoiseRecord(StackNetRecord):
    """A report every ``report_every`` steps: the mean squared error (normalised units) on the
    validation stacks, noised once with a fixed seed, before (``val_noisy``) and after (``val``)."""

    val_noisy: float


def experiment_noise(x: torch.Tensor, g: torch.Generator, amplitude: float = 0.06, clean_share: float = 0.2,
                     max_drift_px: float = 2.6) -> torch.Tensor:
    """Raw stacks ``(B, Z, H, W)`` as an experiment might show them; each kind of noise drawn up to
    ``amplitude`` × each frame's Δf range: white; 1/k^α with α uniform in 0.5–1.5 (the test uses α = 1);
    a background plane; scan-line offsets (a fifth of it); a jump from a random line on in one frame
    (half of the stacks); drift growing to up to ``max_drift_px`` at the last frame (whole pixels);
    per-frame contrast ±10 %. ``clean_share`` of the stacks are returned unchanged."""
    B, Z, H, W = x.shape

    def u(*s):
        return torch.rand(*s, generator=g)

    rng = x.amax(dim=(-2, -1), keepdim=True) - x.amin(dim=(-2, -1), keepdim=True)
    out = x.clone()
    for b in range(B):
        total, ang = float(u(1)) * max_drift_px, float(u(1)) * 2 * math.pi
        for i in range(1, Z):
            dy = int(round(total * math.sin(ang) * i / max(Z - 1, 1)))
            dx = int(round(total * math.cos(ang) * i / max(Z - 1, 1)))
            if dy or dx:
                out[b, i] = torch.roll(x[b, i], (dy, dx), (0, 1))
    alpha = 0.5 + u(B)
    pink = one_over_k(torch.randn(B, Z, H, W, generator=g), alpha)
    noise = torch.randn(B, Z, H, W, generator=g) * (amplitude * u(B, 1, 1, 1))
    noise = noise + pink * (amplitude * u(B, 1, 1, 1))
    yy, xx = torch.linspace(0, 1, H)[:, None], torch.linspace(0, 1, W)[None, :]
    plane = torch.randn(B, Z, 1, 1, generator=g) * yy + torch.randn(B, Z, 1, 1, generator=g) * xx
    noise = noise + plane * (amplitude * u(B, 1, 1, 1))
    noise = noise + torch.randn(B, Z, H, 1, generator=g) * (amplitude / 3 * u(B, 1, 1, 1))
    for b in range(B):
        if float(u(1)) < 0.5:
            i, r = int(u(1) * Z), int(u(1) * H)
            noise[b, i, r:] += float(torch.randn(1, generator=g)) * amplitude
    out = (out + noise * rng) * (1 + 0.1 * (2 * u(B, Z, 1, 1) - 1))
    keep = (u(B, 1, 1, 1) < clean_share).to(x.dtype)
    return keep * x + (1 - keep) * out


def _load(datasets: Sequence[str | Path], n_heights: int) -> torch.Tensor:
    stacks = []
    for path in datasets:
        ds = AFMDataset(path)
        for i in range(len(ds)):
            s = np.asarray(ds[i].stack, np.float32)
            if s.shape[0] != n_heights:
                raise ValueError(f"{path}: stacks of {s.shape[0]} heights; the denoiser takes {n_heights}")
            stacks.append(s)
    if not stacks:
        raise ValueError("no stacks in " + ", ".join(str(p) for p in datasets))
    return torch.from_numpy(np.stack(stacks))


def train_denoiser(datasets: Sequence[str | Path], out: str | Path, cfg: DenoiseConfig = DenoiseConfig(),
                   info: DenoiserInfo | None = None) -> Generator[Progress | DenoiseRecord, None, Path]:
    """Train a denoiser on the clean stacks of ``datasets`` (folders of ``hydrafm simulate``) for
    ``cfg.minutes`` (or ``cfg.max_steps``); yields :class:`Progress` and a :class:`DenoiseRecord` every
    ``cfg.report_every`` steps, saves ``out`` at each report and at the end (atomically), returns ``out``."""
    info = info or DenoiserInfo()
    yield Progress("loading stacks", 0, 1)
    data = _load(datasets, info.n_heights)
    g, val_idx, train_idx = hold_out(data, cfg)
    val = data[val_idx]
    drift_px = cfg.max_drift / info.pixel_size
    val_noisy = experiment_noise(val, torch.Generator().manual_seed(cfg.seed + 1), cfg.amplitude, 0.0,
                                 drift_px)
    val_clean, val_noisy = normalize_stack_torch(val), normalize_stack_torch(val_noisy)
    val_before = float(torch.mean((val_noisy - val_clean) ** 2))
    model = Denoiser(info)
    opt, budget = start_run(model, cfg, datasets, len(data))
    step, last = 0, float("nan")
    while budget.running(step):
        for pg in opt.param_groups:
            pg["lr"] = budget.lr(step)
        idx = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=g)]
        x = torch.rot90(data[idx], int(torch.randint(4, (1,), generator=g)), (-2, -1))
        r = int(torch.randint(x.shape[-2] - cfg.crop + 1, (1,), generator=g))
        c = int(torch.randint(x.shape[-1] - cfg.crop + 1, (1,), generator=g))
        x = x[..., r:r + cfg.crop, c:c + cfg.crop]
        noisy = experiment_noise(x, g, cfg.amplitude, cfg.clean_share, drift_px)
        model.train()
        loss = torch.mean((model(normalize_stack_torch(noisy)) - normalize_stack_torch(x)) ** 2)
        last = descend(opt, loss)
        step += 1
        if cfg.max_steps:
            yield Progress("training the denoiser", step, cfg.max_steps)
        if step % cfg.report_every == 0 or step == cfg.max_steps:
            model.eval()
            with torch.no_grad():
                v = float(torch.mean((model(val_noisy) - val_clean) ** 2))
            info.provenance.update(steps=step, cpu_minutes=round(budget.minutes, 2),
                                   val_mse=round(v, 6), val_mse_noisy=round(val_before, 6))
            save_denoiser(out, model)
            yield DenoiseRecord(step, step * cfg.batch_size, round(budget.minutes, 2),
                                round(last, 6), round(v, 6), round(val_before, 6))
    model.eval()
    info.provenance.update(steps=step, cpu_minutes=round(budget.minutes, 2))
    return save_denoiser(out, model)
