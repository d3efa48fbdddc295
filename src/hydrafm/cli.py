"""The ``hydrafm`` command line.

``hydrafm info PATH...`` prints one JSON object per stack (one PATH = one stack:
a file, or a folder holding one stack). Bad input ends with a one-line
``hydrafm: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from typing import Sequence

from . import __version__
from .io import AFMFileError, ChannelNotFoundError, load_stack
from .paths import POOLS
from .simulate.settings import SimulationError

EXIT_BAD_INPUT = 2
RANDOM_TIPS_HELP = ("draw each stack's tip and scan like an experiment, as the shipped models were "
                    "trained: closest probe 2.3–3.8 Å, lateral stiffness 0.25–0.8 N/m, charge −0.2…+0.1 e, "
                    "a quadrupole on 30 %%, amplitude 0.6/1.0/1.4 Å, true height step 0.08/0.10/0.12 Å "
                    "(the grid keeps its own)")


def _scan_size(text: str) -> tuple[float, float]:
    """``25`` (Å), ``2.5nm``, ``25x30`` or ``2.5x3nm`` → ``(height_y, width_x)`` in Å."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:[x,]\s*([0-9.eE+-]+))?\s*(nm|a|å|angstrom)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad scan size {text!r}; use e.g. 25 (Å), 2.5nm or 25x30")
    f = 10.0 if m.group(3) == "nm" else 1.0
    a = float(m.group(1)) * f
    b = float(m.group(2)) * f if m.group(2) else a
    return (a, b)


def _heights(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad heights {text!r}; use e.g. 0,0.1,0.2 (Å)") from None


def _add_stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", help="channel name or index (default: frequency shift Δf)")
    p.add_argument("--direction", default="forward", choices=["forward", "backward"])
    p.add_argument("--scan-size", type=_scan_size, help="scan size for files without one: 25 (Å), 2.5nm, 25x30")
    p.add_argument("--heights", type=_heights, help="comma-separated heights in Å (3ds: slices to cut)")
    p.add_argument(
        "--z-order", default="auto", choices=["auto", "closest_first", "closest_last"],
        help="frame order for files without heights (default: inferred from contrast)",
    )


def _channel_arg(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="hydrafm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hydrafm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe AFM stacks as JSON (one line per PATH)")
    info.add_argument("paths", nargs="*", metavar="PATH", help="a file, or a folder holding one stack")
    info.add_argument("--sample", action="store_true", help="describe the bundled sample stack")
    _add_stack_options(info)

    view = sub.add_parser("view", help="open napari with stacks (or the bundled sample) loaded")
    view.add_argument("paths", nargs="*", metavar="PATH")
    view.add_argument("--sample", action="store_true", help="open the bundled sample stack")
    view.add_argument("--predict", action="store_true", help="predict the atoms of the last stack at once")
    view.add_argument("--model", help="model for the Predict widget (name or file)")

    pool = sub.add_parser("pool", help="(re)make a structure pool: MD water windows or relaxed hydrates")
    pool.add_argument("kind", choices=["water", "hydrates"])
    pool.add_argument("--out", type=Path, help="output .npz (default: the pool shipped in the package)")
    pool.add_argument("--cache", type=Path, help="cache for MD frames / partial pools (default: the HydrAFM cache dir)")
    pool.add_argument("--seed", type=int, default=0)
    pool.add_argument("--scale", type=float, default=1.0, help="fraction of the full MD length / pool size")
    pool.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    sim = sub.add_parser("simulate", help="simulate a training dataset of AFM stacks + atoms (resumable)")
    sim.add_argument("kind", choices=list(POOLS),
                     help="which structures (ice: the ice-like pool; ice-md: its windows annealed by MD)")
    sim.add_argument("-n", "--n", type=int, required=True, help="number of stacks")
    sim.add_argument("--out", type=Path, help="dataset folder (default: <cache>/datasets/KIND-sSEED)")
    sim.add_argument("--pool", type=Path, help="structure pool .npz (default: the shipped pool)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--shard-size", type=int, default=64)
    sim.add_argument("--pixels", type=int, default=128, help="pixels per side (default 128)")
    sim.add_argument("--scan-size", type=float, default=25.0, help="scan size in Å (default 25)")
    sim.add_argument("--pix-per-angstrom", type=int, default=5, help="force-field grid density")
    sim.add_argument("--layer-depth", type=float,
                     help="water: keep only molecules whose O is within this many Å of the highest O")
    sim.add_argument("--structures", metavar="A:B",
                     help="use only pool structures A..B-1 (e.g. 0:2000 for training, 2000:2400 for validation)")
    sim.add_argument("--split", choices=["all", "train", "held-out"], default="all",
                     help="only the pool's training or held-out structures (whole MD runs / families held out)")
    sim.add_argument("--distance", metavar="A:B",
                     help="closest probe height above the top atom, Å (default 2.3:2.9; 2.3:3.8 with --random-tips)")
    sim.add_argument("--random-tips", action="store_true", help=RANDOM_TIPS_HELP)
    _add_engine_options(sim)

    tr = sub.add_parser("train", help="train (or fine-tune) the structure network on a simulated dataset, "
                                      "or on batches simulated on the fly (--on-the-fly)")
    tr.add_argument("dataset", type=Path, nargs="?", help="dataset folder made by `hydrafm simulate`")
    tr.add_argument("--on-the-fly", action="store_true",
                    help="no dataset: simulate every batch on the training device from the structure pools")
    tr.add_argument("--pools", default="water",
                    help="on the fly: comma-separated pools to draw from (water, hydrates, ice, ice-md, or .npz files)")
    tr.add_argument("--pool-weights",
                    help="on the fly: how often each pool is drawn, in --pools' order (default: equally)")
    tr.add_argument("--minutes", type=float,
                    help="on the fly: stop cleanly after this many minutes (best checkpoint kept); with a time "
                         "budget, --epochs and --patience default to no limit")
    tr.add_argument("--cpu-minutes", type=float,
                    help="on the fly: stop after this much CPU time of the process (equal-compute comparisons)")
    tr.add_argument("--steps-per-epoch", type=int, default=100, help="on the fly: batches per epoch")
    tr.add_argument("--val-size", type=int, default=96, help="on the fly: held-out stacks scored every epoch")
    tr.add_argument("--sim-share", type=float,
                    help="on the fly: reuse simulated stacks from a replay buffer (each time freshly rotated, "
                         "drifted and noised), spending about this share of the time simulating (e.g. 0.5 on a CPU); "
                         "default: a fresh batch every step")
    tr.add_argument("--buffer", type=int, default=1024, help="on the fly with --sim-share: stacks kept for replay")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("-o", "--out", type=Path, required=True, help="checkpoint to write (best epoch)")
    tr.add_argument("--init-from", help="start from this model (name or file): fine-tuning / transfer")
    tr.add_argument("--epochs", type=int,
                    help="epochs at most (default 30; on the fly with --minutes or --cpu-minutes: no limit)")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=3e-4)
    tr.add_argument("--lr-final", type=float,
                    help="on the fly: decay the learning rate along a cosine to this value over the run's budget "
                         "(--minutes, --cpu-minutes or --epochs, whichever ends first); a resumed run may change it")
    tr.add_argument("--crop", type=int, default=64, help="train on random crops of this many px (0: whole)")
    tr.add_argument("--base-channels", type=int, default=16)
    tr.add_argument("--encoder", choices=["3d", "2d"], default="3d",
                    help="3d: 3D convolutions over the stack (depth folded at the skips); 2d: heights as channels")
    tr.add_argument("--head", choices=["maps", "cells"],
                    help="maps (default): a full-resolution map per label; cells: a confidence and sub-cell "
                         "position per label on a coarse grid (cells of --cell px; cheaper decoder); with "
                         "--init-from on the fly: a new head of this kind on the checkpoint's encoder")
    tr.add_argument("--cell", type=int, default=4, help="with --head cells: cell size in px (2, 4 or 8)")
    tr.add_argument("--max-batches", type=int, help="cap batches per epoch")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    tr.add_argument("--threads", type=int, help="CPU threads for torch")
    tr.add_argument("--noise", type=float,
                    help="on the fly: largest white and 1/f noise, each in units of the frame's std "
                         "(drawn uniformly up to it; default 0.08; 3 %% of a frame's range is ~0.16); "
                         "a resumed run may change it")
    tr.add_argument("--label-depth", type=float,
                    help="targets only for atoms within this many Å of the structure's top (what a scan sees; "
                         "default: all atoms, or with --init-from the model's own, 2 Å for the shipped ones)")
    tr.add_argument("--patience", type=int,
                    help="epochs without improvement before stopping (default 6; on the fly with --minutes or "
                         "--cpu-minutes: none, the time budget ends the run)")
    tr.add_argument("--val-runs", default="4,13",
                    help="water datasets: MD runs held out for validation (default 4,13); 'shard' = last shards")

    dn = sub.add_parser("train-denoiser", help="train the denoiser (experiment-like noise off a stack, before the "
                                                "structure network) on clean datasets of `hydrafm simulate`")
    _add_stack_net_options(dn, "denoiser", crop=64)
    dn.add_argument("--amplitude", type=float, default=0.06,
                    help="largest noise of each kind, in units of the frame's Δf range")

    dp = sub.add_parser("train-depth", help="train the depth network (how deep each O/ion lies below the "
                                            "closest probe) on datasets of `hydrafm simulate`")
    _add_stack_net_options(dp, "depth-network", crop=96)

    pr = sub.add_parser("predict", help="atoms from stacks → extended XYZ")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="one stack each: a file, or a folder holding one")
    pr.add_argument("-o", "--out", type=Path, required=True,
                    help="the .xyz file (one PATH) or a folder receiving <name>.xyz (several)")
    pr.add_argument("--model", default="water", help="shipped model name or checkpoint file")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    pr.add_argument("--threshold", type=float,
                    help="minimum confidence of an atom (default: the model's recommended threshold)")
    pr.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                    help="average over the four mirror images (more accurate, ~4× the network time; "
                         "default: as the model recommends)")
    _add_denoise_options(pr)
    _add_check_options(pr)
    pr.add_argument("--o-check-views", type=int, choices=(1, 4, 8),
                    help="read each O peak in this many views (turned and mirrored) instead of the check's own "
                         "(1); 8: a little more accurate (fresh ice-like and MD-water sets: O F1 +0.012), but "
                         "about 0.2-0.3 s more per stack on 2 CPU cores (docs/structure-network.md)")
    pr.add_argument("--depth", nargs="?", const=True, default=None, metavar="FILE",
                    help="place each molecule at its depth with the shipped depth network (or FILE); "
                         "default: on when this installation ships one and the model's card does not say otherwise")
    pr.add_argument("--no-depth", dest="depth", action="store_const", const=False,
                    help="every O and ion at z = 0 (the molecules' H above or below them)")
    pr.add_argument("--overwrite", action="store_true", help="replace existing .xyz files")
    pr.add_argument("--loose-atoms", action="store_true",
                    help="write the peaks as they are instead of whole molecules (H2O with two H, ion shells)")
    _add_stack_options(pr)

    ft = sub.add_parser("finetune", help="fine-tune a model on structures, corrected scans or a dataset")
    ft.add_argument("data", nargs="+", metavar="DATA",
                    help="a dataset folder (hydrafm simulate); a folder or files of structures (xyz, cif, "
                         "POSCAR …) to simulate; or STACK=ATOMS.xyz pairs (a scan and its corrected atoms)")
    ft.add_argument("--name", required=True, help="name of the new model (saved in the user data folder)")
    ft.add_argument("--base", default="water", help="model to start from (name or file; only read)")
    ft.add_argument("--epochs", type=int, default=20)
    ft.add_argument("--lr", type=float, default=3e-4)
    ft.add_argument("--batch-size", type=int, default=8)
    ft.add_argument("--crop", type=int, default=64, help="train on random crops of this many px (0: whole)")
    ft.add_argument("--val-fraction", type=float, default=0.2)
    ft.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and the head")
    ft.add_argument("--per-structure", type=int, default=8, help="structures: simulated draws per structure")
    ft.add_argument("--random-tips", action="store_true", help="structures: " + RANDOM_TIPS_HELP)
    ft.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ft.add_argument("--threads", type=int, help="CPU threads for torch")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--resume", action="store_true", help="continue the stopped run of this name")
    _add_engine_options(ft)
    _add_stack_options(ft)

    ev = sub.add_parser("evaluate", help="precision / recall / F1 per label on a simulated dataset")
    ev.add_argument("dataset", type=Path)
    ev.add_argument("--model", default="water", help="shipped model name or checkpoint file")
    ev.add_argument("-n", type=int, help="evaluate the first N samples only")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--threshold", type=float, help="default: the model's recommended threshold")
    ev.add_argument("--top", type=float, default=3.0, help="score true atoms within this many Å of the top")
    ev.add_argument("--visible", type=float, default=3.0,
                    help="predictions on real atoms below --top but within this many Å of the top are not "
                         "scored (0: count them as false positives, as before 2026-11-27)")
    ev.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                    help="average over the four mirror images (default: as the model recommends)")
    ev.add_argument("--loose-atoms", action="store_true", help="score the peaks as they are, not whole molecules")
    _add_denoise_options(ev)
    _add_check_options(ev)
    ev.add_argument("--by-group", action="store_true",
                    help="also report per structure family and per closest-distance regime")
    ev.add_argument("--degrade", action="store_true",
                    help="score after experiment-like degradations (3 %% white and 1/f noise, a background "
                         "plane, up to 0.3 Å drift, a scan-line jump); implies --by-group")
    ev.add_argument("--worst", type=Path, metavar="PNG",
                    help="write a picture grid of the worst cases (truth vs prediction) to this PNG")
    ev.add_argument("--val-runs", help="water datasets: score only samples from these MD runs (e.g. 4,13, "
                                       "the runs `hydrafm train` holds out)")
    wa = sub.add_parser("watch", help="live mode: watch the instrument's folder, stack frames as they are "
                                      "written, predict each stack again as its heights come in")
    wa.add_argument("folder", type=Path, metavar="FOLDER", help="the folder the instrument writes to")
    wa.add_argument("-o", "--out", type=Path, metavar="OUT",
                    help="folder receiving <stack>.xyz, replaced (atomically) whenever a stack's atoms change")
    wa.add_argument("--model", default="water", help="shipped model name or checkpoint file")
    wa.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    wa.add_argument("--threshold", type=float,
                    help="minimum confidence of an atom (default: the model's recommended threshold)")
    wa.add_argument("--no-predict", action="store_true", help="only watch and stack the frames")
    wa.add_argument("--settle", type=float, default=0.3,
                    help="seconds a file must stay unchanged before it is read (default 0.3)")
    wa.add_argument("--idle-exit", type=float, metavar="S",
                    help="stop once no file changed for S seconds and every prediction is done "
                         "(default: watch until Ctrl-C)")
    wa.add_argument("--channel", help="channel name or index (default: frequency shift Δf)")
    wa.add_argument("--direction", default="forward", choices=["forward", "backward"])
    wa.add_argument("--z-order", default="auto", choices=["auto", "closest_first", "closest_last"],
                    help="frame order for files without heights (default: inferred from contrast)")

    rf = sub.add_parser("refine", help="fit molecules (.xyz) to their stack through the AFM simulator → .xyz")
    rf.add_argument("stack", metavar="STACK", help="the stack: a file, or a folder holding one")
    rf.add_argument("atoms", type=Path, metavar="ATOMS.xyz", help="the molecules to refine (e.g. from predict)")
    rf.add_argument("-o", "--out", type=Path, required=True, help="the refined .xyz to write")
    rf.add_argument("--steps", type=int, default=60, help="simulations with gradients (default 60)")
    rf.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    rf.add_argument("--h-flips", action="store_true",
                    help="also try turning each water so that one of its H changes class (experimental)")
    rf.add_argument("--hbond-turns", action="store_true",
                    help="turn waters whose H do not point along H bonds to neighbours into orientations that do, "
                         "when the scan shows it, and favour H bonds in the fit (ice-like layers; see docs/refine.md)")
    rf.add_argument("--probe-estimate", action="store_true",
                    help="start the tip search from Predict's closest-probe estimate (closest_probe in "
                         "the .xyz) and pull the fitted distance towards it (off by default: docs/refine.md)")
    rf.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_stack_options(rf)

    hy = sub.add_parser("hydrate", help="predict the water density above a CaCO3 slab → Gaussian .cube")
    hy.add_argument("surface", help="a built-in surface (calcite-104, aragonite-010, aragonite-001, "
                                    "vaterite-010) or a slab file ase reads")
    hy.add_argument("-o", "--out", type=Path, required=True, help="the .cube to write")
    hy.add_argument("--model", default="hydration-calcite", help="density model name or file")
    hy.add_argument("--vacancies", type=int, default=0, help="Ca2+/CO3 2- vacancy pairs in the top layer")
    hy.add_argument("--seed", type=int, default=0, help="where the vacancies go")
    hy.add_argument("--size", type=float, nargs=2, default=(25.0, 25.0), metavar=("X", "Y"),
                    help="built-in surfaces: at least this many Å wide")
    hy.add_argument("--layers", type=int, default=3, help="built-in surfaces: layers in the slab")
    hy.add_argument("--device", default="cpu")
    hy.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return parser


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["torch", "ppafm"], default="torch",
                   help="AFM simulator: torch (default; any torch device) or ppafm (OpenCL reference)")
    p.add_argument("--sim-device", default="cpu", help="torch device of the torch engine (cpu, cuda, mps)")


def cmd_hydrate(args: argparse.Namespace) -> int:
    """Predict the density; print one JSON line (file, grid, ρ(z) peaks)."""
    from .hydration.density import iter_predict_density
    from .hydration.workflow import density_profile_peaks, slab_from_spec, write_density_cube
    from .progress import drive

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: exists; give --overwrite to replace it")
    slab = slab_from_spec(args.surface, vacancies=args.vacancies, seed=args.seed, size=tuple(args.size),
                          layers=args.layers)
    dens = drive(iter_predict_density(slab, args.model, args.device))
    write_density_cube(args.out, slab, dens, overwrite=args.overwrite)
    z, rho = dens.profile()
    print(json.dumps({"cube": str(args.out), "grid": list(dens.density.shape),
                      "spacing_A": [round(float(s), 4) for s in dens.spacing],
                      "peaks_A": [round(p, 2) for p in density_profile_peaks(dens)],
                      "bulk_like_mean_8_14A": round(float(rho[(z > 8) & (z < 14)].mean()), 5)}))
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    """Refine the molecules of ATOMS against STACK; write OUT and print one JSON summary."""
    from .io.xyz import read_xyz, write_xyz
    from .progress import drive
    from .refine import RefineSettings, iter_refine_atoms
    from .refine.fit import PROBE_ESTIMATE_STEP
    from .training.train import pick_device

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: exists; give --overwrite to replace it")
    if args.steps < 0:
        raise ValueError(f"--steps must be 0 or more, not {args.steps}")
    stack = load_stack(args.stack, _channel_arg(args.channel), direction=args.direction, scan_size=args.scan_size,
                       heights=args.heights, z_order=args.z_order)
    atoms = read_xyz(args.atoms)
    cfg = RefineSettings(steps=args.steps, flips=args.h_flips, hbond_turns=args.hbond_turns,
                         probe_estimate=PROBE_ESTIMATE_STEP if args.probe_estimate else None)
    try:
        res = drive(iter_refine_atoms(stack, atoms, cfg, pick_device(args.device)), show=sys.stderr.isatty())
    except ValueError as exc:  # e.g. a one-frame stack, or molecules outside the scan
        raise ValueError(f"{args.stack} with {args.atoms}: {exc}") from exc
    write_xyz(res.atoms, args.out, overwrite=args.overwrite)
    scores = list(res.fit_score.values())
    print(json.dumps({"output": str(args.out), "atoms": _label_counts(res.atoms), "moves": res.moves,
                      "image_loss": [round(v, 5) for v in res.image_loss],
                      "similarity": [round(float(res.similarity_before.mean()), 4),
                                     round(float(res.similarity.mean()), 4)],
                      "mean_fit_score": round(float(np.mean(scores)), 4) if scores else None,
                      "tip": {"distance": round(res.tip.distance, 3), "k_lateral": round(res.tip.k_lateral, 3),
                              "charge": round(res.tip.charge, 4), "height_step": round(res.tip.height_step, 4),
                              "drift": [round(v, 4) for v in res.tip.drift]},
                      "seconds": round(res.seconds, 2)}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print one JSON object per PATH."""
    from ._sample_data import sample_path

    paths: list[str | Path] = list(args.paths)
    if args.sample:
        paths.append(sample_path())
    if not paths:
        raise AFMFileError(None, "give at least one PATH (or --sample)")
    channel = _channel_arg(args.channel)
    for path in paths:
        kwargs = dict(direction=args.direction, scan_size=args.scan_size, heights=args.heights, z_order=args.z_order)
        try:
            stack = load_stack(path, channel, **kwargs)
        except ChannelNotFoundError as exc:
            if channel is not None:
                raise
            # No Δf channel: describe the file through its first channel, and say so.
            stack = load_stack(path, 0, **kwargs)
            print(f"hydrafm: note: {exc.path}: no Δf channel; described through channel "
                  f"{stack.channel!r}", file=sys.stderr)
        print(json.dumps(stack.summary()), flush=True)
    return 0


def cmd_view(args: argparse.Namespace) -> int:  # pragma: no cover - opens a window
    """Open napari with the HydrAFM widgets (Load, Predict, Fine-tune, Hydration) and the given stacks."""
    import napari

    from ._sample_data import sample_path

    viewer = napari.Viewer(title="HydrAFM")
    viewer.window.add_plugin_dock_widget("hydrafm", "Load AFM stack")
    _, predict = viewer.window.add_plugin_dock_widget("hydrafm", "Predict atoms")
    viewer.window.add_plugin_dock_widget("hydrafm", "Fine-tune a model", tabify=True)
    viewer.window.add_plugin_dock_widget("hydrafm", "Hydration density (CaCO3)", tabify=True)
    paths = [str(p) for p in args.paths]
    if args.sample:
        paths.append(str(sample_path()))
    for p in paths:
        viewer.open(p, plugin="hydrafm")
    if args.model:
        if args.model in predict.model.choices:
            predict.model.value = args.model
        else:
            predict.model_file.value = args.model
    if args.predict and paths:
        predict.predict()
    napari.run()
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    """Make a structure pool (resumable: finished MD runs are cached)."""
    from .paths import cache_dir, pool_path
    from .progress import drive

    out = args.out or pool_path(args.kind)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.kind == "water":
        from .structures.water_pool import default_runs, make_water_pool

        cache = args.cache or cache_dir("md")
        pool = drive(make_water_pool(out, cache, default_runs(args.seed, args.scale), seed=args.seed,
                                     overwrite=args.overwrite))
    else:
        from .structures.hydrates import make_hydrate_pool

        cache = args.cache or cache_dir("hydrates")
        pool = drive(make_hydrate_pool(out, n=max(1, round(2400 * args.scale)), seed=args.seed,
                                       overwrite=args.overwrite,
                                       checkpoint=cache / f"partial_s{args.seed}_n{round(2400 * args.scale)}.npz"))
    print(json.dumps({"pool": str(out), "structures": len(pool), "bytes": out.stat().st_size}))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate (or resume) a dataset; prints its folder and size as JSON."""
    from dataclasses import replace

    from .paths import cache_dir, pool_path
    from .progress import drive
    from .simulate.dataset import make_dataset
    from .simulate.settings import SimulationSettings, TipRanges
    from .structures.pool import StructurePool

    pool_file = args.pool or pool_path(args.kind)
    if not pool_file.exists():
        raise AFMFileError(pool_file, "structure pool not found (make it with `hydrafm pool`)")
    pool = StructurePool.load(pool_file)
    pool_name = pool_file.name
    if args.structures:
        try:
            a, b = (int(v) if v else None for v in args.structures.split(":"))
        except ValueError:
            raise ValueError(f"bad --structures {args.structures!r}; use A:B, e.g. 0:2000") from None
        chosen = range(len(pool))[slice(a, b)]
        if len(chosen) == 0:
            raise ValueError(f"--structures {args.structures} selects no structure of the {len(pool)} in {pool_name}")
        pool = pool.subset(chosen)
        pool_name = f"{pool_name}[{args.structures}]"
    if args.split != "all":
        from .training.onthefly import default_split

        chosen = default_split(args.kind if args.pool is None else str(pool_file), pool)[0 if args.split == "train" else 1]
        pool = pool.subset(chosen.indices)
        pool_name = f"{pool_name}[{args.split}]"
    extra = {}
    tips = TipRanges() if args.random_tips else None
    if args.distance:
        try:
            lo, hi = (float(v) for v in args.distance.split(":"))
        except ValueError:
            raise ValueError(f"bad --distance {args.distance!r}; use A:B in Å, e.g. 2.5:3.0") from None
        if not 0 < lo <= hi:
            raise ValueError(f"bad --distance {args.distance!r}: need 0 < A ≤ B")
        extra["closest_distance"] = (lo, hi)
        tips = replace(tips, distance=(lo, hi)) if tips is not None else None
    settings = SimulationSettings(n_pixels=args.pixels, scan_size=args.scan_size,
                                  pix_per_angstrom=args.pix_per_angstrom, **extra)
    out = args.out or cache_dir("datasets", f"{args.kind}-s{args.seed}")
    drive(make_dataset(out, args.n, args.kind, pool, settings, seed=args.seed, shard_size=args.shard_size,
                       pool_name=pool_name, layer_depth=args.layer_depth, engine=args.engine,
                       device=args.sim_device, tips=tips))
    print(json.dumps({"dataset": str(out), "stacks": args.n}))
    return 0


def _split_water_runs(ds, val_runs: str):
    """``(train, val)`` indices of a water dataset made from the shipped pool, split by MD run; None if not."""
    from .paths import pool_path
    from .structures.pool import StructurePool
    from .training.train import split_by_run

    pool = StructurePool.load(pool_path("water"))
    if ds.manifest["kind"] != "water" or ds.manifest["pool"].get("structures") != len(pool) or "run" not in pool.info:
        return None
    return split_by_run(ds, pool.info["run"], [int(v) for v in val_runs.split(",")])


def _net_config(args: argparse.Namespace):
    """The network to train from the command's options."""
    from .models.unet import UNetConfig

    return UNetConfig(base_channels=args.base_channels, encoder=args.encoder, head=args.head or "maps",
                      cell=args.cell)


def cmd_train(args: argparse.Namespace) -> int:
    """Train; prints one JSON line per epoch."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.on_the_fly:
        return _train_on_the_fly(args)
    from .models.registry import model_path
    from .progress import drive
    from .simulate.dataset import AFMDataset
    from .training.train import TrainConfig, train

    if args.dataset is None:
        raise ValueError("give a dataset folder (made by `hydrafm simulate`), or --on-the-fly")
    if args.minutes is not None or args.cpu_minutes is not None:
        raise ValueError("--minutes and --cpu-minutes work with --on-the-fly only; on a dataset give --epochs")
    ds = AFMDataset(args.dataset)
    init = model_path(args.init_from) if args.init_from else None
    epochs, patience = _epoch_limits(args)
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, crop=args.crop or None,
                      device=args.device, label_depth=args.label_depth, patience=patience)
    if init is not None:  # continuing a model: its label depth (unless --label-depth) and normalisation
        from .models.checkpoint import load_checkpoint
        from .training.finetune import base_recipe

        base_info = load_checkpoint(init)[1]
        if args.head is not None and args.head != base_info.config.head:
            raise ValueError(f"--head {args.head}: {init} has a {base_info.config.head} head; a new head on a "
                             "checkpoint's encoder needs --on-the-fly")
        cfg = base_recipe(cfg, base_info)
    split = _split_water_runs(ds, args.val_runs) if args.val_runs != "shard" else None
    train_idx, val_idx = split if split is not None else (None, None)
    if split is not None:
        print(f"hydrafm: validation = MD runs {args.val_runs}: {len(val_idx)} of {len(ds)} samples",
              file=sys.stderr)
    gen = train(ds, args.out, cfg, _net_config(args), init_from=init,
                train_indices=train_idx, val_indices=val_idx, max_batches_per_epoch=args.max_batches)
    drive(gen, on_record=lambda rec: print(
        json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(rec).items()}), flush=True))
    return 0


#: ``--epochs`` / ``--patience`` of a run that a time budget ends
NO_EPOCH_LIMIT = 100_000


def _epoch_limits(args: argparse.Namespace) -> tuple[int, int]:
    """``(epochs, patience)``: as given; else 30 and 6, or no limit when a time budget ends the run.

    A run given ``--minutes 120`` should train for two hours, not stop after the default 30 epochs or
    the first 6 without a better validation loss (the best epoch is kept either way)."""
    budget = getattr(args, "minutes", None) is not None or getattr(args, "cpu_minutes", None) is not None
    epochs = args.epochs if args.epochs is not None else (NO_EPOCH_LIMIT if budget else 30)
    patience = args.patience if args.patience is not None else (NO_EPOCH_LIMIT if budget else 6)
    for name, v in (("--epochs", epochs), ("--patience", patience)):
        if v < 1:
            raise ValueError(f"{name} must be 1 or more, not {v}")
    return epochs, patience


def _train_on_the_fly(args: argparse.Namespace) -> int:
    """``hydrafm train --on-the-fly``: prints one JSON line per epoch (rank 0 under torchrun)."""
    from .paths import cache_dir
    from .progress import drive
    from .training.onthefly import OnTheFlyConfig, train_on_the_fly

    pools = tuple(p.strip() for p in args.pools.split(",") if p.strip())
    weights = None
    if args.pool_weights:
        try:
            weights = tuple(float(w) for w in args.pool_weights.split(","))
        except ValueError:
            raise ValueError(f"--pool-weights must be numbers, not {args.pool_weights!r}") from None
        if len(weights) != len(pools) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"--pool-weights needs one weight (≥ 0, not all 0) per pool of --pools "
                             f"{','.join(pools)}, got {args.pool_weights!r}")
    epochs, patience = _epoch_limits(args)
    cfg = OnTheFlyConfig(pools=pools, pool_weights=weights,
                         batch_size=args.batch_size, crop=args.crop or 64, steps_per_epoch=args.steps_per_epoch,
                         epochs=epochs, minutes=args.minutes, cpu_minutes=args.cpu_minutes,
                         val_size=args.val_size, lr=args.lr, lr_final=args.lr_final,
                         patience=patience, seed=args.seed, sim_share=args.sim_share, buffer=args.buffer,
                         label_depth=args.label_depth if args.label_depth is not None else 2.0)
    if args.noise is not None:
        if args.noise < 0:
            raise ValueError(f"--noise must be 0 or more, not {args.noise}")
        cfg = replace(cfg, degrade=replace(cfg.degrade, white=args.noise, pink=args.noise))
    gen = train_on_the_fly(args.out, cfg, _net_config(args),
                           device=args.device,
                           init_from=args.init_from, cache=cache_dir("otf"), head=args.head, cell=args.cell)
    out = drive(gen, show=sys.stderr.isatty(), on_record=lambda rec: print(
        json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(rec).items()}), flush=True))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports (and writes the model)
        print(json.dumps({"model": str(out)}), flush=True)
    return 0


def _add_card_switch(p: argparse.ArgumentParser, name: str, what: str, never: str, card: str = "") -> None:
    """``--NAME [FILE]`` (the shipped net, or FILE) and ``--no-NAME``; neither: as the model's card says."""
    dest = name.replace("-", "_")
    p.add_argument(f"--{name}", nargs="?", const=True, default=None, metavar="FILE",
                   help=f"{what}; default: as the model's card says{card}")
    p.add_argument(f"--no-{name}", dest=dest, action="store_const", const=False,
                   help=f"never {never}, whatever the model's card says")


def _add_denoise_options(p: argparse.ArgumentParser) -> None:
    _add_card_switch(p, "denoise", "take experiment-like noise off each stack first with the shipped denoiser "
                     "(or FILE)", "denoise")


def _add_check_options(p: argparse.ArgumentParser) -> None:
    """The bond-end and O check switches predict and evaluate share."""
    _add_card_switch(p, "bond-ends", "put each level H on the donor end of its H-bond as the shipped bond-end "
                     "classifier (or FILE) reads the stack", "check the bond ends")
    _add_card_switch(p, "o-check", "check every O peak with the shipped O check (or FILE): unlikely O dropped, "
                     "the others moved where the stack puts them", "check the O peaks", " (water's asks for it)")


def _add_stack_net_options(p: argparse.ArgumentParser, what: str, crop: int) -> None:
    """The options train-denoiser and train-depth share."""
    p.add_argument("datasets", nargs="+", type=Path, help="dataset folders of clean simulated stacks")
    p.add_argument("-o", "--out", type=Path, required=True, help=f"{what} checkpoint to write")
    p.add_argument("--cpu-minutes", type=float, default=30.0, help="CPU time to train for")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=crop)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _train_stack_net(args: argparse.Namespace, key: str, run) -> int:
    """Shared by train-denoiser and train-depth: refuse to overwrite, set threads, print one JSON line per
    report of ``run()`` (a training generator), then ``{key: checkpoint}``."""
    import torch

    from .progress import drive

    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out}: exists; give --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = drive(run(), show=False, on_record=lambda rec: print(json.dumps(vars(rec)), flush=True))
    print(json.dumps({key: str(out)}), flush=True)
    return 0


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    """Train the denoiser; one JSON line per report, then the checkpoint's path."""
    from .training.denoise import DenoiseConfig, train_denoiser

    cfg = DenoiseConfig(minutes=args.cpu_minutes, max_steps=args.max_steps, batch_size=args.batch_size,
                        crop=args.crop, lr=args.lr, amplitude=args.amplitude, seed=args.seed)
    return _train_stack_net(args, "denoiser", lambda: train_denoiser(args.datasets, args.out, cfg))


def cmd_train_depth(args: argparse.Namespace) -> int:
    """Train the depth network; one JSON line per report, then the checkpoint's path."""
    from .training.depth import DepthConfig, train_depth

    cfg = DepthConfig(minutes=args.cpu_minutes, max_steps=args.max_steps, batch_size=args.batch_size,
                      crop=args.crop, lr=args.lr, seed=args.seed)
    return _train_stack_net(args, "depth", lambda: train_depth(args.datasets, args.out, cfg))


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict atoms for each PATH and write extended XYZ."""
    from .io.xyz import write_xyz
    from .predict.predictor import predict_atoms, resolve_model
    from .training.train import pick_device

    device = pick_device(args.device)
    model = resolve_model(args.model, device)
    o_check = args.o_check
    if args.o_check_views:
        from .predict.predictor import resolve_o_check

        try:
            o_check = resolve_o_check(o_check, model[1], views=args.o_check_views, device=device)
        except ValueError:
            raise SystemExit("hydrafm predict: --o-check-views needs the O check, which is off here "
                             "(add --o-check, or drop --no-o-check)") from None
    several = len(args.paths) > 1
    if several and args.out.suffix.lower() == ".xyz":
        raise ValueError(f"{args.out}: with several PATHs, -o must be a folder")
    failed = 0
    for path in args.paths:
        target = args.out / f"{Path(path).stem}.xyz" if several else args.out
        try:
            stack = load_stack(path, _channel_arg(args.channel), direction=args.direction,
                               scan_size=args.scan_size, heights=args.heights, z_order=args.z_order)
            atoms = predict_atoms(stack, model, device, args.threshold, flips=args.flips,
                                  molecules=not args.loose_atoms, denoise=args.denoise, depth=args.depth,
                                  bond_ends=args.bond_ends, o_check=o_check)
            atoms.info["model"] = str(args.model)
            write_xyz(atoms, target, overwrite=args.overwrite)
        except (AFMFileError, ValueError, FileExistsError, FileNotFoundError) as exc:
            message = _naming(path, exc)
            if not several:
                raise ValueError(message) from exc
            # one bad scan in a folder of them: say which and why, and go on with the others
            print(f"hydrafm: error: {_one_line(message)}", file=sys.stderr, flush=True)
            failed += 1
            continue
        line = {"input": str(path), "output": str(target), "atoms": _label_counts(atoms)}
        if "closest_probe" in atoms.info:  # the depth network's estimate, Å above the shallowest O (ion)
            line["closest_probe"] = atoms.info["closest_probe"]
        print(json.dumps(line), flush=True)
    if failed:
        print(f"hydrafm: {failed} of {len(args.paths)} stacks failed (above); the others were written",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _naming(path: str | Path, exc: Exception) -> str:
    """The error's message, starting with the file it is about."""
    message = str(exc)
    return message if str(path) in message else f"{path}: {message}"


def _label_counts(atoms) -> dict[str, int]:
    labels = np.asarray(atoms.arrays["label"]).astype(str)
    return {lab: int((labels == lab).sum()) for lab in sorted(set(labels))}


def cmd_watch(args: argparse.Namespace) -> int:
    """Live mode: one JSON line per stack change and prediction; OUT/<stack>.xyz kept up to date."""
    from .io.xyz import write_xyz
    from .predict.live import AtomsPredicted, FileProblem, PredictionFailed, StackChanged, watch_and_predict
    from .training.train import pick_device

    device = pick_device(args.device)
    records = watch_and_predict(args.folder, args.model, channel=_channel_arg(args.channel),
                                direction=args.direction, z_order=args.z_order, device=device,
                                threshold=args.threshold, predict=not args.no_predict, settle=args.settle,
                                until_idle=args.idle_exit)
    written: dict[str, bytes] = {}
    print(json.dumps({"watching": str(args.folder), "out": None if args.out is None else str(args.out)}),
          flush=True)
    try:
        for rec in records:
            if isinstance(rec, StackChanged):
                print(json.dumps({"event": "frames", "stack": rec.name, "new_stack": rec.new,
                                  "heights": rec.stack.n_heights, "files": [p.name for p in rec.paths]}),
                      flush=True)
            elif isinstance(rec, (FileProblem, PredictionFailed)):
                print(f"hydrafm: warning: {_one_line(rec.message)}", file=sys.stderr, flush=True)
            elif isinstance(rec, AtomsPredicted):
                line = {"event": "atoms", "stack": rec.name, "heights": rec.n_heights,
                        "atoms": _label_counts(rec.atoms), "seconds": round(rec.seconds, 3)}
                atoms = rec.atoms
                key = atoms.positions.round(4).tobytes() + "|".join(atoms.arrays["label"]).encode() + \
                    atoms.arrays["confidence"].round(4).tobytes()
                if args.out is not None and written.get(rec.name) != key:
                    line["output"] = str(write_xyz(atoms, args.out / f"{rec.name}.xyz", overwrite=True))
                    written[rec.name] = key
                print(json.dumps(line), flush=True)
    except KeyboardInterrupt:
        print("hydrafm: stopped watching", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model on a simulated dataset; prints one JSON summary."""
    from .predict.evaluate import evaluate_dataset
    from .predict.predictor import resolve_model
    from .progress import drive
    from .simulate.dataset import AFMDataset
    from .training.train import pick_device

    ds = AFMDataset(args.dataset)
    device = pick_device(args.device)
    model = resolve_model(args.model, device)
    for key in ("denoise", "o_check", "bond_ends"):  # the loaded model's own copy of its card
        if getattr(args, key) is not None:
            model[1].provenance[key] = getattr(args, key)
    indices = np.arange(len(ds))
    if args.val_runs:
        split = _split_water_runs(ds, args.val_runs)
        if split is None:
            raise ValueError(f"{args.dataset}: --val-runs needs a water dataset made from the shipped pool")
        indices = split[1]
    indices = indices[: args.n] if args.n else indices
    if args.by_group or args.worst or args.degrade:
        from .predict.evaluate import evaluate_groups

        res = drive(evaluate_groups(ds, model, indices, args.threshold, device, args.top, args.flips,
                                    not args.loose_atoms, degrade=args.degrade, visible=args.visible))
        out = {"dataset": str(args.dataset), "model": str(args.model), "top": args.top, "visible": args.visible,
               "degraded": bool(args.degrade), **res.summary()}
        if args.worst:
            from .predict.report import worst_cases_figure

            out["worst_figure"] = str(worst_cases_figure(ds, res.worst, args.worst, args.top))
        print(json.dumps(out))
        return 0
    total = drive(evaluate_dataset(ds, model, indices, args.threshold, device, args.top, args.flips,
                                   not args.loose_atoms, args.visible))
    print(json.dumps({"dataset": str(args.dataset), "model": str(args.model), "top": args.top,
                      "visible": args.visible, **total.summary()}))
    return 0


def _finetune_data(args: argparse.Namespace):
    """The training data named on the command line: a dataset, structures, or stack=atoms pairs."""
    from .io.xyz import read_xyz
    from .simulate.dataset import MANIFEST, AFMDataset
    from .training.sources import simulate_structures, stack_atom_samples

    items = [str(d) for d in args.data]
    if all("=" in d for d in items):
        from .models.checkpoint import load_checkpoint
        from .models.registry import model_path

        _, info, _ = load_checkpoint(model_path(args.base))
        pairs = []
        for d in items:
            stack_path, atoms_path = d.split("=", 1)
            stack = load_stack(stack_path, _channel_arg(args.channel), direction=args.direction,
                               scan_size=args.scan_size, heights=args.heights, z_order=args.z_order)
            pairs.append((stack, read_xyz(atoms_path)))
        return stack_atom_samples(pairs, info.pixel_size, info.dz, info.config.n_heights, names=items)
    if any("=" in d for d in items):
        raise ValueError("give either STACK=ATOMS pairs only, or one dataset / structure source")
    if len(items) == 1 and (Path(items[0]) / MANIFEST).exists():
        return AFMDataset(items[0])
    from .progress import drive
    from .simulate.settings import TipRanges

    return drive(simulate_structures(items[0] if len(items) == 1 else items, args.per_structure, args.seed,
                                     engine=args.engine, device=args.sim_device,
                                     tips=TipRanges() if args.random_tips else None))


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune; prints one JSON line per epoch and the saved model's path."""
    from .progress import drive
    from .training.finetune import finetune
    from .training.train import TrainConfig

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = _finetune_data(args)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, crop=args.crop or None,
                      device=args.device, freeze_encoder=args.freeze_encoder, epoch_scores=True, seed=args.seed)
    out = drive(finetune(data, args.name, args.base, cfg, args.val_fraction, resume=args.resume),
                on_record=lambda rec: print(json.dumps(
                    {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(rec).items()}), flush=True))
    print(json.dumps({"model": args.name, "path": str(out), "card": str(out.with_suffix(".md"))}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hydrafm`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "view": cmd_view, "pool": cmd_pool, "simulate": cmd_simulate,
                "train": cmd_train, "train-denoiser": cmd_train_denoiser,
                "train-depth": cmd_train_depth, "predict": cmd_predict,
                "evaluate": cmd_evaluate, "finetune": cmd_finetune,
                "hydrate": cmd_hydrate, "watch": cmd_watch, "refine": cmd_refine}
    try:
        with warnings.catch_warnings():
            # Show HydrAFM's own warnings (incomplete scans, guessed channels) as one line each;
            # keep third-party deprecation noise out of the terminal.
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", category=UserWarning, module=r"hydrafm(\..*)?$")
            warnings.showwarning = _one_line_warning
            return handlers[args.command](args)
    except (AFMFileError, ValueError, FileExistsError, FileNotFoundError, SimulationError) as exc:
        print(f"hydrafm: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hydrafm: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"hydrafm: warning: {_one_line(str(message))}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
