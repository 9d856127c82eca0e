"""The spectral step of the FFT paths: ``K x``, ``Kᵀ x`` and ``(I + h KᵀK)⁻¹ x`` after an FFT.

A periodic convolution ``K`` is diagonalised by the DFT: ``K x = F⁻¹(K̂ ⊙ F x)`` (eq. 10 of
Treister et al.), where the *symbol* ``K̂`` holds the eigenvalue of ``K`` at each frequency.
Then the adjoint is ``Kᵀ x = F⁻¹(conj(K̂) ⊙ F x)`` and the implicit step of section 3.2.2 is

    (I + h KᵀK)⁻¹ x = F⁻¹( F x / (1 + h |K̂|²) ).

:func:`spectral_step` does that middle, per-frequency step in one of three modes
(``"multiply"``, ``"adjoint"``, ``"solve"``). The reference path is plain PyTorch (any complex
dtype); the CUDA path is one fused pass over the spectrum, ``kernels/spectral_step.cu``
(complex64 only), with a fused backward.

Symbol convention. Our convolutions are cross-correlations, ``y[i, j] = Σ_{u,v} w[u, v]
x[i + u − r, j + v − r]`` with ``r = k // 2``. :func:`depthwise_symbol` returns the eigenvalues
of exactly that operator: ``rfft2`` of the *flipped* stencil embedded in an ``H × W`` zero
image and rolled so that its centre tap sits at ``(0, 0)``. (Equivalently, the complex
conjugate of ``rfft2`` of the unflipped, rolled stencil.) Spectra use the ``rfft2`` layout,
``(..., H, W // 2 + 1)``.

What the FFT paths (:class:`~effconv_ref.depthwise.DepthwiseConv2d` with ``method="fft"``,
:class:`~effconv_ref.circulant.CirculantConv2d`, :func:`~effconv_ref.ops.implicit.implicit_solve`)
share, through :func:`fft_dtypes` and :func:`empty_batch`:

- **dtypes.** ``torch.fft`` transforms float32 and float64 (float16 only for power-of-two sizes
  on a GPU, bfloat16 never), so a float16 or bfloat16 input is computed in float32 and the
  result cast back to the input's dtype. Under ``torch.autocast`` they compute in float32 (float64
  stays float64) and return float32, as autocast does for every FFT. Outside autocast the input
  and the parameters must have one dtype.
- **empty batches.** A batch of zero images returns an empty result without calling the FFT
  (MKL refuses zero-size transforms).
- **non-finite input.** An FFT mixes every pixel of what it transforms: one ``inf`` or ``nan``
  in the input makes the whole transformed block ``nan`` (a channel of one sample for the 2-D
  FFT, a whole sample for the 3-D one), where a direct convolution would spoil only a ``k x k``
  neighbourhood. Nothing checks for it (a check would cost a pass over the input and a device
  synchronisation per call); ``backend`` does not change it, since both spectral steps see the
  same spectra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from effconv_ref.backend import resolve_backend
from effconv_ref.checks import under_autocast
from effconv_ref.kernels import load_cuda

MODES = ("multiply", "adjoint", "solve")
_MODE_INDEX = {name: i for i, name in enumerate(MODES)}
_ADJOINT_MODE = {"multiply": "adjoint", "adjoint": "multiply", "solve": "solve"}

_DECLARATIONS = """
torch::Tensor spectral_step_forward(torch::Tensor x, torch::Tensor k, torch::Tensor h, int64_t mode);
std::vector<torch::Tensor> spectral_step_backward(torch::Tensor g, torch::Tensor x, torch::Tensor k,
                                                  torch::Tensor h, int64_t mode,
                                                  bool need_x, bool need_k, bool need_h);
"""


def _kernel():
    return load_cuda(
        "spectral_step",
        ["spectral_step.cu"],
        _DECLARATIONS,
        ["spectral_step_forward", "spectral_step_backward"],
    )


def embed_stencil(stencil: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The flipped ``(..., k, k)`` stencil in an ``(..., H, W)`` zero image, centre tap rolled to ``(0, 0)``.

    Entry ``[(r − u) mod H, (r − v) mod W]`` holds ``stencil[u, v]``: the impulse response of
    the cross-correlation with ``stencil``, so that its DFT is the operator's symbol.
    """
    kh, kw = stencil.shape[-2:]
    flipped = stencil.flip(-2, -1)
    image = F.pad(flipped, (0, width - kw, 0, height - kh))
    return torch.roll(image, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))


def depthwise_symbol(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """K̂: the ``(C, H, W//2+1)`` eigenvalues of the periodic depth-wise cross-correlation ``weight (C, 1, k, k)``.

    ``irfft2(depthwise_symbol(w, H, W) * rfft2(x), s=(H, W))`` equals
    ``F.conv2d(F.pad(x, (r, r, r, r), mode="circular"), w, groups=C)``.
    """
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"weight must be (C, 1, k, k); got shape {tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    if kh > height or kw > width:
        raise ValueError(
            f"the kernel ({kh}x{kw}) is larger than the image ({height}x{width}); "
            "the FFT/periodic path needs kernel_size <= height and kernel_size <= width"
        )
    return torch.fft.rfft2(embed_stencil(weight[:, 0], height, width))


def _reference_step(x_hat, k_hat, h, mode: str):
    if mode == "multiply":
        return x_hat * k_hat
    if mode == "adjoint":
        return x_hat * k_hat.conj()
    return x_hat / (1 + h * (k_hat.real.square() + k_hat.imag.square()))


class SpectralStep(torch.autograd.Function):
    """``ŷ = step(x̂, K̂, h)`` with ``K̂`` broadcast over the leading (batch) dimensions of ``x̂``.

    ``h`` is a real 0-d tensor, used only by ``mode="solve"`` (``None`` otherwise). Backward,
    in PyTorch's convention for complex gradients (``g = ∂L/∂ŷ``, ``s = 1/(1 + h|K̂|²)``,
    sums over the batch dimensions):

    - multiply: ``∂x̂ = g conj(K̂)``, ``∂K̂ = Σ g conj(x̂)``
    - adjoint:  ``∂x̂ = g K̂``,       ``∂K̂ = Σ conj(g) x̂``
    - solve:    ``∂x̂ = g s``,       ``∂K̂ = −2 h s² K̂ Σ Re(g conj(x̂))``,
      ``∂h = −Σ |K̂|² s² Re(g conj(x̂))`` (summed over everything)
    """

    @staticmethod
    def forward(ctx, x_hat, k_hat, h, mode: str, use_cuda: bool):
        ctx.mode, ctx.use_cuda = mode, use_cuda
        ctx.h_is_tensor = isinstance(h, torch.Tensor)
        ctx.save_for_backward(x_hat, k_hat, h if ctx.h_is_tensor else None)
        if use_cuda:
            flat = x_hat.reshape(-1, k_hat.numel())
            y = _kernel().spectral_step_forward(flat, k_hat.reshape(-1), _cuda_h(h, k_hat), _MODE_INDEX[mode])
            return y.reshape(x_hat.shape)
        return _reference_step(x_hat, k_hat, h, mode)

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, k_hat, h = ctx.saved_tensors
        mode = ctx.mode
        need_x, need_k, need_h = ctx.needs_input_grad[:3]
        need_h = need_h and mode == "solve"
        grad_x = grad_k = grad_h = None
        if ctx.use_cuda:
            grads = _kernel().spectral_step_backward(
                grad_y.contiguous().reshape(-1, k_hat.numel()), x_hat.reshape(-1, k_hat.numel()),
                k_hat.reshape(-1), _cuda_h(h, k_hat), _MODE_INDEX[mode], need_x, need_k, need_h,
            )
            if need_x:
                grad_x = grads[0].reshape(x_hat.shape)
            if need_k:
                grad_k = grads[1].reshape(k_hat.shape)
            if need_h:
                grad_h = grads[2].sum().to(h.dtype).reshape(h.shape)
            return grad_x, grad_k, grad_h, None, None

        if need_x:
            grad_x = _reference_step(grad_y, k_hat, h, _ADJOINT_MODE[mode])
        if need_k or need_h:
            lead = tuple(range(grad_y.dim() - k_hat.dim()))
            correlation = (grad_y * x_hat.conj()).sum(dim=lead)  # Σ_batch g conj(x̂)
            if mode == "multiply":
                grad_k = correlation
            elif mode == "adjoint":
                grad_k = correlation.conj()
            else:
                power = k_hat.real.square() + k_hat.imag.square()
                common = correlation.real / (1 + h * power).square()  # Re(Σ g conj(x̂)) s²
                if need_k:
                    grad_k = -2 * h * common * k_hat
                if need_h:
                    grad_h = -(power * common).sum().reshape(h.shape)
        return grad_x, (grad_k if need_k else None), grad_h, None, None


def _cuda_h(h, like: torch.Tensor) -> torch.Tensor:
    """``h`` as the one float32 on the GPU that the kernel reads (a placeholder when unused)."""
    if h is None:
        return torch.zeros(1, dtype=torch.float32, device=like.device)
    return h.detach().reshape(1).to(device=like.device, dtype=torch.float32)


def check_step(h, dtype: torch.dtype = torch.float64) -> None:
    """``h`` must be a finite positive real number (a float or a 0-d real tensor) that ``dtype``,
    the real dtype the step computes in, can hold (``h = 1e300`` is ``inf`` in float32)."""
    if isinstance(h, torch.Tensor):
        if h.dim() != 0 or h.is_complex() or not h.is_floating_point():
            raise TypeError(
                f"h must be a float or a 0-d real floating tensor; got {h.dtype} of shape {tuple(h.shape)}"
            )
        value = h.item()
    elif isinstance(h, (int, float)) and not isinstance(h, bool):
        value = float(h)
    else:
        raise TypeError(f"h must be a float or a 0-d real tensor; got {type(h).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"h must be > 0 and finite (the time step); got h={value}")
    if value > torch.finfo(dtype).max:
        raise ValueError(
            f"h={value:g} is larger than {dtype} can hold ({torch.finfo(dtype).max:.3g}); "
            "use a smaller h or float64"
        )


FFT_DTYPES = (torch.float32, torch.float64)


def fft_dtypes(x: torch.Tensor, backend: str = "auto") -> tuple:
    """``(compute, result)``: the dtype an FFT path computes in for input ``x``, and the dtype it returns.

    float32 and float64 compute in their own dtype; float16 and bfloat16 compute in float32 and
    return their own dtype; under ``torch.autocast`` float32 is computed and returned (float64
    stays float64). Checks first, before any work, that ``backend="cuda"`` can run on ``x`` (a
    GPU, a CUDA input, float32 computation).
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    result = compute if under_autocast(x) else x.dtype
    if backend == "cuda":
        resolve_backend(backend, x)
        if compute != torch.float32:
            raise TypeError(
                f"backend='cuda' computes in float32 (complex64 spectra); got a {x.dtype} input "
                "(use backend='auto' or 'reference' for float64)"
            )
    return compute, result


def empty_batch(x: torch.Tensor, dtype: torch.dtype, *parameters) -> torch.Tensor:
    """The result of an FFT path for a batch of zero images: empty, of ``x``'s shape and ``dtype``.

    MKL's FFT refuses zero-size transforms, so the FFT is skipped. The result stays in the
    autograd graph of ``x`` and the (tensor) ``parameters``, whose gradients are then zero, as
    they are on the direct paths.
    """
    y = x.to(dtype)
    for p in parameters:
        if isinstance(p, torch.Tensor):
            y = y + 0 * p.to(dtype).sum()
    return y


def spectral_step(x_hat: torch.Tensor, k_hat: torch.Tensor, mode: str = "multiply", h=None,
                  backend: str = "auto") -> torch.Tensor:
    """One per-frequency step on spectra ``x_hat`` ``(..., *k_hat.shape)`` with the symbol ``k_hat``.

    ``mode="multiply"``: ``x̂ K̂`` (apply K); ``"adjoint"``: ``x̂ conj(K̂)`` (apply Kᵀ);
    ``"solve"``: ``x̂ / (1 + h |K̂|²)`` (apply ``(I + h KᵀK)⁻¹``; needs ``h > 0``).
    Differentiable in ``x_hat``, ``k_hat`` and (a tensor) ``h``.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a spectral step; choose one of {', '.join(MODES)}")
    if not (isinstance(x_hat, torch.Tensor) and isinstance(k_hat, torch.Tensor)):
        raise TypeError("x_hat and k_hat must be tensors")
    if not (x_hat.is_complex() and k_hat.is_complex()):
        raise TypeError(f"x_hat and k_hat must be complex spectra; got {x_hat.dtype} and {k_hat.dtype}")
    if x_hat.dim() < k_hat.dim() or x_hat.shape[x_hat.dim() - k_hat.dim():] != k_hat.shape:
        raise ValueError(
            f"k_hat's shape {tuple(k_hat.shape)} must equal the trailing dimensions of "
            f"x_hat's shape {tuple(x_hat.shape)}"
        )
    if mode == "solve":
        real = x_hat.real.dtype
        check_step(h, real)
        if isinstance(h, torch.Tensor):
            h = h.to(device=x_hat.device, dtype=real)
        else:
            h = torch.tensor(float(h), dtype=real, device=x_hat.device)
    else:
        h = None
    path = resolve_backend(backend, x_hat)
    if path == "cuda" and (x_hat.dtype != torch.complex64 or k_hat.dtype != torch.complex64):
        if backend == "cuda":
            raise TypeError(
                f"backend='cuda' needs complex64 spectra (float32 inputs); got {x_hat.dtype} and {k_hat.dtype}"
            )
        path = "reference"
    return SpectralStep.apply(x_hat.contiguous(), k_hat.contiguous(), h, mode, path == "cuda")
