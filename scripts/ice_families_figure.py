"""Top views of one window per ice-pool family (docs/images/ice_families.png).

    python scripts/ice_families_figure.py --out docs/images/ice_families.png

Atoms are coloured by their training label (O red, Na indigo, K violet, H_up green,
H_flat light blue, H_down brown; the labels of ``hydrafm.simulate.labels``), O–H bonds
are solid and H bonds (found from the geometry) dashed; the upper O of a bilayer are
drawn larger.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hydrafm.simulate.labels import LABEL_COLORS, atom_labels
from hydrafm.structures import ice

#: (title, builder) per panel; fixed seeds so the figure is reproducible.
PANELS = [
    ("bilayer-Au111 (ideal, H-up)", lambda r: ice.hexagonal_bilayer("Au111", r, "ideal", "H-up")),
    ("bilayer-Pt111 (island, mixed)", lambda r: ice.hexagonal_bilayer("Pt111", r, "island", "mixed")),
    ("bilayer-Cu111 (5-7 defects, H-down)", lambda r: ice.hexagonal_bilayer("Cu111", r, "5-7", "H-down")),
    ("bilayer-Au111 (rotated domains)", lambda r: ice.hexagonal_bilayer("Au111", r, "domains", "H-up")),
    ("2d-NaCl001 (square ice, vacancies)", lambda r: ice.square_ice(r, "vacancies")),
    ("2d-flat-hex (ideal)", lambda r: ice.flat_hexagonal_ice(r, "ideal")),
    ("amorphous", lambda r: ice.amorphous_network(r, "mixed")),
    ("amorphous-8ring", lambda r: ice.amorphous_network(r, "4-8")),
    ("hydrate-in-network-Na (n = 4)", lambda r: ice.hydrates_in_network("Na", 4, r, n_ions=2)),
    ("hydrate-in-network-K (n = 6)", lambda r: ice.hydrates_in_network("K", 6, r, n_ions=2)),
]
SIZE = {"O": 60, "Na": 140, "K": 170, "H_up": 22, "H_flat": 16, "H_down": 16}


def draw(ax, pos: np.ndarray, numbers: np.ndarray, title: str) -> None:
    """One top view: bonds, H bonds, then atoms from the lowest to the highest."""
    labels = atom_labels(pos, numbers)
    n_w = int(np.sum(numbers == 8))
    for m in range(n_w):
        o, h1, h2 = pos[3 * m : 3 * m + 3]
        for h in (h1, h2):
            ax.plot([o[0], h[0]], [o[1], h[1]], color="0.35", lw=0.8, zorder=1)
    for donor, acceptor in ice.hydrogen_bonds(pos, numbers):
        xy = np.stack([pos[donor, :2], pos[acceptor, :2]])
        ax.plot(xy[:, 0], xy[:, 1], color="0.6", lw=0.5, ls=(0, (2, 2)), zorder=0)
    z_mid = np.median(pos[numbers == 8, 2])
    order = np.argsort(pos[:, 2])
    for i in order:
        name = str(labels[i])
        size = SIZE[name] * (1.5 if name == "O" and pos[i, 2] > z_mid + 0.45 else 1.0)
        ax.scatter(pos[i, 0], pos[i, 1], s=size, color=LABEL_COLORS[name], edgecolors="k", linewidths=0.3,
                   zorder=2)
    ax.set_xlim(0, ice.WINDOW)
    ax.set_ylim(0, ice.WINDOW)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def main(argv: list[str] | None = None) -> Path:
    """Draw the figure and save it; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/images/ice_families.png"))
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    fig, axes = plt.subplots(2, 5, figsize=(13, 6.2))
    for k, (ax, (title, build)) in enumerate(zip(axes.ravel(), PANELS)):
        pos, numbers, _ = build(np.random.default_rng([args.seed, k]))
        draw(ax, pos, numbers, title)
    handles = [Line2D([], [], marker="o", ls="", color=c, markeredgecolor="k", label=name)
               for name, c in LABEL_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
