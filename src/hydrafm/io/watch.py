"""Watching an instrument's output folder: frames read as they are written, grouped into stacks.

A constant-height stack is measured one height at a time, and the instrument software
writes one file per height into its data folder (Nanonis ``.sxm``, Createc ``.dat``,
Gwyddion ``.gwy``, or numbered ``0.png … N.png`` images with a ``cell.txt``).
:class:`FolderWatcher` polls that folder (plain ``os.scandir``, so it works on network
shares and every OS) and reads each file once, when it is complete:

* its size and modification time have not changed for ``settle`` seconds (seen
  unchanged across polls, or not modified for that long by the file's own time stamp);
* the reader accepts it: a file cut short fails the readers' length checks (a Nanonis
  file needs all its data planes, a Createc file its whole zlib stream, a PNG all its
  chunks), and is tried again when it grows;
* it did not change while it was being read.

An incomplete scan (unrecorded lines saved as NaN) is read as the readers always do:
its missing lines are cropped with a warning; such a frame does not fit the other
frames of its stack and is left out of it with a :class:`FileProblem`.

Frames are grouped by their :class:`ScanFrame` (pixels, scan range, scan offset,
angle, channel): a new scan frame starts a new stack. Within a stack the frames are
ordered by height exactly as :func:`hydrafm.io.load_stack` orders a finished folder,
so the watched stack ends identical to loading the folder.

>>> watcher = FolderWatcher("D:/data/2026-03-01")
>>> for record in watcher.poll():      # call every 0.1 s or so
...     print(record)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..stack import AFMStack
from . import FORMATS, read_frame, stack_from_frames
from ._common import Frame, check_direction, stack_frames
from .errors import AFMFileError, CorruptFileError
from .images import read_png_frame

__all__ = ["FolderWatcher", "ScanFrame", "WatchedStack", "StackChanged", "FileProblem", "scan_frame_of",
           "is_frame_file", "WATCHED_KINDS"]

#: File kinds that hold one frame (one height) each, as the instrument writes them.
WATCHED_KINDS = ("sxm", "createc", "gwy", "png")


def is_frame_file(path: Path) -> bool:
    """Whether a file name is one the watcher reads: .sxm, .dat, .gwy or a numbered ``N.png``.

    Hidden files and editors' or copy tools' temporary names are skipped.
    """
    name = path.name
    if name.startswith((".", "~")) or name.endswith(("~", ".tmp", ".part")):
        return False
    kind = FORMATS.get(path.suffix.lower())
    if kind == "png":
        return path.stem.isdigit()
    return kind in WATCHED_KINDS


@dataclass(frozen=True)
class ScanFrame:
    """Where and how a frame was scanned; frames with equal scan frames form one stack.

    Attributes
    ----------
    pixels
        ``(nx, ny)`` as scanned (an incomplete scan keeps its full size here).
    scan_range
        ``(width, height)`` in Å, to 0.01 Å.
    offset
        The scan centre ``(x, y)`` in Å (Nanonis), the raw offset in DAC units (Createc),
        or ``None`` when the file has none.
    angle
        Scan angle in degrees.
    channel
        The channel read (frames of different channels never share a stack).
    """

    pixels: tuple[int, int]
    scan_range: tuple[float, float]
    offset: tuple[float, float] | None
    angle: float
    channel: str | None

    def describe(self) -> str:
        """``48 × 48 px, 10.0 × 10.0 Å, angle -41°`` for status lines."""
        (nx, ny), (width, height) = self.pixels, self.scan_range
        return (f"{nx} × {ny} px, {width:.1f} × {height:.1f} Å, "
                f"angle {self.angle:g}°")


def scan_frame_of(frame: Frame) -> ScanFrame:
    """The scan frame of a frame read by one of the readers."""
    dy, dx = frame.pixel_size
    rng = frame.metadata.get("scan_range_angstrom")
    if rng is not None:
        height, width = (float(v) for v in rng)
    else:
        height, width = frame.data.shape[0] * dy, frame.data.shape[1] * dx
    offset: tuple[float, float] | None = None
    center = frame.metadata.get("scan_center_angstrom")
    dac = frame.metadata.get("scan_offset_dac")
    if center is not None:
        offset = (round(float(center[1]), 2), round(float(center[0]), 2))
    elif dac is not None and any(v is not None for v in dac):
        offset = tuple(None if v is None else round(float(v), 1) for v in dac)  # type: ignore[assignment]
    return ScanFrame(
        pixels=(round(width / dx), round(height / dy)),
        scan_range=(round(width, 2), round(height, 2)),
        offset=offset,
        angle=round(float(frame.metadata.get("scan_angle_deg", 0.0)), 3),
        channel=frame.channel,
    )


@dataclass
class WatchedStack:
    """The frames of one scan frame read so far; :meth:`stack` makes them one :class:`AFMStack`."""

    name: str
    scan_frame: ScanFrame
    folder: Path
    z_order: str = "auto"
    frames: list[Frame] = field(default_factory=list)

    @property
    def n_heights(self) -> int:
        """Frames (heights) in the stack so far."""
        return len(self.frames)

    def stack(self) -> AFMStack:
        """The stack as :func:`~hydrafm.io.load_stack` would read these files from a folder."""
        if all(f.path.suffix.lower() == ".png" for f in self.frames):  # 0.png = closest, no heights
            stack = stack_frames(sorted(self.frames, key=lambda f: int(f.path.stem)), self.folder)
            stack.metadata["z_order"] = "0.png closest"
            return stack
        return stack_from_frames(sorted(self.frames, key=lambda f: f.path.name), self.folder, self.z_order)


@dataclass(frozen=True)
class StackChanged:
    """New frames joined a stack (or started a new one).

    Attributes
    ----------
    name
        The stack's name (the first file's name without extension).
    stack
        The whole stack as it is now.
    paths
        The files that were added.
    new
        True when these are the first frames of a new scan frame.
    scan_frame
        The stack's scan frame.
    """

    name: str
    stack: AFMStack
    paths: tuple[Path, ...]
    new: bool
    scan_frame: ScanFrame


@dataclass(frozen=True)
class FileProblem:
    """A file that is not (or not yet) part of a stack, and why, in one line that names it."""

    path: Path
    message: str


@dataclass
class _FileState:
    signature: tuple  # (size, mtime_ns[, cell.txt's])
    seen: float  # when this signature was first seen (clock)
    tried: float | None = None  # when a read of this signature last failed
    error: AFMFileError | None = None
    reported: bool = False


class FolderWatcher:
    """Poll a folder for frame files, read each once it is complete, group them into stacks.

    Parameters
    ----------
    folder
        The instrument's output folder (only files directly in it are watched).
    channel, direction
        As for :func:`~hydrafm.io.load_stack` (``None`` = Δf).
    z_order
        For frames without heights (Createc): which end is the closest, as in
        :func:`~hydrafm.io.load_stack`.
    settle
        Seconds a file's size and time stamp must stay unchanged before it is read.
    give_up
        Seconds after its last change after which a file that still cannot be read is
        reported as a :class:`FileProblem` (files of the wrong kind, such as a scan
        without a Δf channel, are reported as soon as they are stable).
    retry
        Seconds between read attempts of a file that failed and has not changed.
    clock
        The wall clock (``time.time``), replaceable in tests.

    Attributes
    ----------
    stacks
        ``{name: WatchedStack}`` in the order they started.
    stats
        Counters: ``read`` (frames accepted), ``cut_short`` (files that looked stable but
        failed the reader, then were waited for), ``changed_while_reading``.
    """

    def __init__(
        self,
        folder: str | Path,
        channel: str | int | None = None,
        direction: str = "forward",
        *,
        z_order: str = "auto",
        settle: float = 0.3,
        give_up: float = 30.0,
        retry: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise AFMFileError(self.folder, "not a folder (give the folder the instrument writes to)")
        self.channel = channel
        self.direction = check_direction(direction, self.folder)
        self.z_order = z_order
        self.settle, self.give_up, self.retry = float(settle), float(give_up), float(retry)
        self.clock = clock
        self.stacks: dict[str, WatchedStack] = {}
        self.stats = {"read": 0, "cut_short": 0, "changed_while_reading": 0}
        self.last_change = clock()
        self._files: dict[Path, _FileState] = {}
        self._done: set[Path] = set()
        self._by_frame: dict[ScanFrame, str] = {}

    # ------------------------------------------------------------------ state
    @property
    def waiting(self) -> list[Path]:
        """Files seen but not read yet (still being written, or not readable yet)."""
        return [p for p, s in self._files.items() if not s.reported]

    @property
    def problems(self) -> list[Path]:
        """Files reported as problems and not read."""
        return [p for p, s in self._files.items() if s.reported]

    # ------------------------------------------------------------------- poll
    def poll(self) -> list[StackChanged | FileProblem]:
        """Look at the folder once; read the files that are complete; one record per changed stack.

        Returns
        -------
        list
            :class:`StackChanged` (one per stack that gained frames) and :class:`FileProblem`
            records, in the order they happened.
        """
        now = self.clock()
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except OSError as exc:
            raise AFMFileError(self.folder, f"cannot list the folder ({exc.strerror or exc})") from None
        problems: list[FileProblem] = []
        added: dict[str, list[Path]] = {}
        new_stacks: set[str] = set()
        for entry in entries:
            path = Path(entry.path)
            if path in self._done or not is_frame_file(path):
                continue
            sig = self._signature(path)
            if sig is None:
                self._files.pop(path, None)
                continue
            state = self._files.get(path)
            if state is None or state.signature != sig:
                self._files[path] = state = _FileState(sig, now)
                self.last_change = now
            if not self._looks_complete(state, sig, now):
                continue
            if state.tried is not None and now - state.tried < self.retry:
                continue
            frame = self._read(path, state, sig, now)
            if frame is None:
                if state.error is not None and not state.reported and self._give_up(state, now):
                    state.reported = True
                    problems.append(FileProblem(path, str(state.error)))
                continue
            del self._files[path]
            self._done.add(path)
            self.stats["read"] += 1
            name, problem = self._add(frame)
            if problem is not None:
                problems.append(problem)
                continue
            if name not in added and self.stacks[name].n_heights == 1:
                new_stacks.add(name)
            added.setdefault(name, []).append(path)
        records: list[StackChanged | FileProblem] = list(problems)
        for name, paths in added.items():
            ws = self.stacks[name]
            try:
                stack = ws.stack()
            except AFMFileError as exc:  # frames that cannot be stacked together: leave the new ones out
                ws.frames = [f for f in ws.frames if f.path not in paths]
                records.extend(FileProblem(p, f"{p}: {exc.reason}; left out of stack {name}") for p in paths)
                continue
            records.append(StackChanged(name, stack, tuple(paths), name in new_stacks, ws.scan_frame))
        return records

    # ------------------------------------------------------------- helpers
    def _signature(self, path: Path) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:  # gone (a temporary file renamed) or not accessible
            return None
        sig: tuple = (st.st_size, st.st_mtime_ns)
        if path.suffix.lower() == ".png":  # an image waits for its cell.txt, too
            try:
                cell = os.stat(self.folder / "cell.txt")
                sig += (cell.st_size, cell.st_mtime_ns)
            except OSError:
                sig += (None,)
        return sig

    def _looks_complete(self, state: _FileState, sig: tuple, now: float) -> bool:
        if sig[0] == 0:
            return False
        unchanged_for = now - state.seen
        untouched_for = now - sig[1] / 1e9
        return unchanged_for >= self.settle or untouched_for >= self.settle

    def _give_up(self, state: _FileState, now: float) -> bool:
        not_cut_short = not isinstance(state.error, CorruptFileError)
        return (not_cut_short and now - state.seen >= self.settle) or now - state.seen >= self.give_up

    def _read(self, path: Path, state: _FileState, sig: tuple, now: float) -> Frame | None:
        try:
            if path.suffix.lower() == ".png":
                frame = read_png_frame(path)
            else:
                frame = read_frame(path, self.channel, self.direction)
        except AFMFileError as exc:
            if state.error is None and isinstance(exc, CorruptFileError):
                self.stats["cut_short"] += 1
            state.tried, state.error = now, exc
            return None
        if self._signature(path) != sig:  # written to while we read it: start over
            self.stats["changed_while_reading"] += 1
            self._files.pop(path, None)
            return None
        return frame

    def _add(self, frame: Frame) -> tuple[str, FileProblem | None]:
        key = scan_frame_of(frame)
        name = self._by_frame.get(key)
        cropped = int(frame.metadata.get("cropped_lines") or 0)
        if cropped:
            return name or "", FileProblem(
                frame.path,
                f"{frame.path}: incomplete scan, {cropped} of {key.pixels[1]} lines not recorded; "
                f"left out of its stack ({key.describe()})")
        if name is None:
            name = self._new_name(frame.path)
            self._by_frame[key] = name
            self.stacks[name] = WatchedStack(name, key, self.folder, self.z_order)
        self.stacks[name].frames.append(frame)
        return name, None

    def _new_name(self, path: Path) -> str:
        base = path.stem if not path.stem.isdigit() else f"{self.folder.name}-{path.stem}"
        name, k = base, 2
        while name in self.stacks:
            name, k = f"{base}-{k}", k + 1
        return name

