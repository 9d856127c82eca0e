"""Pointwise products of spectra, ``ŷ = x̂ · k̂``: convolution becomes multiplication after an FFT.

By the convolution theorem a periodic convolution is diagonalised by the DFT, so after
``torch.fft`` every channel's spectrum is multiplied, frequency by frequency, by its kernel's
symbol. The reference path is ``x_hat * k_hat``; the CUDA path is ``kernels/spectral.cu``.
"""

import torch

from effconv_ref.backend import resolve_backend
from effconv_ref.kernels import load_cuda

_DECLARATIONS = "torch::Tensor spectral_multiply(torch::Tensor x, torch::Tensor k, bool conj_k);"


def _kernel():
    return load_cuda("spectral", ["spectral.cu"], _DECLARATIONS, ["spectral_multiply"])


def _cuda_multiply(x_hat: torch.Tensor, k_hat: torch.Tensor, conj_k: bool) -> torch.Tensor:
    flat = x_hat.reshape(-1, k_hat.numel())
    return _kernel().spectral_multiply(flat, k_hat.reshape(-1), conj_k).reshape(x_hat.shape)


class SpectralMultiply(torch.autograd.Function):
    """``ŷ = x̂ · k̂`` with ``k̂`` broadcast over the leading (batch) dimensions of ``x̂``.

    Backward, in PyTorch's convention for complex gradients: ``∂L/∂x̂ = ∂L/∂ŷ · conj(k̂)``
    and ``∂L/∂k̂ = Σ_batch ∂L/∂ŷ · conj(x̂)``.
    """

    @staticmethod
    def forward(ctx, x_hat, k_hat, use_cuda: bool):
        ctx.save_for_backward(x_hat, k_hat)
        ctx.use_cuda = use_cuda
        return _cuda_multiply(x_hat, k_hat, False) if use_cuda else x_hat * k_hat

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, k_hat = ctx.saved_tensors
        grad_x = grad_k = None
        if ctx.needs_input_grad[0]:
            if ctx.use_cuda:
                grad_x = _cuda_multiply(grad_y.contiguous(), k_hat, True)
            else:
                grad_x = grad_y * k_hat.conj()
        if ctx.needs_input_grad[1]:
            lead = tuple(range(grad_y.dim() - k_hat.dim()))
            grad_k = (grad_y * x_hat.conj()).sum(dim=lead)
        return grad_x, grad_k, None


def spectral_multiply(x_hat: torch.Tensor, k_hat: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Multiply spectra ``x_hat`` of shape ``(..., *k_hat.shape)`` by the symbol ``k_hat``."""
    if not (x_hat.is_complex() and k_hat.is_complex()):
        raise TypeError(
            f"x_hat and k_hat must be complex spectra; got {x_hat.dtype} and {k_hat.dtype}"
        )
    if x_hat.dim() < k_hat.dim() or x_hat.shape[x_hat.dim() - k_hat.dim():] != k_hat.shape:
        raise ValueError(
            f"k_hat's shape {tuple(k_hat.shape)} must equal the trailing dimensions of "
            f"x_hat's shape {tuple(x_hat.shape)}"
        )
    path = resolve_backend(backend, x_hat)
    if path == "cuda":
        if x_hat.dtype != torch.complex64 or k_hat.dtype != torch.complex64:
            if backend == "cuda":
                raise TypeError(
                    f"backend='cuda' needs complex64 spectra; got {x_hat.dtype} and {k_hat.dtype}"
                )
            path = "reference"
    return SpectralMultiply.apply(x_hat.contiguous(), k_hat.contiguous(), path == "cuda")
