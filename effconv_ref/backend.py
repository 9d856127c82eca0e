"""Choosing an operator's path: ``reference`` (plain PyTorch), ``cuda`` (a CUDA C++ kernel from
``kernels/*.cu``) or ``triton`` (a Triton kernel on tensor cores, ``kernels/*_triton.py``).

Each operator has the paths it has (``choices``): the spectral steps ``reference`` and ``cuda``;
:class:`~effconv_ref.lean.LeanConv2d` all three; the depth-wise and SIC convolutions
``reference`` and ``triton``. ``"cuda"`` or ``"triton"`` insists, and says clearly why it
cannot run. Operators check ``backend=`` when they are built (:func:`check_backend`) and
resolve it per input (:func:`resolve_backend`), before any work.

The rule of ``"auto"`` (:func:`resolve_backend`), per input:

1. an input that is not on a CUDA GPU takes ``reference``;
2. on a GPU of compute capability 8.0 or newer (A100, H100, …), an operator with a ``triton``
   path takes it when Triton is installed: its ``tl.dot`` runs on tensor cores there;
3. otherwise (a T4, sm_75, where Triton 3.8 compiles ``tl.dot`` to FMAs, or no Triton) an
   operator with a ``cuda`` path takes it when the kernel can be compiled;
4. else ``reference`` (cuDNN through PyTorch on a GPU).

The first GPU run of ``make gpu`` times every path beside ``auto`` and reports whether this rule
picked the fastest.

The two paths compute the same function, so ``"auto"`` changes the speed, not the answer, with
one exception: a non-finite input to :class:`~effconv_ref.lean.LeanConv2d`, where the
reference path gives ``nan`` at the zero taps of its 3x3 kernel and the kernel does not (see
:func:`~effconv_ref.ops.lean_conv.lean_conv2d`). On the FFT paths both spectral steps see the same
spectra, so a non-finite input gives the same ``nan`` on either.
"""

import torch

from effconv_ref.kernels import KernelUnavailable, why_cannot_compile
from effconv_ref.kernels.triton_build import why_triton_cannot_run

BACKENDS = ("auto", "reference", "cuda")
TENSOR_CORE_CAPABILITY = (8, 0)  # the oldest GPU on which Triton's tl.dot uses tensor cores


def check_backend(backend: str, choices: tuple = BACKENDS) -> str:
    """Validate a ``backend=`` argument against the operator's ``choices`` and return it."""
    if backend not in choices:
        raise ValueError(f"backend={backend!r} is not a backend; choose one of {', '.join(choices)}")
    return backend


def _auto(x: torch.Tensor, choices: tuple) -> str:
    """The rule of ``"auto"`` written in this module's docstring."""
    if not x.is_cuda:
        return "reference"
    if ("triton" in choices and why_triton_cannot_run(x) is None
            and torch.cuda.get_device_capability(x.device) >= TENSOR_CORE_CAPABILITY):
        return "triton"
    if "cuda" in choices and why_cannot_compile() is None:
        return "cuda"
    return "reference"


def resolve_backend(backend: str, x: torch.Tensor, choices: tuple = BACKENDS) -> str:
    """The path that will run for input ``x``: ``"reference"``, ``"cuda"`` or ``"triton"``."""
    check_backend(backend, choices)
    if backend == "reference":
        return "reference"
    if backend == "auto":
        return _auto(x, choices)
    if backend == "triton":
        reason = why_triton_cannot_run(x)
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run: {reason}; use backend='auto' or 'reference'")
        return "triton"
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
