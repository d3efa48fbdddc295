"""The models a user can pick: shipped ones and their own fine-tuned ones, with a one-line summary.

Shipped checkpoints live in ``hydrafm/models/weights/<name>.pt``; user models in
``data_dir("models")/<name>.pt`` (``$HYDRAFM_DATA`` or the platform's user data dir).
A name resolves to the shipped model first, then the user's; anything with a
suffix or a folder is taken as a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..paths import data_dir
from .checkpoint import FORMAT, CheckpointError

__all__ = ["SHIPPED_MODELS", "ModelEntry", "list_models", "model_path", "user_models_dir", "model_summary",
           "on_models_changed", "notify_models_changed"]

#: Models the package ships (trained by the commands in docs/models/).
SHIPPED_MODELS = ("water", "na-hydrate")
WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelEntry:
    """One pickable model."""

    name: str
    path: Path
    shipped: bool
    summary: str
    threshold: float = 0.5  # the model's recommended confidence threshold
    o_check: bool = False  # the model's card asks for the O check
    bond_ends: bool = False  # the model's card asks for the bond-end check


def user_models_dir() -> Path:
    """Where fine-tuned models are saved (created on demand by the writers, not here)."""
    return data_dir("models")


def model_path(model: str | Path) -> Path:
    """The checkpoint file of a model name (shipped, then user), or ``model`` itself as a path."""
    text = str(model)
    path = Path(model)
    if path.suffix or "/" in text or "\\" in text:
        return path
    shipped = WEIGHTS / f"{text}.pt"
    if shipped.is_file():
        return shipped
    user = user_models_dir() / f"{text}.pt"
    if user.is_file():
        return user
    if text in SHIPPED_MODELS:
        raise CheckpointError(f"the pretrained model {text!r} is not shipped in this version; "
                              "pass a checkpoint file")
    known = [m.name for m in list_models()]
    raise CheckpointError(f"no model named {text!r}; known models: {', '.join(known) or 'none'}")


def _provenance(path: str | Path) -> dict | str:
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a summary never raises
        return f"unreadable model file ({type(exc).__name__})"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return "not a HydrAFM structure-network checkpoint"
    return dict(payload["info"].get("provenance", {}))


def _entry(name: str, path: Path, shipped: bool) -> ModelEntry:
    prov = _provenance(path)
    if isinstance(prov, str):
        return ModelEntry(name, path, shipped, prov)
    return ModelEntry(name, path, shipped, _summary(prov), float(prov.get("threshold", 0.5)),
                      bool(prov.get("o_check", False)), bool(prov.get("bond_ends", False)))


def model_summary(path: str | Path) -> str:
    """A short description of a checkpoint (its card summary and training data) for tooltips."""
    prov = _provenance(path)
    return prov if isinstance(prov, str) else _summary(prov)


def _summary(prov: dict) -> str:
    lines = []
    if prov.get("summary"):
        lines.append(str(prov["summary"]))
    if prov.get("dataset"):
        lines.append(f"trained on {Path(str(prov['dataset'])).name} ({prov.get('train_samples', '?')} samples, "
                     f"{prov.get('epochs_trained', '?')} epochs)")
    if prov.get("initialised_from"):
        lines.append(f"fine-tuned from {Path(str(prov['initialised_from'])).stem}")
    if "threshold" in prov:
        margins = prov.get("label_margins") or {}
        extra = "".join(f"; {name} needs {float(v):+.2f}" for name, v in margins.items())
        extra += "".join(f"; inferred H favour {name} ({float(v):+.2f})"
                         for name, v in (prov.get("assembly_prior") or {}).items())
        lines.append(f"recommended threshold {float(prov['threshold']):.2f}{extra}")
    metrics = prov.get("metrics")
    if isinstance(metrics, dict):
        f1 = ", ".join(f"{g} F1 {v['f1']:.2f}" for g, v in metrics.items() if isinstance(v, dict) and "f1" in v)
        if f1:
            lines.append(f"held-out: {f1}")
    return "\n".join(lines) or "no description"


def list_models() -> list[ModelEntry]:
    """Shipped models that are present, then the user's models (``*.pt`` but not ``*.last.pt``)."""
    out = [_entry(n, WEIGHTS / f"{n}.pt", True) for n in SHIPPED_MODELS if (WEIGHTS / f"{n}.pt").is_file()]
    folder = user_models_dir()
    if folder.is_dir():
        for p in sorted(folder.glob("*.pt")):
            if p.name.endswith(".last.pt") or p.stem in SHIPPED_MODELS:
                continue
            out.append(_entry(p.stem, p, False))
    return out


_listeners: list = []


def on_models_changed(callback) -> None:
    """Call ``callback()`` whenever a model is saved (kept by weak reference for bound methods)."""
    import weakref

    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda cb=callback: cb)
    _listeners.append(ref)


def notify_models_changed() -> None:
    """Tell the model pickers (Predict, Fine-tune) to re-read the model list."""
    alive = []
    for ref in _listeners:
        cb = ref()
        if cb is None:
            continue
        alive.append(ref)
        try:
            cb()
        except RuntimeError:  # a closed widget whose Qt object is gone
            alive.pop()
    _listeners[:] = alive
