"""HydrAFM: atoms from multi-height nc-AFM stacks of interfacial water, in napari.

The public entry points:

* :func:`load_stack` reads instrument files (Nanonis, Createc, PNG/TIFF, ml-spm
  .npz, Gwyddion) into an :class:`AFMStack`.
* ``hydrafm`` on the command line (``hydrafm info PATH...``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .io import AFMFileError, load_stack, save_npz
from .stack import AFMStack

try:
    __version__ = version("hydrafm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["AFMStack", "AFMFileError", "load_stack", "save_npz", "__version__"]
