"""Where HydrAFM keeps things: shipped pools, the cache for simulated data, user models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_dir", "pool_path", "POOLS"]

#: The structure pools shipped with the package (``hydrafm pool KIND`` remakes them).
POOLS = {"water": "water_windows.npz", "hydrates": "hydrates.npz", "ice": "ice_windows.npz",
         "ice-md": "ice_md_windows.npz"}


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$HYDRAFM_CACHE`` or the platform's user cache dir), with sub-folders."""
    root = os.environ.get("HYDRAFM_CACHE")
    if not root:
        try:
            from platformdirs import user_cache_dir

            root = user_cache_dir("hydrafm")
        except ImportError:  # a bare node without platformdirs
            root = os.path.join(os.path.expanduser("~"), ".cache", "hydrafm")
    return Path(root).joinpath(*parts)


def data_dir(*parts: str) -> Path:
    """The user data folder (``$HYDRAFM_DATA`` or the platform's user data dir): fine-tuned models."""
    root = os.environ.get("HYDRAFM_DATA")
    if not root:
        from platformdirs import user_data_dir

        root = user_data_dir("hydrafm")
    return Path(root).joinpath(*parts)


def pool_path(kind: str) -> Path:
    """Path of a shipped structure pool (``water``, ``hydrates``, ``ice`` or ``ice-md``)."""
    if kind not in POOLS:
        raise ValueError(f"unknown pool {kind!r}; choose one of {sorted(POOLS)} or give a .npz path")
    return Path(__file__).parent / "structures" / "pools" / POOLS[kind]
