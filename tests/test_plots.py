"""The shared figures draw one line per operator and one panel per sweep."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from effconv_ref.plots import plot_layers, plot_sweep, show_blocks  # noqa: E402


def test_plot_sweep_panels_and_lines():
    records = [{"sweep": axis, "name": name, axis: v, "speedup": v * (2 if name == "a" else 1)}
               for axis in ("channels", "kernel_size") for name in ("a", "b") for v in (2, 4, 8)]
    axes = plot_sweep(records)
    assert len(axes) == 2 and all(len(ax.get_lines()) == 3 for ax in axes)  # two operators + the y = 1 line
    assert list(axes[0].get_lines()[0].get_xdata()) == [2, 4, 8]
    plt.close("all")


def test_plot_layers_orders_layers():
    records = [{"name": n, "channels": c, "image_size": 64 // c, "ratio": c / 10}
               for n in ("x", "y") for c in (32, 8, 16)]
    ax = plot_layers(records)
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[0.8, 1.6, 3.2]] * 2
    plt.close("all")


def test_show_blocks_draws_block_lines():
    fig, ax = plt.subplots()
    show_blocks(ax, torch.eye(12), 3, 4)
    assert len(ax.get_lines()) == 2 + 3   # c_out - 1 horizontal, c_in - 1 vertical
    plt.close(fig)
