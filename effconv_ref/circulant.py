"""The block-circulant convolution K_circ of section 3.2.3, applied with a 3-D FFT.

Treat the ``(C, H, W)`` feature map as one 3-D image. ``K_circ`` is block circulant over the
channels, and each block is a periodic 2-D convolution; all of it is described by one
``(C, k, k)`` array, ``weight`` (``m² c`` numbers instead of the ``m² c²`` of eq. 4):

    y[c, i, j] = Σ_d Σ_{u,v} weight[d, u, v] · x[(c − d) mod C, (i + u − r) mod H, (j + v − r) mod W]

with ``r = k // 2``: a circular *convolution* over the channels and a periodic
*cross-correlation* in space (as ``F.conv2d``). Block ``(c, c')`` of the matrix is
``C(weight[(c − c') mod C])``, so ``dense_weight()[c, c'] = weight[(c − c') mod C]``.

A 3-D FFT diagonalises it: ``K_circ y = F₃⁻¹( F₃(K_circ e₁) ⊙ F₃ y )`` (eq. 12). The symbol
``F₃(K_circ e₁)`` is :func:`circulant_symbol`: ``rfftn`` over (channel, height, width) of the
weight embedded in a ``C × H × W`` zero array, spatially flipped and rolled so that the centre
tap sits at ``(0, 0)`` (the flip turns the spatial cross-correlation into a convolution).
Spectra use the ``rfftn`` layout ``(..., C, H, W // 2 + 1)``.

Outside the math: float16/bfloat16 inputs are computed in float32 and cast back; under
``torch.autocast`` it computes and returns float32; outside autocast input and weight share
one dtype. An empty batch returns an empty batch. Non-finite input: the 3-D FFT mixes every
value of a sample, so one ``inf`` pixel makes the *whole sample* ``nan`` (every channel, every
pixel), on every ``backend``; other samples are untouched.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from effconv_ref.backend import check_backend
from effconv_ref.checks import (
    check_channels,
    check_dtype,
    check_input,
    check_kernel_fits,
    check_kernel_size,
    refuse_torchscript,
)
from effconv_ref.ops.spectral_step import embed_stencil, empty_batch, fft_dtypes, spectral_step

__all__ = ["CirculantConv2d", "circulant_symbol"]

_DIMS = (1, 2, 3)


def circulant_symbol(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F₃(K_circ e₁)``: the ``(C, H, W//2+1)`` eigenvalues of the block-circulant operator ``weight (C, k, k)``."""
    if weight.dim() != 3:
        raise ValueError(f"weight must be (C, k, k); got shape {tuple(weight.shape)}")
    check_kernel_fits(weight.shape[-1], height, width)
    return torch.fft.rfftn(embed_stencil(weight, height, width), dim=(0, 1, 2))


class CirculantConv2d(nn.Module):
    """K_circ (section 3.2.3): ``channels -> channels``, a ``(channels, k, k)`` weight, periodic.

    ``forward`` applies K_circ and ``adjoint`` applies K_circᵀ, both through a 3-D ``rfftn`` over
    (channel, height, width); ``backend`` selects the spectral step (``"auto"``, ``"reference"``,
    ``"cuda"``). TorchScript is not supported (use ``torch.compile`` or ``torch.jit.trace``).
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, kernel_size: int = 3, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.channels = self.in_channels = self.out_channels = check_channels(channels)
        self.kernel_size = check_kernel_size(kernel_size)
        self.backend = check_backend(backend)
        self.weight = nn.Parameter(torch.empty(channels, kernel_size, kernel_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as torch.nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); each output reads C k² inputs
        bound = 1 / math.sqrt(self.channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, boundary='periodic'"

    def _transform(self, x: torch.Tensor, mode: str, name: str) -> torch.Tensor:
        check_input(x, self.channels, name)
        check_dtype(x, self.weight, name=name)
        C, H, W = x.shape[1:]
        check_kernel_fits(self.kernel_size, H, W)
        compute, result = fft_dtypes(x, self.backend)
        if x.shape[0] == 0:
            return empty_batch(x, result, self.weight)
        k_hat = circulant_symbol(self.weight.to(compute), H, W)
        y_hat = spectral_step(torch.fft.rfftn(x.to(compute), dim=_DIMS), k_hat, mode, backend=self.backend)
        return torch.fft.irfftn(y_hat, s=(C, H, W), dim=_DIMS).to(result)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._transform(x, "multiply", "input")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """K_circᵀ y: the same 3-D FFT with the conjugate symbol."""
        return self._transform(y, "adjoint", "y")

    def dense_weight(self) -> torch.Tensor:
        """The equivalent fully coupled ``(C, C, k, k)`` weight: ``dense[c, c'] = weight[(c − c') mod C]``."""
        C = self.channels
        idx = torch.arange(C, device=self.weight.device)
        return self.weight[(idx[:, None] - idx[None, :]) % C]
