"""What the HydrAFM dock widgets share: layers ↔ stacks and atoms, and error reporting."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._layers import ATOMS_KEY, layer_stack
from ..io.xyz import points_to_atoms
from ..stack import AFMStack

__all__ = ["stack_of_layer", "atoms_of_layer", "stack_layer_for", "is_stack_layer", "report_error", "confirm",
           "show_progress"]


def is_stack_layer(layer: Any) -> bool:
    """An image layer holding a (height, y, x) stack, not one HydrAFM derived (maps, simulations)."""
    return (layer._type_string == "image" and np.ndim(layer.data) == 3 and ATOMS_KEY not in layer.metadata
            and "hydrafm_derived" not in layer.metadata)


def stack_of_layer(layer: Any) -> AFMStack:
    """The AFMStack behind an image layer (its scale and translate as Å for foreign layers)."""
    return layer_stack(layer.data, layer.metadata, tuple(layer.scale), tuple(layer.translate))


def atoms_of_layer(layer: Any):
    """The atoms (ase) of a points layer, in Å (world coordinates), with Predict's estimate of the
    closest probe's height (``info["closest_probe"]``, where ``--probe-estimate`` starts Refine's tip
    search) when Predict made the layer."""
    pts = np.asarray(layer.data, dtype=np.float64)
    world = pts * np.asarray(layer.scale) + np.asarray(layer.translate) if len(pts) else pts
    atoms = points_to_atoms(world, layer.features)
    probe = layer.metadata.get(ATOMS_KEY, {}).get("closest_probe")
    if isinstance(probe, (int, float)) and np.isfinite(probe):
        atoms.info["closest_probe"] = float(probe)
    return atoms


def stack_layer_for(viewer: Any, points: Any, fallback: Any = None) -> Any:
    """The stack layer a points layer's atoms belong to.

    The stack it was predicted from (by name), else ``fallback``, else the only stack
    in the viewer; otherwise a ValueError asks the user to say.
    """
    name = points.metadata.get(ATOMS_KEY, {}).get("stack")
    stacks = [layer for layer in viewer.layers if is_stack_layer(layer)]
    for layer in stacks:
        if layer.name == name:
            return layer
    if fallback is not None:
        return fallback
    if len(stacks) == 1:
        return stacks[0]
    raise ValueError(f"{points.name}: which stack do these atoms belong to? Predict them from a stack first, "
                     "or keep one stack in the viewer.")


def report_error(exc: BaseException, info: Any) -> None:
    """Show an error as a napari notification and in the widget's ``info`` label."""
    from napari.utils.notifications import show_error

    message = str(exc) or type(exc).__name__
    info.value = "Error: " + message
    show_error(message)


def confirm(parent: Any, question: str) -> bool:
    """Ask Yes/No (No is the default); True on Yes."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(parent, "HydrAFM", question,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def show_progress(bar: Any, rec: Any) -> bool:
    """Show a :class:`~hydrafm.progress.Progress` record on a magicgui ProgressBar; False for other records."""
    from ..progress import Progress

    if not isinstance(rec, Progress):
        return False
    bar.max = max(1, rec.total)
    bar.value = min(rec.done, rec.total)
    bar.label = rec.stage
    return True
