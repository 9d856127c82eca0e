"""The lean convolution K_lean of eqs. (3)–(4) (Ephrath et al., LeanResNet) as a module.

A drop-in for a 3x3 ``nn.Conv2d`` with zero padding 1: a 1x1 convolution ``pointwise`` (the
``α_ij`` of eq. 3) plus, on the block diagonal, the four off-centre taps of eq. (4). The math and
both paths (plain PyTorch and the fused CUDA kernel) live in :mod:`effconv_ref.ops.lean_conv`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from effconv_ref.backend import check_backend
from effconv_ref.checks import check_input, refuse_torchscript
from effconv_ref.ops.lean_conv import BACKENDS, check_stride, lean_conv2d, lean_dense_weight

__all__ = ["LeanConv2d"]


def _check_channel_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1); got {value!r}")
    return value


class LeanConv2d(nn.Module):
    """K_lean (eqs. 3–4): a 1x1 convolution plus a 4-point depth-wise stencil, ``in -> out`` channels.

    Computes the same function as a 3x3 ``nn.Conv2d(in, out, 3, stride, padding=1)`` whose
    weight is :meth:`dense_weight`:

    - ``pointwise`` ``(out, in, 1, 1)``: the ``α_ij`` of eq. (3). ``α_ii`` is also the centre
      tap of channel ``i``'s 5-point kernel (eq. 4).
    - ``stencil`` ``(min(in, out), 4)``: the off-centre taps ``(c1, c2, c3, c4)`` of eq. (4),
      in the order up, left, right, down.
    - ``bias`` ``(out,)`` when ``bias=True``.

    When ``in != out`` (the paper states only the square case): output channel ``i <
    min(in, out)`` gets the stencil of input channel ``i``, and the other output channels
    get only the 1x1 part. So the stencils sit on the leading diagonal of the ``out x in``
    block matrix, and the input channels ``>= out`` (when ``in > out``) or output channels
    ``>= in`` (when ``out > in``) have none. Parameters: ``in·out + 4·min(in, out)``
    (``+ out`` with a bias).

    ``stride`` is 1 or 2; the output is ``(B, out, ⌈H/s⌉, ⌈W/s⌉)``. ``backend``:
    ``"reference"`` (plain PyTorch), ``"cuda"`` (the fused kernel ``kernels/lean.cu``: a GPU and
    a float32, float16 or bfloat16 input), ``"triton"`` (the fused tensor-core kernel
    ``kernels/lean_triton.py``, same dtypes) or ``"auto"`` (the rule in
    :mod:`effconv_ref.backend`: Triton on an sm_80+ GPU, the CUDA kernel on an older one, the
    reference on the CPU). See :func:`lean_conv2d` for dtypes, autocast, empty batches and
    non-finite input. TorchScript is not supported (use
    ``torch.compile`` or ``torch.jit.trace``).
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = False,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.in_channels = _check_channel_count(in_channels, "in_channels")
        self.out_channels = _check_channel_count(out_channels, "out_channels")
        self.kernel_size, self.padding = 3, 1
        self.stride = check_stride(stride)
        self.backend = check_backend(backend, BACKENDS)
        factory = dict(device=device, dtype=dtype)
        self.pointwise = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, **factory))
        self.stencil = nn.Parameter(torch.empty(min(in_channels, out_channels), 4, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pointwise as torch.nn.Conv2d with a 1x1 kernel: U(±1/sqrt(fan_in)), fan_in = in_channels.
        # The stencil taps get the same bound: each adds one more input value to an output, just
        # as one α_ij does, so at initialisation a tap weighs like a 1x1 weight (an output's
        # variance grows by (in + 4) / in, which is small for the widths this is used at).
        bound = 1 / math.sqrt(self.in_channels)
        nn.init.kaiming_uniform_(self.pointwise, a=math.sqrt(5))
        nn.init.uniform_(self.stencil, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, stride={self.stride}"
        if self.bias is None:
            text += ", bias=False"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, argument="in_channels")
        return lean_conv2d(x, self.pointwise, self.stencil, self.bias, self.stride, self.backend)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``(out, in, 3, 3)`` weight: ``α`` at every centre, zero corners, and the
        off-centre taps (up ``[0, 1]``, left ``[1, 0]``, right ``[1, 2]``, down ``[2, 1]``) only on
        the block diagonal ``(i, i)``, ``i < min(in, out)``."""
        return lean_dense_weight(self.pointwise, self.stencil)
