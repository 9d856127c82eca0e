"""The implicit reaction-diffusion step of section 3.2.2: ``(I + h KᵀK)⁻¹ x`` by a 2-D FFT.

``K = K_dw`` is the periodic depth-wise convolution, block diagonal with one circulant block
per channel, so the DFT diagonalises every block at once and the solve is a division per
channel and frequency:

    (I + h C(θ)ᵀC(θ))⁻¹ y = F⁻¹( F y / (1 + h |F(C e₁)|²) )

The FFTs are ``torch.fft`` (cuFFT on a GPU); the division is :func:`spectral_step` in
``mode="solve"`` (a fused CUDA kernel on a GPU).
"""

from __future__ import annotations

import torch

from effconv_ref.backend import check_backend
from effconv_ref.checks import check_dtype
from effconv_ref.ops.spectral_step import check_step, depthwise_symbol, empty_batch, fft_dtypes, spectral_step


def implicit_solve(x: torch.Tensor, weight: torch.Tensor, h, backend: str = "auto") -> torch.Tensor:
    """``(I + h KᵀK)⁻¹ x`` for the periodic depth-wise convolution K with ``weight (C, 1, k, k)``.

    ``x`` is ``(B, C, H, W)``; ``h`` is a float or 0-d tensor, ``> 0`` and finite. Differentiable in
    ``x``, ``weight`` and ``h``. Needs an odd ``k <= min(H, W)``.

    dtypes: ``x`` and ``weight`` share one (outside ``torch.autocast``); float16 and bfloat16 are
    computed in float32 and cast back; under autocast the solve computes in float32 and returns
    float32. A batch of zero images returns an empty batch. Non-finite input: the FFT spreads
    one ``inf``/``nan`` pixel over its whole channel (``nan`` everywhere in that channel of that
    sample), on every ``backend``.
    """
    check_backend(backend)
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("x and weight must be torch.Tensors")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a real floating tensor; got {x.dtype}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"x must have height >= 1 and width >= 1; got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be (C, 1, k, k) (depth-wise); got shape {tuple(weight.shape)}")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"weight has {weight.shape[0]} channels but x has {x.shape[1]} (shape {tuple(x.shape)})"
        )
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"weight's kernel_size={k}: only odd kernel sizes are supported (a centre tap)")
    check_dtype(x, weight, name="x")
    compute, result = fft_dtypes(x, backend)
    check_step(h, compute)
    H, W = x.shape[-2:]
    k_hat = depthwise_symbol(weight.to(compute), H, W)  # raises when the kernel is larger than the image
    if x.shape[0] == 0:
        return empty_batch(x, result, weight, h)
    y_hat = spectral_step(torch.fft.rfft2(x.to(compute)), k_hat, "solve", h=h, backend=backend)
    return torch.fft.irfft2(y_hat, s=(H, W)).to(result)
