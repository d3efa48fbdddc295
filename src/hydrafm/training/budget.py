"""A training loop's budget: CPU minutes of this process (or a step count) and a cosine learning rate."""

from __future__ import annotations

import math
import time

__all__ = ["StepBudget", "descend"]


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
