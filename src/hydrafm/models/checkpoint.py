"""One-file checkpoints: weights + architecture + normalisation + pixel size + labels + provenance.

A checkpoint is a ``torch.save`` dict written atomically (temporary file, then rename);
loading it needs nothing else. Shipped models live in ``hydrafm/models/weights``;
user and fine-tuned ones in the user data dir (``platformdirs``), never the working
directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path
from ..io.xyz import LABELS
from .unet import StructureUNet, UNetConfig

__all__ = ["ModelInfo", "save_checkpoint", "load_checkpoint", "average_checkpoints", "CheckpointError", "write_payload",
           "read_payload", "inherit_settings", "INHERITED", "transfer_weights"]

FORMAT = "hydrafm-structure-net/1"


class CheckpointError(ValueError):
    """A file that is not a usable HydrAFM checkpoint (the message names it)."""


@dataclass
class ModelInfo:
    """Everything needed to use a model besides its weights."""

    config: UNetConfig = field(default_factory=UNetConfig)
    pixel_size: float = 25.0 / 128  # Å per pixel the model was trained at
    dz: float = 0.1  # Å between heights
    normalization: str = "stack-zscore"
    labels: tuple[str, ...] = LABELS
    provenance: dict[str, Any] = field(default_factory=dict)  # data, command, epochs, metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "pixel_size": self.pixel_size,
            "dz": self.dz,
            "normalization": self.normalization,
            "labels": list(self.labels),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        return cls(
            config=UNetConfig(**d["config"]),
            pixel_size=float(d["pixel_size"]),
            dz=float(d["dz"]),
            normalization=str(d["normalization"]),
            labels=tuple(d["labels"]),
            provenance=dict(d.get("provenance", {})),
        )


def write_payload(path: str | os.PathLike, fmt: str, info: dict[str, Any], model: torch.nn.Module,
                  **extra: Any) -> Path:
    """Write ``{format, info, state_dict, **extra}`` atomically with ``torch.save``."""
    path = Path(path)
    payload = {"format": fmt, "info": info,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_payload(path: str | os.PathLike, fmt: str, what: str, error: type[ValueError] = ValueError,
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict of format ``fmt``; ``error`` (naming the file) when missing, unreadable or foreign."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report which file and why
        raise error(f"{path}: not a readable model file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{path}: not a HydrAFM {what} checkpoint")
    return payload


def save_checkpoint(
    path: str | os.PathLike,
    model: StructureUNet,
    info: ModelInfo,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write model + info (+ optimizer/epoch state for resuming) atomically to ``path``."""
    return write_payload(path, FORMAT, info.to_dict(), model, training_state=training_state)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[StructureUNet, ModelInfo, dict[str, Any] | None]:
    """Read a checkpoint: ``(model in eval mode, info, training state or None)``."""
    path = Path(path)
    payload = read_payload(path, FORMAT, "structure-network", CheckpointError, map_location)
    try:
        info = ModelInfo.from_dict(payload["info"])
        model = StructureUNet(info.config)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from exc
    model.eval()
    return model, info, payload.get("training_state")


#: prediction settings a model records beside its weights that a model trained on from it keeps: the extra
#: confidence some labels need (``label_margins``) and the assembly's H-class tie-breakers (``assembly_prior``)
INHERITED = ("label_margins", "assembly_prior")


def inherit_settings(info: ModelInfo, base: ModelInfo) -> None:
    """Give ``info`` the prediction settings (:data:`INHERITED`) of the model it is trained on from."""
    for key in INHERITED:
        if base.provenance.get(key):
            info.provenance[key] = base.provenance[key]


def average_checkpoints(paths: list[str | os.PathLike]) -> tuple[StructureUNet, ModelInfo]:
    """The mean of several checkpoints' weights (stochastic weight averaging) with the last one's info.

    Snapshots of one run taken over the tail of its learning-rate decay lie around one minimum;
    their mean is usually a flatter, better point than any one of them (Izmailov et al. 2018).
    The network uses GroupNorm (no running statistics), so the plain mean is the whole method.
    Every file must hold the same architecture and pixel size (:class:`CheckpointError` otherwise).
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise CheckpointError("give at least two checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    first: ModelInfo | None = None
    for p in paths:
        model, info, _ = load_checkpoint(p)
        if first is None:
            first = info
        elif info.config != first.config or info.pixel_size != first.pixel_size or info.labels != first.labels:
            raise CheckpointError(f"{p}: another architecture, pixel size or label set than {paths[0]}")
        for k, v in model.state_dict().items():
            total[k] = total[k] + v.double() if k in total else v.double()
    model.load_state_dict({k: (v / len(paths)).to(torch.float32) for k, v in total.items()})
    info.provenance = {**info.provenance, "weight_average_of": [str(p) for p in paths]}
    return model, info


def transfer_weights(src: torch.nn.Module, dst: torch.nn.Module) -> list[str]:
    """Copy every parameter and buffer of ``src`` that ``dst`` has with the same name and shape;
    returns the names of ``dst``'s that were left as initialised."""
    theirs = src.state_dict()
    mine = dst.state_dict()
    fresh = [k for k, v in mine.items() if k not in theirs or theirs[k].shape != v.shape]
    dst.load_state_dict({**mine, **{k: theirs[k] for k in mine if k not in fresh}})
    return fresh
