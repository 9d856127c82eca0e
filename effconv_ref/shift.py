"""The shift operation of Wu et al. (2018), "Shift: A Zero FLOP, Zero Parameter Alternative
to Spatial Convolutions": the spatial part of a convolution done by moving feature maps.

The ``C`` channels are split into ``k²`` groups (``torch.tensor_split``: sizes as equal as
possible, the first groups one channel larger), and group ``g`` is moved by the offset

    (dy, dx) = (g // k − k // 2,  g % k − k // 2)      (row-major over the k x k window)

with zeros filling what is moved in from outside the image::

    y[n, c, i, j] = x[n, c, i − dy, j − dx]   (0 where i − dy or j − dx is outside)

so for ``k = 3`` the nine groups move one pixel up-left, up, up-right, left, not at all,
right, down-left, down and down-right (positive dy is down, positive dx is right). The
middle group (``g = k² // 2``) stays in place. There are no parameters and no
multiply-adds: in a conv-shift-conv (CSC) module the two 1x1 convolutions around it do all
the arithmetic, and the shift gives them a 3x3 receptive field.
"""

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["shift_offsets", "shift2d", "Shift2d"]


def _check_kernel_size(kernel_size) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    return kernel_size


def shift_offsets(channels: int, kernel_size: int = 3) -> List[Tuple[int, int]]:
    """The offset ``(dy, dx)`` of every channel, in channel order."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    k = _check_kernel_size(kernel_size)
    offsets = []
    for g, group in enumerate(torch.arange(channels).tensor_split(k * k)):
        offsets += [(g // k - k // 2, g % k - k // 2)] * len(group)
    return offsets


def shift2d(x: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Move each of the ``kernel_size²`` channel groups of ``x`` (N, C, H, W) by its offset,
    zero-filled (see the module docstring)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"input must be a 4-D (N, C, H, W) tensor, got shape "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    k = _check_kernel_size(kernel_size)
    r = k // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r))
    pieces = []
    for g, group in enumerate(padded.tensor_split(k * k, dim=1)):
        dy, dx = g // k - r, g % k - r
        # y[i, j] = x[i - dy, j - dx] = padded[i - dy + r, j - dx + r]
        pieces.append(group[:, :, r - dy:r - dy + height, r - dx:r - dx + width])
    return torch.cat(pieces, dim=1)


class Shift2d(nn.Module):
    """:func:`shift2d` as a module (no parameters); ``channels`` is checked on each call."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        shift_offsets(channels, kernel_size)  # validates both
        self.channels, self.kernel_size = channels, kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"input must be (N, channels={self.channels}, H, W), got shape {tuple(x.shape)}")
        return shift2d(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"
