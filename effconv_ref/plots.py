"""Figures the chapters share: block patterns of convolution matrices and benchmark sweeps."""

import matplotlib.pyplot as plt
import torch


def show_blocks(ax, matrix: torch.Tensor, c_out: int, c_in: int, title: str = "") -> None:
    """Draw where ``matrix`` is non-zero, with red lines between its ``c_out x c_in`` blocks."""
    ax.imshow((matrix != 0).cpu().numpy(), cmap="Greys", interpolation="nearest")
    rows, cols = matrix.shape[0] // c_out, matrix.shape[1] // c_in
    for i in range(1, c_out):
        ax.axhline(i * rows - 0.5, color="tab:red", lw=0.8)
    for j in range(1, c_in):
        ax.axvline(j * cols - 0.5, color="tab:red", lw=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_sweep(records: list[dict], value: str = "speedup", axes=None, title: str = ""):
    """One panel per swept quantity (``record["sweep"]``), one line per operator (``record["name"]``)."""
    sweeps = list(dict.fromkeys(r["sweep"] for r in records))
    if axes is None:
        _, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4), squeeze=False)
        axes = axes[0]
    for ax, sweep in zip(axes, sweeps):
        rows = [r for r in records if r["sweep"] == sweep]
        for name in dict.fromkeys(r["name"] for r in rows):
            line = sorted((r[sweep], r[value]) for r in rows if r["name"] == name)
            ax.plot(*zip(*line), "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        values = sorted({r[sweep] for r in rows})
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(sweep.replace("_", " "))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(value)
    axes[0].legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


def plot_layers(records: list[dict], value: str = "ratio", title: str = ""):
    """One line per operator across the layers of a network (``channels``, ``image_size``)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    layers = sorted({(r["channels"], r["image_size"]) for r in records})
    for name in dict.fromkeys(r["name"] for r in records):
        by_layer = {(r["channels"], r["image_size"]): r[value] for r in records if r["name"] == name}
        ax.plot(range(len(layers)), [by_layer[layer] for layer in layers], "o-", label=name)
    ax.set_xticks(range(len(layers)), [f"{c} ch\n{n}²" for c, n in layers])
    ax.set_ylabel("time / time(3x3 conv)" if value == "ratio" else value)
    ax.set_yscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return ax
