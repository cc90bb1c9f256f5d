"""A PNG overview of a label map: three orthogonal slices of the image with coloured labels and a legend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .vocabulary import color


def overview_png(image: np.ndarray, spacing, panels: dict[str, np.ndarray], names: dict[int, str], path,
                 title: str = "") -> Path:
    """Write `path`: one row per entry of `panels` (title → label map), each with axial, coronal and sagittal
    slices through the centre of the labelled voxels.

    image and label maps (k, j, i) on one grid, spacing (k, j, i) in mm; names: label value → structure name
    (colours come from the vocabulary, so a structure has the same colour everywhere).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    union = np.zeros(image.shape, bool)
    for labels in panels.values():
        union |= labels > 0
    centre = [int(round(c.mean())) if c.size else s // 2 for c, s in zip(np.nonzero(union), image.shape)]
    sk, sj, si = spacing
    views = [  # (slicer, aspect of rows vs columns, name)
        (lambda a: a[centre[0]], sj / si, "axial"),
        (lambda a: a[:, centre[1], :], sk / si, "coronal"),
        (lambda a: a[:, :, centre[2]], sk / sj, "sagittal"),
    ]
    colours = np.zeros((max(names) + 1, 4))
    for value, name in names.items():
        colours[value] = [*np.asarray(color(name)) / 255.0, 0.55]
    low, high = np.percentile(image, [0.5, 99.5])
    figure, axes = plt.subplots(len(panels), 3, figsize=(11, 3.8 * len(panels)), squeeze=False)
    for row, (panel, labels) in enumerate(panels.items()):
        for column, (cut, aspect, view) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(cut(image), cmap="gray", vmin=low, vmax=high, aspect=aspect, origin="lower",
                        interpolation="nearest")
            axis.imshow(colours[np.clip(cut(labels), 0, len(colours) - 1)], aspect=aspect, origin="lower",
                        interpolation="nearest")
            axis.set_title(f"{panel} — {view}", fontsize=10)
            axis.axis("off")
    handles = [Patch(color=colours[v][:3], label=n) for v, n in sorted(names.items())]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
