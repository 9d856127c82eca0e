"""The one place that compiles CUDA sources: ``load_cuda(name, sources, declarations, functions)``.

Kernel sources are ``.cu`` files in this folder, read at build time and compiled with
``torch.utils.cpp_extension.load_inline``. This helper owns the compiler flags, the GPU
architectures, the build cache, the "compiling ..." message and the errors that say what is
missing (a CPU-only torch, no ``nvcc``, no ``ninja``, no GPU).

Architectures: ``TORCH_CUDA_ARCH_LIST`` when set; else the GPU at hand; else, with no GPU,
:data:`DEFAULT_ARCHS` (Colab's T4 and A100, and Hopper), so that a build without a GPU
still checks that every kernel compiles for the GPUs readers have.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

KERNEL_DIR = Path(__file__).resolve().parent
DEFAULT_ARCHS = "7.5;8.0;9.0+PTX"
NVCC_FLAGS = ["-O3", "-lineinfo"]

_loaded: dict[str, object] = {}


class KernelUnavailable(RuntimeError):
    """A CUDA kernel cannot be compiled or run here; the message says what is missing."""


def _is_toolkit(folder: Path) -> bool:
    return (folder / "bin" / "nvcc").exists() and any(
        (folder / lib / "libcudart.so").exists() for lib in ("lib64", "lib")
    )


def _cuda_home() -> str | None:
    """The CUDA toolkit: ``CUDA_HOME``, ``CUDA_PATH``, ``/usr/local/cuda``, or where ``nvcc`` lives.

    A folder counts only if it has ``bin/nvcc`` and the CUDA runtime library, so that a
    ``nvcc`` wrapper script in ``/usr/local/bin`` does not pass for a toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for candidate in candidates:
        if candidate and _is_toolkit(Path(candidate)):
            return str(Path(candidate).resolve())
    return None


def why_cannot_compile() -> str | None:
    """Why CUDA kernels cannot be compiled here, or ``None`` when they can."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build; "
            "install a CUDA build of torch to compile the CUDA kernels"
        )
    if _cuda_home() is None:
        return (
            "no CUDA toolkit was found (nvcc and libcudart); install it and set CUDA_HOME "
            "(looked at CUDA_HOME, CUDA_PATH, /usr/local/cuda and the nvcc on PATH)"
        )
    if shutil.which("ninja") is None and not Path(sys.executable).with_name("ninja").exists():
        return "ninja was not found; `pip install ninja` (torch builds extensions with it)"
    return None


def why_cannot_run() -> str | None:
    """Why CUDA kernels cannot run here, or ``None`` when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    return why_cannot_compile()


def can_compile() -> bool:
    return why_cannot_compile() is None


def can_run() -> bool:
    return why_cannot_run() is None


def arch_list() -> str:
    """The ``TORCH_CUDA_ARCH_LIST`` a build uses: the environment's, the GPU's, or the default."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}+PTX"
    return DEFAULT_ARCHS


@contextlib.contextmanager
def _environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cache_dir() -> Path:
    """Where builds are kept: ``$EFFCONV_CACHE/kernels``, default ``~/.cache/effconv_ref/kernels``."""
    root = os.environ.get("EFFCONV_CACHE") or Path.home() / ".cache" / "effconv_ref"
    return Path(root) / "kernels"


def load_cuda(name: str, sources: list[str], declarations: str, functions: list[str]):
    """Compile (once) and import the CUDA extension ``name``.

    ``sources`` are ``.cu`` file names in this folder; ``declarations`` are the C++
    prototypes of the ``functions`` that Python may call. The build is cached under
    :func:`cache_dir`, keyed by the sources, flags, architectures and torch version.
    """
    reason = why_cannot_compile()
    if reason is not None:
        raise KernelUnavailable(f"cannot compile the CUDA kernel '{name}': {reason}")
    cuda_source = "\n".join((KERNEL_DIR / s).read_text() for s in sources)
    archs = arch_list()
    key_text = "\n".join([cuda_source, declarations, *functions, *NVCC_FLAGS, archs, torch.__version__])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    if key in _loaded:
        return _loaded[key]

    build_directory = cache_dir() / f"{name}-{key}"
    build_directory.mkdir(parents=True, exist_ok=True)
    if not any(build_directory.glob("*.so")):
        print(
            f"effconv_ref: compiling the CUDA kernel '{name}' for sm {archs} "
            "(first use, about a minute) ...",
            file=sys.stderr,
            flush=True,
        )
    os.environ.setdefault("CUDA_HOME", _cuda_home())
    from torch.utils import cpp_extension

    # torch guesses its CUDA_HOME once, at import, and may take a folder that only holds an
    # nvcc wrapper; build with the toolkit found above instead.
    home, cpp_extension.CUDA_HOME = cpp_extension.CUDA_HOME, _cuda_home()
    try:
        with _environment(TORCH_CUDA_ARCH_LIST=archs, CUDA_HOME=cpp_extension.CUDA_HOME):
            module = cpp_extension.load_inline(
                name=f"effconv_{name}_{key}",
                cpp_sources=declarations,
                cuda_sources=cuda_source,
                functions=functions,
                extra_cuda_cflags=NVCC_FLAGS,
                build_directory=str(build_directory),
                verbose=False,
            )
    finally:
        cpp_extension.CUDA_HOME = home
    _loaded[key] = module
    return module
