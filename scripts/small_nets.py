"""What the trainers of Predict's small check networks share (``scripts/bond_ends.py``, ``scripts/o_check.py``):
their command-line options, their crops read and split, a start from an earlier checkpoint, and the cosine
learning rate."""

from __future__ import annotations

import time

import numpy as np
import torch


def load_crops(paths: list[str], keys: tuple[str, ...], seed: int) -> tuple[list, dict, torch.Tensor, torch.Tensor]:
    """``(parts, {key: tensor}, val, train)``: the ``keys`` of every ``.npz`` concatenated, and a random
    tenth of the rows held back (``val``; drawn from ``seed``)."""
    parts = [np.load(p) for p in paths]
    data = {k: torch.as_tensor(np.concatenate([p[k] for p in parts])) for k in keys}
    n = len(data[keys[0]])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return parts, data, perm[: n // 10], perm[n // 10:]


def start_from(net: torch.nn.Module, path: str | None, load) -> None:
    """Go on from checkpoint ``path`` (read by ``load``; its weights, the optimiser starts afresh), recorded
    in ``net.info.provenance["init"]``."""
    if path:
        start = load(path)
        net.load_state_dict(start.state_dict())
        net.info.provenance["init"] = {"from": str(path), **start.info.provenance}


def cosine_lr(opt: torch.optim.Optimizer, lr: float, c0: float, budget: float) -> None:
    """Set the learning rate along a cosine from ``lr`` to a tenth of it over ``budget`` CPU seconds from ``c0``."""
    done = min((time.process_time() - c0) / budget, 1.0)
    for g in opt.param_groups:
        g["lr"] = lr * (0.1 + 0.45 * (1 + np.cos(np.pi * done)))


def add_train_options(t, inputs: str, threads: int, tau: float, what: str) -> None:
    """The options every check trainer takes: its crop files (``inputs``), ``-o``, the CPU budget, threads,
    learning rate, batch, the Predict threshold to record (``tau``), seed and a checkpoint to start from."""
    t.add_argument(inputs, nargs="+")
    t.add_argument("-o", "--out", required=True)
    t.add_argument("--minutes", type=float, default=20.0, help="CPU minutes (per thread)")
    t.add_argument("--threads", type=int, default=threads)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--tau", type=float, default=tau, help=f"recorded as the {what}'s Predict threshold")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", help=f"start from this {what}'s weights")
