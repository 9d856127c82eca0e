"""The depth-wise convolution K_dw of eq. (5): one k x k stencil per channel, no channel coupling.

As a block matrix ``K_dw`` is block diagonal, with the convolution matrix ``C(θ_c)`` of channel
``c``'s stencil in block ``(c, c)``. Two ways to apply it:

- ``method="direct"``: ``F.conv2d(x, weight, groups=C)``, a cross-correlation whose output has
  the size of the input (``padding = k // 2``; ``boundary="periodic"`` wraps around like
  ``padding_mode="circular"``), or ``⌈H/2⌉ x ⌈W/2⌉`` with ``stride=2``. ``backend="triton"``
  runs it as one Triton kernel (:mod:`effconv_ref.ops.depthwise_conv`) instead of
  ``F.conv2d``.
- ``method="fft"`` (eq. 10, periodic only): ``K x = F⁻¹(K̂ ⊙ F x)`` with the symbol
  ``K̂ = depthwise_symbol(weight, H, W)``, batched over batch and channels with ``rfft2``.

Only odd kernel sizes are supported, so that the stencil has a centre tap and the output has
the size of the input.

The two methods differ outside the paper's math (the README's table "What each operator
supports" lists it all):

- dtypes: ``direct`` computes in the input's dtype (``F.conv2d``; under ``torch.autocast`` in
  autocast's dtype). ``fft`` computes float16/bfloat16 in float32 and casts back; under
  autocast it computes and returns float32. Outside autocast input and weight share one dtype.
- non-finite input: one ``inf`` pixel spoils its ``k x k`` neighbourhood on ``direct``
  (``inf``, or ``nan`` where signs meet) but the whole channel of that sample on ``fft``
  (``nan`` everywhere: the FFT mixes every pixel). ``backend`` does not change this.
- an empty batch (``B = 0``) returns an empty batch on both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effconv_ref.backend import check_backend, resolve_backend
from effconv_ref.checks import (
    autocast_operands,
    check_boundary,
    check_channels,
    check_dtype,
    check_input,
    check_kernel_fits,
    check_kernel_size,
    check_one_dtype,
    refuse_torchscript,
)
from effconv_ref.ops.depthwise_conv import depthwise_conv2d_triton
from effconv_ref.ops.lean_conv import CUDA_DTYPES, check_stride
from effconv_ref.ops.spectral_step import depthwise_symbol, empty_batch, fft_dtypes, spectral_step

METHODS = ("direct", "fft")
BACKENDS = ("auto", "reference", "cuda", "triton")  # cuda: the FFT path's spectral step; triton: direct

__all__ = ["DepthwiseConv2d", "depthwise_symbol"]


class DepthwiseConv2d(nn.Module):
    """K_dw (eq. 5): a ``(channels, 1, k, k)`` stencil per channel, output the size of the input.

    ``forward`` computes ``F.conv2d(x, weight, stride, padding=k // 2, groups=channels)``
    (``boundary="zeros"``) or the same with circular padding (``boundary="periodic"``);
    ``method="fft"`` computes the periodic one through eq. (10) (stride 1 only). ``adjoint(y)``
    applies Kᵀ (stride 1). ``backend``: for ``method="direct"``, ``"reference"`` is ``F.conv2d``
    (cuDNN for a CUDA input) and ``"triton"`` the direct Triton kernel (float32, float16,
    bfloat16); for ``method="fft"``, ``"reference"`` and ``"cuda"`` select the spectral step.
    ``"auto"`` follows :mod:`effconv_ref.backend` among the paths the method has.
    TorchScript is not supported (use ``torch.compile`` or ``torch.jit.trace``).
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, boundary: str = "zeros",
                 method: str = "direct", backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.channels = self.in_channels = self.out_channels = check_channels(channels)
        self.kernel_size = check_kernel_size(kernel_size)
        self.stride = check_stride(stride)
        self.boundary = check_boundary(boundary)
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not a method; choose one of {', '.join(METHODS)}")
        if method == "fft" and boundary != "periodic":
            raise ValueError(
                f"method='fft' needs boundary='periodic' (the FFT diagonalises periodic "
                f"convolutions only); got boundary={boundary!r}"
            )
        if method == "fft" and stride != 1:
            raise ValueError(f"method='fft' computes stride 1 only; got stride={stride} (use method='direct')")
        self.method = method
        self.backend = check_backend(backend, BACKENDS)
        if method == "fft" and backend == "triton":
            raise ValueError("backend='triton' runs method='direct'; method='fft' takes backend='auto', "
                             "'reference' or 'cuda'")
        if method == "direct" and backend == "cuda":
            raise ValueError(
                "backend='cuda' selects the CUDA spectral step of method='fft'; method='direct' is "
                "F.conv2d, which runs where its input is: use backend='auto', 'reference' or 'triton', or method='fft'"
            )
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as torch.nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k * k per channel
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        stride = f", stride={self.stride}" if self.stride != 1 else ""
        return (f"{self.channels}, kernel_size={self.kernel_size}{stride}, boundary={self.boundary!r}, "
                f"method={self.method!r}")

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_input(x, self.channels, name)
        check_dtype(x, self.weight, name=name)
        if self.boundary == "periodic":
            check_kernel_fits(self.kernel_size, x.shape[2], x.shape[3])

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        r = self.kernel_size // 2
        return F.pad(x, (r, r, r, r), mode="circular")

    def _spectral(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Eq. (10): ``F⁻¹(K̂ ⊙ F x)`` (``mode="multiply"``) or with ``conj(K̂)`` (``"adjoint"``)."""
        compute, result = fft_dtypes(x, self.backend)
        if x.shape[0] == 0:
            return empty_batch(x, result, self.weight)
        H, W = x.shape[-2:]
        k_hat = depthwise_symbol(self.weight.to(compute), H, W)
        y_hat = spectral_step(torch.fft.rfft2(x.to(compute)), k_hat, mode, backend=self.backend)
        return torch.fft.irfft2(y_hat, s=(H, W)).to(result)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "input")
        if self.method == "fft":
            return self._spectral(x, "multiply")
        if self._direct_path(x) == "triton":
            x, weight = autocast_operands(x, self.weight)
            check_one_dtype(x, weight)
            return depthwise_conv2d_triton(x, weight, self.stride, self.boundary == "periodic")
        if self.boundary == "periodic":
            return F.conv2d(self._pad(x), self.weight, stride=self.stride, groups=self.channels)
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.kernel_size // 2, groups=self.channels)

    def _direct_path(self, x: torch.Tensor) -> str:
        """``"triton"`` or ``"reference"`` (``F.conv2d``) for ``method="direct"``."""
        if self.backend == "triton" and x.dtype not in CUDA_DTYPES:
            raise TypeError(f"backend='triton' supports float32, float16 and bfloat16 inputs; got {x.dtype} "
                            "(use backend='reference' or 'auto' for other dtypes)")
        path = resolve_backend(self.backend, x, ("auto", "reference", "triton"))
        return path if x.dtype in CUDA_DTYPES else "reference"

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Kᵀ y: periodic, the cross-correlation with the flipped stencil (conj(K̂) for ``fft``);
        zeros, ``conv_transpose2d``."""
        if self.stride != 1:
            raise ValueError(f"adjoint is defined for stride 1; this layer has stride={self.stride}")
        self._check(y, "y")
        if self.method == "fft":
            return self._spectral(y, "adjoint")
        if self.boundary == "periodic":
            return F.conv2d(self._pad(y), self.weight.flip(-2, -1), groups=self.channels)
        return F.conv_transpose2d(y, self.weight, padding=self.kernel_size // 2, groups=self.channels)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent fully coupled ``(C, C, k, k)`` weight: the stencils on the diagonal."""
        C = self.channels
        dense = self.weight.new_zeros(C, C, self.kernel_size, self.kernel_size)
        idx = torch.arange(C, device=self.weight.device)
        dense[idx, idx] = self.weight[:, 0]
        return dense
