"""Regenerate the bundled sample stack ``src/hydrafm/sample_data/water_bilayer.npz``.

A small hexagonal water bilayer island (H-up and flat molecules) is built with
ase and its constant-height Δf stack is simulated with the same simulator as the
training data (``hydrafm.simulate.afm``: ppafm's OpenCL AFMulator, CO-like tip,
monopole Q = −0.05 e, lateral stiffness 0.5 N/m; 10 heights, 0.1 Å apart;
128 × 128 pixels over 25 Å; probe 2.4 Å above the top atom at the closest height). The structure is written next to it as
extended XYZ with a per-atom ``label`` (O, H_up, H_flat, H_down).

Needs the ``sim`` extra and an OpenCL device (apt ``pocl-opencl-icd`` on a CPU)::

    python sample_data/make_sample_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase import Atoms

OUT = Path(__file__).resolve().parents[1] / "src" / "hydrafm" / "sample_data"  # shipped in the wheel
WINDOW = 25.0  # Å
N_PIX = 128
N_HEIGHTS = 10
DZ = 0.1  # Å between heights
Q_O, Q_H = -0.8476, 0.4238  # SPC/E
OH = 0.96  # Å
CLOSEST = 2.4  # Å, probe above the top atom at the closest height


def water_bilayer_island(seed: int = 7) -> Atoms:
    """A hexagonal bilayer island: lower O with two near-flat H, upper O with one H up."""
    rng = np.random.default_rng(seed)
    a = 4.5  # Å honeycomb lattice constant (ice Ih basal plane)
    a1, a2 = np.array([a, 0.0]), np.array([a / 2, a * np.sqrt(3) / 2])
    centre = np.array([WINDOW / 2, WINDOW / 2])
    sites = []
    for i in range(-5, 6):
        for j in range(-5, 6):
            base = i * a1 + j * a2
            for k, off in enumerate((np.zeros(2), (a1 + a2) / 3)):
                p = centre + base + off - (a1 + a2) / 6
                if np.linalg.norm(p - centre) < 8.0:
                    sites.append((p, k))
    symbols, pos, labels = [], [], []
    xy = np.array([s[0] for s in sites])
    for (p, k) in sites:
        z_o = 3.0 + (0.9 if k == 1 else 0.0)
        symbols.append("O"), pos.append([*p, z_o]), labels.append("O")
        d = np.linalg.norm(xy - p, axis=1)
        nbrs = np.argsort(d)[1:4]
        nbrs = [n for n in nbrs if d[n] < 3.0]
        rng.shuffle(nbrs)
        if k == 1:  # upper O: one H up, one H along a bond
            hs = [(np.array([0, 0, OH]), "H_up")]
            if nbrs:
                v = xy[nbrs[0]] - p
                v = np.array([*(v / np.linalg.norm(v)), -0.25])
                hs.append((OH * v / np.linalg.norm(v), "H_flat"))
        else:  # lower O: two H in the plane
            dirs = [xy[n] - p for n in nbrs[:2]] or [np.array([1.0, 0.0])]
            if len(dirs) == 1:
                c, s = np.cos(np.deg2rad(104.5)), np.sin(np.deg2rad(104.5))
                d0 = dirs[0] / np.linalg.norm(dirs[0])
                dirs.append(np.array([c * d0[0] - s * d0[1], s * d0[0] + c * d0[1]]))
            hs = []
            for v in dirs:
                v = np.array([*(v / np.linalg.norm(v)), 0.1])
                hs.append((OH * v / np.linalg.norm(v), "H_flat"))
        for dv, lab in hs:
            symbols.append("H"), pos.append(np.array([*p, z_o]) + dv), labels.append(lab)
    atoms = Atoms(symbols=symbols, positions=pos, cell=[WINDOW, WINDOW, 20.0], pbc=[True, True, False])
    atoms.new_array("label", np.array(labels, dtype="<U6"))
    atoms.set_initial_charges([Q_O if s == "O" else Q_H for s in symbols])
    return atoms


def simulate(atoms: Atoms):
    """The Δf stack as an AFMStack (frame 0 closest), from HydrAFM's training-data simulator."""
    from hydrafm.simulate.afm import AFMSimulator, SampledTip, SimulationSettings

    sim = AFMSimulator(SimulationSettings(n_pixels=N_PIX, scan_size=WINDOW, n_heights=N_HEIGHTS, dz=DZ))
    return sim.simulate(atoms.positions, atoms.numbers, SampledTip(CLOSEST), atoms.get_initial_charges())


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ase.io import write

    from hydrafm.io import save_npz
    from hydrafm.stack import AFMStack

    atoms = water_bilayer_island()
    sim = simulate(atoms)
    stack = AFMStack(
        data=sim.data,
        pixel_size=sim.pixel_size,
        heights=sim.heights,
        origin=sim.origin,
        metadata={
            "format": "ml-spm npz",
            "channel": "df",
            "units": "Hz",
            "description": "ppafm-simulated water bilayer island (HydrAFM sample data)",
            "simulation": sim.metadata["simulation"],
        },
    )
    OUT.mkdir(parents=True, exist_ok=True)
    path = save_npz(stack, OUT / "water_bilayer.npz", overwrite=True)
    write(OUT / "water_bilayer.xyz", atoms, format="extxyz")
    print(json.dumps(stack.summary()), path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
