"""What the Triton kernels share: can they run here, which math they use, how they are launched,
and how they are compiled for a GPU that is not here.

The fast paths (``backend="triton"``) are Triton kernels in this folder (``lean_triton.py``,
``depthwise_triton.py``, ``sic_triton.py``). They run

- on a CUDA GPU, compiled by Triton on first use and autotuned over each kernel's ``CONFIGS``;
- on the CPU under Triton's interpreter, when ``TRITON_INTERPRET=1`` is set before effconv_ref is
  imported: Triton reads it when it defines its own library (imported with effconv_ref, whose
  operators it registers) and when it defines our kernels (imported lazily, on first use). That is
  how ``make test`` proves them on a machine with no GPU: slowly, with numpy doing the arithmetic,
  one launch of one config.

Math mode (:func:`dot_precision`): float16 and bfloat16 operands go to ``tl.dot`` as they are
(tensor cores, float accumulation). A float32 ``tl.dot`` runs in TF32 on tensor cores when
PyTorch would run a float32 convolution in TF32 (``torch.backends.cudnn.allow_tf32``, on by
default), and in exact float32 FMAs otherwise, so that the comparison with cuDNN is made in one
math mode.

:func:`compile_for` builds a kernel for a GPU architecture with no GPU present (``sm_80``,
``sm_90``, ``sm_75``), for the tests that read its PTX and its shared memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from dataclasses import dataclass

import torch

__all__ = [
    "accumulator",    "SHARED_MEMORY_LIMIT",
    "Config",
    "compile_for",
    "dot_precision",
    "interpreting",
    "launch",
    "use_config",
    "load_triton",
    "memory_format_of",
    "why_triton_cannot_run",
]

# The most shared memory one block may use (bytes): sm_80 (A100) 163 KiB, sm_90 (H100) 227 KiB,
# sm_75 (T4) 64 KiB; from NVIDIA's CUDA C++ Programming Guide, "Compute capabilities".
SHARED_MEMORY_LIMIT = {75: 64 * 1024, 80: 163 * 1024, 90: 227 * 1024}


@dataclass(frozen=True)
class Config:
    """One launch configuration of a kernel: its block sizes, warps and pipeline stages."""

    blocks: tuple  # ((name, size), ...): the kernel's BLOCK_* meta-parameters
    num_warps: int = 4
    num_stages: int = 2

    @property
    def meta(self) -> dict:
        return dict(self.blocks)

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.blocks)
        return f"{sizes}, warps={self.num_warps}, stages={self.num_stages}"


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def why_triton_cannot_run(x: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on ``x``, or ``None`` when they can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (`pip install triton`; CUDA builds of torch bring it)"
    if x.is_cuda:
        return None
    if x.device.type == "cpu" and interpreting():
        import triton.language as tl

        if type(tl.cdiv).__name__ == "JITFunction":  # Triton's own library was defined compiled
            return ("TRITON_INTERPRET=1 was set after Triton was imported (importing effconv_ref "
                    "imports it); set it before importing effconv_ref, e.g. in the shell")
        return None
    return (f"the input is on {x.device}: Triton kernels run on a CUDA GPU, or on the CPU only "
            "under Triton's interpreter (set TRITON_INTERPRET=1 before importing effconv_ref)")


def load_triton(name: str):
    """Import ``effconv_ref.kernels.<name>`` (a module of Triton kernels) on first use, so that
    ``TRITON_INTERPRET`` is read when the kernels are defined, not when effconv_ref is imported."""
    if interpreting():
        _interpret_bfloat16_dot()
    return importlib.import_module(f"effconv_ref.kernels.{name}")


def _interpret_bfloat16_dot() -> None:
    """Make the interpreter's ``tl.dot`` right for bfloat16 operands.

    Triton 3.8's interpreter stores bfloat16 as ``uint16`` and its ``tl.dot`` multiplies that
    storage as integers (float16 and float32 are right). Here bfloat16 operands are widened to
    float32 first, which is what a tensor core does: exact products, float accumulation.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    dot = InterpreterBuilder.create_dot
    if getattr(dot, "widens_bfloat16", False):
        return

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a, b = self.cast_impl(a, tl.float32), self.cast_impl(b, tl.float32)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.widens_bfloat16 = True
    InterpreterBuilder.create_dot = create_dot


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels_last input, else ``torch.contiguous_format``: the
    kernels write their output in the layout they read."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def accumulator(dtype: torch.dtype):
    """The dtype a kernel accumulates ``dtype`` inputs in: float32, or float64 for float64 (the
    gradient checks run the kernels in float64)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype``: TF32 for float32 when PyTorch
    allows TF32 convolutions, else exact (``"ieee"``). It only matters for float32: half types
    run on tensor cores as they are, float64 (the gradient checks) exactly."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


_config_index: contextvars.ContextVar = contextvars.ContextVar("config_index", default=None)


@contextlib.contextmanager
def use_config(index: int):
    """Within this block every kernel launches its config number ``index`` (the tests run each
    config through the operators, forward and backward, this way)."""
    token = _config_index.set(index)
    try:
        yield
    finally:
        _config_index.reset(token)


def launch(kernel, configs: list[Config], grid, *args, config: Config | None = None, **constexprs):
    """Run ``kernel[grid](*args, **constexprs)`` with one of ``configs``.

    ``config`` given, or chosen by :func:`use_config`: that one. Otherwise on a GPU the kernel's
    autotuner picks the fastest config for the shape (``kernel.autotuned``, timed on first use of
    each shape), and under the interpreter the first config runs. ``grid`` is a function of the
    meta-parameters (the block sizes).
    """
    from torch.library import wrap_triton

    if config is None and _config_index.get() is not None:
        config = configs[_config_index.get()]
    if config is None and not interpreting():
        return wrap_triton(kernel.autotuned)[grid](*args, **constexprs)
    config = config or configs[0]
    return wrap_triton(kernel)[grid](*args, **constexprs, **config.meta,
                                     num_warps=config.num_warps, num_stages=config.num_stages)


def autotuned(kernel, configs: list[Config], key: list[str]):
    """``kernel`` autotuned over ``configs`` (keyed by the arguments named in ``key``), kept as
    ``kernel.autotuned`` for :func:`launch`."""
    import triton

    kernel.autotuned = triton.autotune(
        [triton.Config(c.meta, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs], key=key
    )(kernel)
    return kernel


def compile_for(kernel, signature: dict, constexprs: dict, config: Config, cc: int):
    """Compile ``kernel`` for compute capability ``cc`` (80 for sm_80) with no GPU present.

    Run it in a process without ``TRITON_INTERPRET``: under the interpreter Triton's own library
    functions are interpreted ones, and the compiler refuses them
    (:mod:`effconv_ref.kernels.triton_targets` is such a process).

    ``signature`` maps each runtime argument to its Triton type (``"*fp32"``, ``"i32"``);
    ``constexprs`` gives the meta-parameters other than the config's block sizes. Returns the
    compiled kernel: ``.asm["ptx"]`` is its PTX, ``.metadata.shared`` its shared memory in bytes.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel
    constants = {**constexprs, **config.meta}
    full_signature = {**signature, **{name: "constexpr" for name in constants}}
    source = ASTSource(fn=fn, signature=full_signature, constexprs={(fn.arg_names.index(k),): v
                                                                    for k, v in constants.items()})
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    return triton.compile(source, target=GPUTarget("cuda", cc, 32), options=options)
