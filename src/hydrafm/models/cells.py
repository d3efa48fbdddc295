"""The cell-grid head: one confidence and one sub-cell position per label and grid cell.

Instead of a full-resolution map per label, the network can end on a coarse grid (cells of
``cell`` × ``cell`` pixels; 4 px ≈ 0.8 Å at the usual 0.195 Å/px) and say, for every cell and
label, how likely an atom of that label sits in it (a logit) and where inside the cell (two
logits, ``sigmoid`` → 0–1 of the cell). That is the head of the Tang group's 2025 water/ice
detectors; its decoder stops ``log2(cell)`` levels early, so it costs less than dense maps.

Everything downstream of the network (peak finding, molecule assembly, evaluation, napari)
works on 0–1 label maps, so :func:`render_cells` draws the cell outputs as maps: a Gaussian of
the training blob's width at each cell's position, its peak the cell's confidence. Training
needs no new labels either: :func:`cell_targets` reads the atoms back from the label maps the
simulator renders (one local maximum ≥ 0.5 per atom, refined to sub-pixel by a log-parabola —
exact for a Gaussian blob).

Output layout of the head, ``(B, 3·L, H/cell, W/cell)``: channels ``[0, L)`` the confidence
logits, ``[L, 2L)`` the row offsets and ``[2L, 3L)`` the column offsets (logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cell_targets", "cell_positions", "render_cells", "cell_loss"]


def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = out.shape[1] // 3
    return out[:, :n], out[:, n:2 * n], out[:, 2 * n:]


def cell_positions(out: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confidence (0–1) and pixel position (row, col; pixel centres at integers) of every cell.

    ``out`` is the head's raw output ``(B, 3L, Hc, Wc)``; each return is ``(B, L, Hc, Wc)``.
    """
    logit, oy, ox = _split(out)
    hc, wc = out.shape[-2:]
    cy = torch.arange(hc, device=out.device, dtype=out.dtype)[:, None]
    cx = torch.arange(wc, device=out.device, dtype=out.dtype)[None, :]
    row = (cy + torch.sigmoid(oy)) * cell - 0.5
    col = (cx + torch.sigmoid(ox)) * cell - 0.5
    return torch.sigmoid(logit), row, col


def render_cells(out: torch.Tensor, cell: int, sigma_px: float, reach: int = 2) -> torch.Tensor:
    """Label maps ``(B, L, Hc·cell, Wc·cell)`` in 0–1 from the head's output.

    Every cell draws a Gaussian of width ``sigma_px`` (pixels) and peak its confidence at its
    position; labels' maps are the maximum over the cells within ``reach`` cells (as the
    simulator's label maps take the maximum over atoms).
    """
    conf, row, col = cell_positions(out.float(), cell)
    b, n, hc, wc = conf.shape
    dev = conf.device
    # pixel coordinates of every pixel, grouped by its cell: (hc, cell) rows, (wc, cell) cols
    pr = (torch.arange(hc, device=dev)[:, None] * cell + torch.arange(cell, device=dev)[None, :]).float()
    pc = (torch.arange(wc, device=dev)[:, None] * cell + torch.arange(cell, device=dev)[None, :]).float()
    pad = (reach, reach, reach, reach)
    conf_p = F.pad(conf, pad)
    row_p = F.pad(row, pad, value=-1e4)
    col_p = F.pad(col, pad, value=-1e4)
    inv = -0.5 / sigma_px**2
    best = torch.zeros(b, n, hc, cell, wc, cell, device=dev)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            sl = (slice(None), slice(None), slice(reach + dy, reach + dy + hc), slice(reach + dx, reach + dx + wc))
            c, r, q = conf_p[sl], row_p[sl], col_p[sl]
            d2 = (pr[None, None, :, :, None, None] - r[:, :, :, None, :, None]) ** 2 + (
                pc[None, None, None, None, :, :] - q[:, :, :, None, :, None]) ** 2
            best = torch.maximum(best, c[:, :, :, None, :, None] * torch.exp(inv * d2))
    return best.reshape(b, n, hc * cell, wc * cell)


def cell_targets(maps: torch.Tensor, cell: int, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell targets from label maps ``(B, L, H, W)`` (Gaussian blobs of peak 1 per atom).

    Returns ``present`` ``(B, L, Hc, Wc)`` (0/1) and ``offset`` ``(B, 2, L, Hc, Wc)`` (row, col
    position inside the cell, 0–1; meaningful where present). An atom is a local maximum of
    its map ≥ ``threshold``, placed to sub-pixel by a log-parabola through its neighbours.
    """
    maps = maps.float()
    b, n, h, w = maps.shape
    if h % cell or w % cell:
        raise ValueError(f"maps of {h} × {w} px do not divide into cells of {cell} px")
    peak = (maps >= threshold) & (maps == F.max_pool2d(maps, 3, 1, 1))
    lg = torch.log(F.pad(maps, (1, 1, 1, 1), mode="replicate").clamp_min(1e-6))
    centre = lg[:, :, 1:-1, 1:-1]

    def vertex(minus: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
        curv = minus - 2 * centre + plus
        safe = torch.where(curv < -1e-6, curv, torch.full_like(curv, -1.0))
        return torch.where(curv < -1e-6, 0.5 * (minus - plus) / safe, torch.zeros_like(curv)).clamp(-0.5, 0.5)

    drow = vertex(lg[:, :, :-2, 1:-1], lg[:, :, 2:, 1:-1])
    dcol = vertex(lg[:, :, 1:-1, :-2], lg[:, :, 1:-1, 2:])
    bi, li, r, c = peak.nonzero(as_tuple=True)
    # position in cell units; a blob's peak may sit half a pixel past its pixel's cell
    fy = ((r + drow[bi, li, r, c] + 0.5) / cell).clamp(0, h / cell - 1e-4)
    fx = ((c + dcol[bi, li, r, c] + 0.5) / cell).clamp(0, w / cell - 1e-4)
    cy, cx = fy.floor().long(), fx.floor().long()
    present = torch.zeros(b, n, h // cell, w // cell, device=maps.device)
    offset = torch.zeros(b, 2, n, h // cell, w // cell, device=maps.device)
    present[bi, li, cy, cx] = 1.0  # two atoms of one label in one cell (rare: < 1.1 Å apart) keep one
    offset[bi, 0, li, cy, cx] = fy - cy
    offset[bi, 1, li, cy, cx] = fx - cx
    return present, offset


def cell_loss(out: torch.Tensor, maps: torch.Tensor, cell: int, positive_weight: float = 5.0,
              offset_weight: float = 1.0) -> torch.Tensor:
    """Training loss of the cell head against the simulator's label maps.

    Binary cross-entropy of the confidences (cells holding an atom weighted ``positive_weight``)
    plus ``offset_weight`` × the mean absolute error of the sub-cell positions (in cells) where
    an atom is.
    """
    out = out.float()
    present, offset = cell_targets(maps, cell)
    logit, oy, ox = _split(out)
    weight = 1.0 + (positive_weight - 1.0) * present
    bce = F.binary_cross_entropy_with_logits(logit, present, weight=weight)
    err = (torch.sigmoid(oy) - offset[:, 0]).abs() + (torch.sigmoid(ox) - offset[:, 1]).abs()
    off = (err * present).sum() / present.sum().clamp_min(1.0)
    return bce + offset_weight * off
