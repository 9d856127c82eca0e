"""LinearMix (eq. 7): a depth-wise convolution plus a 1x1 convolution, summed into one operator.

    K_lm(θ⁽¹⁾, θ⁽²⁾) = K_dw(θ⁽¹⁾) + M(θ⁽²⁾)                                        (eq. 7)

a masked version of the fully coupled convolution of eq. (4): the mask keeps the stencils on
the block diagonal (``depthwise``, ``(C, 1, k, k)``) and the centre taps everywhere
(``pointwise``, the ``(C, C, 1, 1)`` matrix M ⊗ I of eq. 6). The diagonal of ``pointwise``
adds to the depth-wise centre taps, as in the paper. Input and output have the same number of
channels and the same size.

Plain ``F.conv2d``: any floating dtype the convolution takes (under ``torch.autocast``, autocast's
dtype); outside autocast input and parameters share one dtype. An empty batch returns an empty
batch; a non-finite pixel spoils its ``k x k`` neighbourhood in its own channel and the same
pixel in every other channel (through the 1x1 part).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effconv_ref.checks import (
    check_boundary,
    check_channels,
    check_dtype,
    check_input,
    check_kernel_fits,
    check_kernel_size,
    refuse_torchscript,
)

__all__ = ["LinearMix"]


class LinearMix(nn.Module):
    """K_lm = K_dw + M (eq. 7), ``channels -> channels``, output the size of the input.

    ``forward(x) = depthwise-conv(x) + pointwise-conv(x)``; ``adjoint(y)`` applies K_lmᵀ;
    ``dense_weight()`` is the equivalent ``(C, C, k, k)`` weight. TorchScript is not supported
    (use ``torch.compile`` or ``torch.jit.trace``).
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, kernel_size: int = 3, boundary: str = "zeros", device=None, dtype=None):
        super().__init__()
        self.channels = self.in_channels = self.out_channels = check_channels(channels)
        self.kernel_size = check_kernel_size(kernel_size)
        self.boundary = check_boundary(boundary)
        factory = dict(device=device, dtype=dtype)
        self.depthwise = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size, **factory))
        self.pointwise = nn.Parameter(torch.empty(channels, channels, 1, 1, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as torch.nn.Conv2d for each part: fan_in = k * k (depth-wise) and C (1x1)
        nn.init.kaiming_uniform_(self.depthwise, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.pointwise, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, boundary={self.boundary!r}"

    def _depthwise(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        r = self.kernel_size // 2
        if self.boundary == "periodic":
            return F.conv2d(F.pad(x, (r, r, r, r), mode="circular"), weight, groups=self.channels)
        return F.conv2d(x, weight, padding=r, groups=self.channels)

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_input(x, self.channels, name)
        check_dtype(x, self.depthwise, self.pointwise, name=name)
        if self.boundary == "periodic":
            check_kernel_fits(self.kernel_size, x.shape[2], x.shape[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "input")
        return self._depthwise(x, self.depthwise) + F.conv2d(x, self.pointwise)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """K_lmᵀ y = K_dwᵀ y + Mᵀ y."""
        self._check(y, "y")
        if self.boundary == "periodic":
            dw = self._depthwise(y, self.depthwise.flip(-2, -1))
        else:
            dw = F.conv_transpose2d(y, self.depthwise, padding=self.kernel_size // 2, groups=self.channels)
        return dw + F.conv2d(y, self.pointwise.transpose(0, 1))

    def dense_weight(self) -> torch.Tensor:
        """``(C, C, k, k)``: ``pointwise`` at the centre tap plus the depth-wise stencils on the diagonal."""
        C, r = self.channels, self.kernel_size // 2
        dense = F.pad(self.pointwise, (r, r, r, r))
        idx = torch.arange(C, device=dense.device)
        return dense.index_put((idx, idx), dense[idx, idx] + self.depthwise[:, 0])
