"""CUDA kernels of effconv_ref, compiled on first use (see :mod:`effconv_ref.kernels.build`)."""

from effconv_ref.kernels.build import (
    KernelUnavailable,
    arch_list,
    can_compile,
    can_run,
    load_cuda,
    why_cannot_compile,
    why_cannot_run,
)

__all__ = [
    "KernelUnavailable",
    "arch_list",
    "can_compile",
    "can_run",
    "load_cuda",
    "why_cannot_compile",
    "why_cannot_run",
]
