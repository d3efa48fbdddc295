"""Progress records yielded by long-running generators, and a driver for the CLI.

Long work in HydrAFM is a generator that yields :class:`Progress` records and
returns its result. The CLI drives it with :func:`drive` (a tqdm bar on stderr);
the napari widgets run the same generator in a ``thread_worker``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar

__all__ = ["Progress", "drive"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``stage`` are finished."""

    stage: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def drive(
    gen: Generator[Any, None, T], *, show: bool = True, on_record: Callable[[Any], None] | None = None
) -> T:
    """Run a progress generator to completion, drawing a bar per stage; return its result.

    Records that are not :class:`Progress` (e.g. per-epoch statistics) go to
    ``on_record``, after the current bar is cleared.
    """
    try:
        from tqdm import tqdm
    except ImportError:  # a bare node without tqdm: no bars
        show = False
    bar = None
    stage = None
    try:
        while True:
            try:
                rec = next(gen)
            except StopIteration as stop:
                return stop.value
            if not isinstance(rec, Progress):
                if on_record is not None:
                    if bar is not None:
                        bar.close()
                        bar, stage = None, None
                    on_record(rec)
                continue
            if not show:
                continue
            if rec.stage != stage or bar is None:
                if bar is not None:
                    bar.close()
                stage = rec.stage
                bar = tqdm(total=rec.total, desc=rec.stage, file=sys.stderr, leave=False, dynamic_ncols=True)
            bar.n = rec.done
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
