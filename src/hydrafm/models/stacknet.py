"""What the small stack-in networks (the denoiser, the depth network) share: their checkpoint files
and running them on a normalised stack of any lateral size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import CheckpointError, read_payload

__all__ = ["load_stack_net", "run_padded", "weights_file"]


def weights_file(name: str) -> Path:
    """A shipped network's file, ``hydrafm/models/weights/<name>.pt`` (it may be missing in a checkout)."""
    return Path(__file__).parent / "weights" / f"{name}.pt"


def load_stack_net(path: str | os.PathLike, fmt: str, what: str,
                   build: Callable[[dict[str, Any]], torch.nn.Module],
                   map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Read a checkpoint of format ``fmt`` and build its network from its ``info`` (eval mode);
    :class:`CheckpointError` naming the file when it is not one or is damaged."""
    payload = read_payload(path, fmt, what, CheckpointError, map_location)
    try:
        model = build(payload["info"])
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: damaged {what} checkpoint ({exc})") from exc
    return model.eval()


def run_padded(x: np.ndarray, net: Callable[[torch.Tensor], torch.Tensor], n_heights: int, multiple: int,
               what: str, device_of: torch.nn.Module) -> np.ndarray:
    """``net`` on a normalised stack ``(Z, H, W)``: edge-padded to ``multiple``, on ``device_of``'s
    device and dtype, without gradients; returns ``net``'s output for batch item 0, cropped back to
    ``(..., H, W)``. A stack of other than ``n_heights`` frames is refused (naming ``what``)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.shape[0] != n_heights:
        raise ValueError(f"the {what} takes {n_heights} heights, got a stack of shape {x.shape}")
    h, w = x.shape[1:]
    xp = np.pad(x, ((0, 0), (0, -h % multiple), (0, -w % multiple)), mode="edge")
    param = next(device_of.parameters())
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(xp))[None].to(device=param.device, dtype=param.dtype)
        return net(t)[0, ..., :h, :w].float().cpu().numpy()
