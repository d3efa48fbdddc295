"""What the small stack-in networks' training loops share (the denoiser, the depth network): their
settings and reports, a budget of CPU minutes of this process (or a step count) with a cosine
learning rate, and one optimiser step."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["StackNetConfig", "StackNetRecord", "StepBudget", "descend", "hold_out", "start_run"]


@dataclass(frozen=True)
class StackNetConfig:
    """Settings of a run (stored in the checkpoint's provenance); defaults are the denoiser's."""

    minutes: float = 30.0  # CPU minutes of this process
    max_steps: int | None = None  # stop after this many steps (tests)
    batch_size: int = 16
    crop: int = 64
    lr: float = 1e-3
    lr_final_share: float = 0.05  # cosine decay to this share of ``lr`` over the budget
    amplitude: float = 0.06  # largest noise of each kind, in units of the frame's range (the test uses 0.03)
    clean_share: float = 0.2  # of the samples left clean
    max_drift: float = 0.5  # Å, at the farthest frame
    val_size: int = 48
    report_every: int = 200
    seed: int = 0


@dataclass(frozen=True)
class StackNetRecord:
    """A report every ``report_every`` steps: step, samples seen, CPU minutes, the last training loss
    and the validation error (each network adds its own second number)."""

    step: int
    samples: int
    minutes: float
    train: float
    val: float


def descend(opt, loss) -> float:
    """One optimiser step on ``loss``; returns its value."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


class StepBudget:
    """Run for ``minutes`` of this process's CPU time (and at most ``max_steps`` steps when given); the
    learning rate decays from ``lr`` to ``lr · final_share`` along a cosine over that budget."""

    def __init__(self, minutes: float, max_steps: int | None, lr: float, final_share: float) -> None:
        self.budget, self.max_steps = 60.0 * minutes, max_steps
        self.lr0, self.final_share = lr, final_share
        self.t0 = time.process_time()

    @property
    def minutes(self) -> float:
        """CPU minutes used so far."""
        return (time.process_time() - self.t0) / 60.0

    def running(self, step: int) -> bool:
        """Whether step ``step`` (0-based) still fits the budget (both the time and any step count)."""
        return 60.0 * self.minutes < self.budget and (self.max_steps is None or step < self.max_steps)

    def lr(self, step: int) -> float:
        """The learning rate for step ``step``."""
        frac = step / self.max_steps if self.max_steps else 60.0 * self.minutes / self.budget
        cosine = 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        return self.lr0 * (self.final_share + (1 - self.final_share) * cosine)


def hold_out(data: torch.Tensor, cfg: StackNetConfig) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """The run's random generator and a validation / training split of the stacks ``data`` (≥ 1 held
    back, at most a tenth or ``cfg.val_size``); a ValueError when the stacks are smaller than the crop."""
    if data.shape[-1] < cfg.crop or data.shape[-2] < cfg.crop:
        raise ValueError(f"stacks of {tuple(data.shape[-2:])} px are smaller than the crop of {cfg.crop} px")
    n_val = min(cfg.val_size, max(1, len(data) // 10))
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(data), generator=g)
    return g, perm[:n_val], perm[n_val:] if len(data) > n_val else perm


def start_run(model: torch.nn.Module, cfg: StackNetConfig, datasets: Sequence[str | Path],
              n_stacks: int) -> tuple[torch.optim.Optimizer, StepBudget]:
    """Adam on ``model`` and the run's budget; ``model.info.provenance`` records the data and ``cfg``."""
    model.info.provenance = {"datasets": [str(p) for p in datasets], "stacks": n_stacks,
                             "config": asdict(cfg)}
    budget = StepBudget(cfg.minutes, cfg.max_steps, cfg.lr, cfg.lr_final_share)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr), budget
