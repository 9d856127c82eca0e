"""Choosing between an operator's two paths: ``reference`` (plain PyTorch) and ``cuda`` (a kernel).

``"auto"`` takes the kernel when the input is on a GPU and the kernel can be compiled, and
the reference otherwise; ``"cuda"`` insists, and says clearly why it cannot. Operators check
``backend=`` when they are built (:func:`check_backend`) and resolve it per input
(:func:`resolve_backend`), before any work.

The two paths compute the same function, so ``"auto"`` changes the speed, not the answer, with
one exception: a non-finite input to :class:`~effconv_ref.lean.LeanConv2d`, where the
reference path gives ``nan`` at the zero taps of its 3x3 kernel and the kernel does not (see
:func:`~effconv_ref.ops.lean_conv.lean_conv2d`). On the FFT paths both spectral steps see the same
spectra, so a non-finite input gives the same ``nan`` on either.
"""

import torch

from effconv_ref.kernels import KernelUnavailable, why_cannot_compile

BACKENDS = ("auto", "reference", "cuda")


def check_backend(backend: str) -> str:
    """Validate a ``backend=`` argument and return it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The path that will run for input ``x``: ``"reference"`` or ``"cuda"``."""
    check_backend(backend)
    if backend == "reference":
        return "reference"
    if backend == "auto":
        return "cuda" if x.is_cuda and why_cannot_compile() is None else "reference"
    if not torch.cuda.is_available():
        raise ValueError(
            "backend='cuda' needs a CUDA GPU, but torch.cuda.is_available() is False; "
            "use backend='auto' or backend='reference'"
        )
    if not x.is_cuda:
        raise ValueError(f"backend='cuda' needs the input on a CUDA device; it is on {x.device}")
    reason = why_cannot_compile()
    if reason is not None:
        raise KernelUnavailable(f"backend='cuda' cannot be used: {reason}")
    return "cuda"
