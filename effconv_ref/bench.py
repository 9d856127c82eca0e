"""One benchmark harness: time a function honestly and put the roofline floor beside it.

* :func:`time_fn` times ``fn(*args)``: on a GPU with CUDA events around each call (after a
  warm-up), on the CPU with a monotonic clock; it cycles through several independent input
  sets so that caches do not flatter, and reports the median and quartiles (:class:`Timing`).
* :func:`math_mode_of` says which arithmetic an operation runs in ("fp32", "tf32", "bf16",
  "fp16", "fp64"): its dtype and PyTorch's settings decide (:func:`select_math_mode`).
* :func:`measure_peaks` measures what this machine can do at best in one math mode — the
  memory bandwidth from copies (large, and small ones that stay in cache), the flop rate
  from the fastest of a large matrix product and a large convolution (:class:`Peaks`).
* :func:`benchmark` times a function (and, optionally, a baseline such as cuDNN's
  convolution on the same inputs) and reports the time beside the roofline floor
  ``max(flops / peak, bytes / bandwidth)`` from :mod:`effconv_ref.cost`, with the peak of
  the math mode the function runs in.
* :func:`write_results` stores records as JSON under ``data/`` together with
  :func:`machine_info`: which machine, which software, which commit.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import json
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from effconv_ref.cost import bound, roofline_floor

__all__ = [
    "machine_info",
    "device_name",
    "Timing",
    "time_fn",
    "MATH_MODES",
    "OP_KINDS",
    "select_math_mode",
    "fp32_precision",
    "math_mode_of",
    "Peaks",
    "measure_peaks",
    "best_peaks",
    "benchmark",
    "write_results",
    "read_results",
]

PEAKS_CACHE = Path.home() / ".cache" / "effconv_ref" / "peaks.json"  # opt-in: measure_peaks


# ----------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the repository that holds this package, if it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def machine_info() -> dict:
    """Where a result came from: the device, the software versions and the git commit.

    ``device`` is the GPU's name when one is present, else the CPU model. No timestamps:
    this dict may be printed in a stored notebook output.
    """
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "device": gpu or _cpu_name(),
        "gpu": gpu,
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "commit": _git_commit(),
    }


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Run time of repeated calls, in seconds: median and quartiles, and the fastest call."""

    median_s: float
    q25_s: float
    q75_s: float
    repeats: int
    best_s: float | None = None

    def __str__(self) -> str:
        scale, unit = next(
            ((s, u) for s, u in ((1.0, "s"), (1e-3, "ms")) if self.median_s >= s), (1e-6, "µs")
        )
        return (
            f"{self.median_s / scale:8.3f} {unit} (quartiles {self.q25_s / scale:.3f}"
            f"–{self.q75_s / scale:.3f} {unit}, n={self.repeats})"
        )


def _as_args(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _device_of(input_sets, device) -> torch.device:
    """``device`` if given, else CUDA when any input tensor lives there, else the CPU."""
    if device is not None:
        return torch.device(device)
    for args in input_sets:
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.is_cuda:
                return arg.device
    return torch.device("cpu")


def _prepare(make_inputs, warmup, repeats, rotate, device):
    """Check the counts, make the ``rotate`` input sets, pick the device and the defaults."""
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if rotate < 1:
        raise ValueError(f"rotate must be at least 1, got {rotate}")
    if warmup is not None and warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {warmup}")
    input_sets = [_as_args(make_inputs()) for _ in range(rotate)]
    dev = _device_of(input_sets, device)
    cuda = dev.type == "cuda"
    warmup = (10 if cuda else 3) if warmup is None else warmup
    repeats = (100 if cuda else 20) if repeats is None else repeats
    return input_sets, dev, warmup, repeats


def _time_on(fn: Callable, input_sets: list[tuple], device: torch.device,
             warmup: int, repeats: int) -> Timing:
    """Time ``fn`` cycling through prepared ``input_sets``."""
    n = len(input_sets)
    times: list[float] = []
    if device.type == "cuda":
        with torch.cuda.device(device):
            for i in range(warmup):
                fn(*input_sets[i % n])
            torch.cuda.synchronize()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]
            for i, (start, end) in enumerate(events):
                start.record()
                fn(*input_sets[i % n])
                end.record()
            torch.cuda.synchronize()
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for i in range(warmup):
            fn(*input_sets[i % n])
        for i in range(repeats):
            args = input_sets[i % n]
            t0 = time.perf_counter_ns()
            fn(*args)
            times.append((time.perf_counter_ns() - t0) / 1e9)
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return Timing(median_s=float(median), q25_s=float(q25), q75_s=float(q75), repeats=repeats,
                  best_s=float(min(times)))


def time_fn(
    fn: Callable,
    make_inputs: Callable[[], tuple],
    *,
    warmup: int | None = None,
    repeats: int | None = None,
    rotate: int = 4,
    device: str | torch.device | None = None,
) -> Timing:
    """Time ``fn(*make_inputs())``.

    ``rotate`` independent input sets are made up front and the calls cycle through them,
    so that no call finds its input already in cache from the call before. On CUDA each call
    is timed by a pair of ``torch.cuda.Event``\\ s after ``warmup`` calls, with one
    synchronisation at the end; on the CPU by ``time.perf_counter_ns``. Defaults: 3 warm-up
    calls and 20 timed ones on the CPU, 10 and 100 on CUDA. ``device`` defaults to CUDA when
    an input tensor is on a GPU, else the CPU.
    """
    input_sets, dev, warmup, repeats = _prepare(make_inputs, warmup, repeats, rotate, device)
    return _time_on(fn, input_sets, dev, warmup, repeats)


# ----------------------------------------------------------------------------- math modes

# The arithmetic an operation can run in, from the slowest peak to the fastest (typical).
MATH_MODES = ("fp64", "fp32", "tf32", "bf16", "fp16")
# What kind of kernel runs: a convolution (cuDNN, oneDNN), a matrix product (cuBLAS, MKL,
# oneDNN), either of them ("any": the faster of the two modes PyTorch allows), or anything
# else (element-wise, FFT, a custom kernel: plain arithmetic of the dtype).
OP_KINDS = ("conv", "matmul", "any", "other")
_DTYPE_MODES = {torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
_MODE_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32,
                "bf16": torch.bfloat16, "fp16": torch.float16}


def select_math_mode(
    device_type: str,
    dtype: torch.dtype,
    op_kind: str = "any",
    *,
    conv_precision: str = "ieee",
    matmul_precision: str = "ieee",
    tf32_hardware: bool = False,
    bf16_hardware: bool = False,
) -> str:
    """The math mode an operation runs in, from plain facts (no look at the machine).

    ``float64``, ``bfloat16`` and ``float16`` run in their own mode. ``float32`` runs in
    FP32 unless PyTorch's float32 precision for the op's backend lets it go faster:
    ``"tf32"`` gives TF32 tensor cores on a GPU that has them (``tf32_hardware``; a CPU has
    none), ``"bf16"`` gives bfloat16 arithmetic where the hardware has it (oneDNN on a CPU
    with AVX512-BF16 or AMX). ``conv_precision`` and ``matmul_precision`` are those
    settings (see :func:`fp32_precision`); ``op_kind="any"`` takes the faster of the two,
    ``"other"`` neither.
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    if op_kind not in OP_KINDS:
        raise ValueError(f"op_kind must be one of {', '.join(OP_KINDS)}, got {op_kind!r}")
    if dtype in _DTYPE_MODES:
        return _DTYPE_MODES[dtype]
    if dtype != torch.float32:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    settings = {"conv": [conv_precision], "matmul": [matmul_precision],
                "any": [conv_precision, matmul_precision], "other": []}[op_kind]
    modes = ["fp32"]
    for precision in settings:
        if precision == "tf32" and device_type == "cuda" and tf32_hardware:
            modes.append("tf32")
        elif precision == "bf16" and bf16_hardware:
            modes.append("bf16")
    return max(modes, key=MATH_MODES.index)


def _precision_levels(device_type: str, op_kind: str) -> list:
    """PyTorch's float32-precision settings that govern ``op_kind``, most specific first."""
    if device_type == "cuda":
        op = getattr(torch.backends.cudnn, "conv", None) if op_kind == "conv" \
            else torch.backends.cuda.matmul
        return [op, torch.backends.cudnn, torch.backends]  # cudnn's level is CUDA's "all"
    return [getattr(torch.backends.mkldnn, op_kind, None), torch.backends.mkldnn, torch.backends]


def fp32_precision(device_type: str, op_kind: str) -> str:
    """PyTorch's setting for float32 ``op_kind`` (``"conv"`` or ``"matmul"``) on
    ``device_type``: ``"ieee"``, ``"tf32"`` or ``"bf16"``.

    Read from ``torch.backends.*.fp32_precision`` (the op's own level, then its backend's,
    then the global one; ``"none"`` defers to the next), else from the older flags
    ``torch.backends.cudnn.allow_tf32`` (convolutions) and
    ``torch.backends.cuda.matmul.allow_tf32`` (matmuls, what
    ``torch.set_float32_matmul_precision`` sets). Where PyTorch refuses to answer (old and
    new settings mixed) the faster mode is assumed, so that a floor stays a floor.
    """
    if op_kind not in ("conv", "matmul"):
        raise ValueError(f"op_kind must be 'conv' or 'matmul', got {op_kind!r}")
    for level in _precision_levels(device_type, op_kind):
        try:
            value = getattr(level, "fp32_precision", "none") if level is not None else "none"
        except (AttributeError, RuntimeError):
            value = "none"
        if value != "none":
            return value
    if device_type != "cuda":
        return "ieee"
    try:
        legacy = torch.backends.cudnn.allow_tf32 if op_kind == "conv" \
            else torch.backends.cuda.matmul.allow_tf32
    except RuntimeError:
        return "tf32"
    return "tf32" if legacy else "ieee"


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _resolve_device(device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or a CUDA GPU, got {dev}")
    return dev


def math_mode_of(device=None, dtype: torch.dtype = torch.float32, op_kind: str = "any") -> str:
    """The math mode an ``op_kind`` operation on ``dtype`` runs in on ``device`` now,
    under PyTorch's current settings (:func:`select_math_mode` on :func:`fp32_precision`)."""
    dev = _resolve_device(device)
    modern_gpu = dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0)
    return select_math_mode(
        dev.type, dtype, op_kind,
        conv_precision=fp32_precision(dev.type, "conv"),
        matmul_precision=fp32_precision(dev.type, "matmul"),
        tf32_hardware=modern_gpu,
        bf16_hardware=modern_gpu or (dev.type == "cpu" and _cpu_has_bf16()),
    )


@contextlib.contextmanager
def _fp32_precision_as(device_type: str, value: str):
    """Set PyTorch's float32 precision of convolutions and matmuls on ``device_type`` to
    ``value`` (``"ieee"`` or ``"tf32"``) inside the block, and put it back after."""
    if device_type == "cuda":
        ops = [(getattr(torch.backends.cudnn, "conv", None), torch.backends.cudnn),
               (torch.backends.cuda.matmul, torch.backends.cuda.matmul)]
    else:
        ops = [(getattr(torch.backends.mkldnn, "conv", None), None),
               (getattr(torch.backends.mkldnn, "matmul", None), None)]
    saved = []
    try:
        for level, legacy in ops:
            if level is not None and hasattr(level, "fp32_precision"):
                saved.append((level, "fp32_precision", level.fp32_precision))
                level.fp32_precision = value
            elif legacy is not None:
                saved.append((legacy, "allow_tf32", legacy.allow_tf32))
                legacy.allow_tf32 = value == "tf32"
        yield
    finally:
        for obj, attr, old in reversed(saved):
            setattr(obj, attr, old)


# ----------------------------------------------------------------------------- peaks


@dataclass(frozen=True)
class Peaks:
    """What a device can do at best in one math mode: ``flops`` in flop/s, ``bandwidth``
    in bytes/s (a copy too large for any cache), and ``bandwidths``, the copy bandwidth of
    smaller copies as ``(bytes moved per call, bytes/s)`` pairs (what caches allow)."""

    bandwidth: float
    flops: float
    device: str
    how: str
    math_mode: str = "fp32"
    threads: int | None = None
    bandwidths: tuple = ()

    def bandwidth_for(self, nbytes: float) -> float:
        """The fastest rate at which one call can move ``nbytes``, its inputs rotated as
        :func:`time_fn` rotates them: the best copy bandwidth measured at ``nbytes/2`` to
        ``nbytes`` per call (smaller copies run from cache, so they are at least as fast),
        and never less than :attr:`bandwidth`; below the smallest copy measured, the best
        of all."""
        near = [bw for n, bw in self.bandwidths if nbytes / 2 <= n <= nbytes]
        if not near and self.bandwidths and nbytes < min(n for n, _ in self.bandwidths):
            near = [bw for _, bw in self.bandwidths]
        return max([self.bandwidth, *near])

    def __str__(self) -> str:
        return (f"{self.device}: {self.bandwidth / 1e9:.1f} GB/s, "
                f"{self.flops / 1e12:.2f} Tflop/s {self.math_mode}")


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{_cpu_name()} ({torch.get_num_threads()} threads)"


def device_name(device=None) -> str:
    """The GPU's name, or the CPU model with the number of threads PyTorch uses."""
    return _device_name(_resolve_device(device))


def _last_level_cache_bytes() -> int:
    """The largest CPU cache, from Linux's sysfs; 0 where unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def _fastest(flops: float, fn: Callable, dev: torch.device, repeats: int) -> float:
    """``flops`` over the fastest of ``repeats`` calls (after two warm-up calls)."""
    return flops / _time_on(fn, [()], dev, warmup=2, repeats=repeats).best_s


@functools.cache
def _flop_rate(device: str, math_mode: str, threads: int) -> tuple[float, str]:
    """The best flop rate of a large matmul and of a large 3x3 convolution in ``math_mode``."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    n, (b, c, size), repeats = ((8192, (64, 256, 64), 20) if cuda else (1024, (4, 256, 32), 20))
    dtype = _MODE_DTYPES[math_mode]
    rates = {}
    with torch.no_grad(), _fp32_precision_as(dev.type, "tf32" if math_mode == "tf32" else "ieee"):
        a, w = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
        x = torch.randn(b, c, size, size, device=dev, dtype=dtype)
        k = torch.randn(c, c, 3, 3, device=dev, dtype=dtype)
        probes = {f"{n}x{n} matmul": (2 * n**3, lambda: torch.mm(a, w)),
                  f"3x3 conv {b}x{c}x{size}x{size}": (2 * 9 * b * c * c * size * size,
                                                      lambda: F.conv2d(x, k, padding=1))}
        for name, (flops, fn) in probes.items():
            try:
                rates[name] = _fastest(flops, fn, dev, repeats)
            except (RuntimeError, NotImplementedError):
                pass  # this dtype has no such kernel on this device
    if not rates:
        raise RuntimeError(f"no matmul or convolution runs in {math_mode} on {dev}")
    best = max(rates, key=rates.get)
    how = (f"{math_mode}, {threads} threads: fastest of {repeats} calls of a "
           + " and a ".join(rates) + f" (best: the {best})")
    return rates[best], how


@functools.cache
def _copy_rates(device: str, threads: int) -> tuple[float, tuple, str]:
    """Copy bandwidth (read + write counted): one copy too large for any cache, and the
    curve of smaller copies, each cycling through 4 sources as :func:`time_fn` does."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    big = 256 * 2**20 if cuda else min(max(64 * 2**20, 4 * _last_level_cache_bytes()), 512 * 2**20)
    repeats = 20 if cuda else 10
    src = torch.empty(big // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    dram = 2 * big / _time_on(lambda: dst.copy_(src), [()], dev, 2, repeats).best_s
    del src, dst
    curve = []
    moved = 2**18
    while moved < big:
        sources = [(torch.empty(moved // 8, device=dev).uniform_(),) for _ in range(4)]
        dst = torch.empty(moved // 8, device=dev)
        t = _time_on(lambda s: dst.copy_(s), sources, dev, 4, repeats).best_s
        curve.append((moved, moved / t))
        moved *= 2
    how = (f"fastest of {repeats} copies of {big // 2**20} MiB float32 (read + write counted); "
           f"copies of {curve[0][0] // 2**10} KiB to {curve[-1][0] // 2**20} MiB per call "
           f"for the cache-resident curve")
    return dram, tuple(curve), how


def measure_peaks(
    device: str | torch.device | None = None,
    *,
    math_mode: str | None = None,
    cache_path: str | Path | None = None,
    fresh: bool = False,
) -> Peaks:
    """Measure the device's memory bandwidth and its flop rate in ``math_mode``.

    The flop rate is the fastest call of a large matmul and of a large 3x3 convolution run
    in that mode (PyTorch's float32 precision set for the measurement: ``"tf32"`` for TF32,
    ``"ieee"`` for FP32), on the CPU with the threads PyTorch uses now; the bandwidth is the
    fastest of large copies, plus the curve of smaller ones (:meth:`Peaks.bandwidth_for`).
    The fastest call, not the median: a busy machine only makes calls slower.
    ``math_mode`` defaults to :func:`math_mode_of` float32 convolutions and matmuls under
    PyTorch's current settings (TF32 on a recent GPU by default, FP32 on a CPU).

    Measured once per process for each device, math mode and thread count (about 1 s on a
    CPU), again with ``fresh=True``. With a ``cache_path`` (e.g. :data:`PEAKS_CACHE`) the
    result is also stored there, keyed by device, math mode, threads and torch version, and
    reused by later processes. On a busy machine, measure before and after the timings and
    keep :func:`best_peaks` of the two.
    """
    dev = _resolve_device(device)
    mode = math_mode_of(dev) if math_mode is None else math_mode
    if mode not in MATH_MODES:
        raise ValueError(f"math_mode must be one of {', '.join(MATH_MODES)}, got {mode!r}")
    if mode == "tf32" and dev.type != "cuda":
        raise ValueError("math_mode='tf32' needs a GPU with TF32 tensor cores; a CPU has none")
    threads = torch.get_num_threads()
    name = _device_name(dev)
    key = f"{name} | {mode} | {threads} threads | torch {torch.__version__}"
    stored: dict = {}
    if fresh:
        _flop_rate.cache_clear()
        _copy_rates.cache_clear()
    if cache_path is not None:
        try:
            stored = json.loads(Path(cache_path).read_text())
            if fresh:
                raise KeyError(key)
            entry = dict(stored[key])
            entry["bandwidths"] = tuple(tuple(pair) for pair in entry.get("bandwidths", ()))
            return Peaks(**entry)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    flops, flops_how = _flop_rate(str(dev), mode, threads)
    dram, curve, copy_how = _copy_rates(str(dev), threads)
    peaks = Peaks(bandwidth=dram, flops=flops, device=name, how=f"{flops_how}; {copy_how}",
                  math_mode=mode, threads=threads, bandwidths=curve)
    if cache_path is not None:
        try:
            stored = stored if isinstance(stored, dict) else {}
            stored[key] = asdict(peaks)
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cache_path).write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only home is no reason to fail a benchmark
    return peaks


def best_peaks(*measured: Peaks) -> Peaks:
    """The best of several measurements of the same device and mode: the highest flop rate
    and bandwidths (load only ever slows a measurement down)."""
    first = measured[0]
    if any((p.device, p.math_mode) != (first.device, first.math_mode) for p in measured):
        raise ValueError("best_peaks needs measurements of one device in one math mode")
    curve = {}
    for p in measured:
        for n, bw in p.bandwidths:
            curve[n] = max(bw, curve.get(n, 0.0))
    return Peaks(bandwidth=max(p.bandwidth for p in measured),
                 flops=max(p.flops for p in measured), device=first.device,
                 how=f"best of {len(measured)} measurements; {first.how}",
                 math_mode=first.math_mode, threads=first.threads,
                 bandwidths=tuple(sorted(curve.items())))


def _input_math_mode(input_sets: list[tuple], dev: torch.device, op_kind: str) -> str:
    """The math mode of an ``op_kind`` operation on these inputs: the dtype of the first
    floating-point tensor (float32 if none), or the autocast dtype when autocast is on."""
    dtype = next((a.dtype for a in input_sets[0]
                  if isinstance(a, torch.Tensor) and a.is_floating_point()), torch.float32)
    try:
        if torch.is_autocast_enabled(dev.type):
            dtype = torch.get_autocast_dtype(dev.type)
    except (AttributeError, TypeError, RuntimeError):
        pass
    return math_mode_of(dev, dtype, op_kind)


# ----------------------------------------------------------------------------- benchmark


def benchmark(
    name: str,
    fn: Callable,
    make_inputs: Callable[[], tuple],
    *,
    flops: float,
    bytes: float,
    peaks: Peaks | None = None,
    math_mode: str | None = None,
    op_kind: str = "any",
    baseline: Callable | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    rotate: int = 4,
    device: str | torch.device | None = None,
    **params: Any,
) -> dict:
    """Time ``fn`` and report it beside the roofline floor; return a JSON-ready record.

    ``flops`` and ``bytes`` are the work of one call (e.g. from :mod:`effconv_ref.cost`).
    ``math_mode`` is the arithmetic ``fn`` runs in; by default :func:`math_mode_of` the
    inputs' dtype (the autocast dtype when autocast is on) for an ``op_kind`` operation
    (``"any"``: the faster of what PyTorch allows convolutions and matmuls). ``peaks``
    defaults to :func:`measure_peaks` for the device in that mode; peaks of another mode
    are refused, since their floor would not be a floor. The floor is ``max(flops /
    peak_flops, bytes / bandwidth)`` with ``bandwidth = peaks.bandwidth_for(bytes)``: the
    copy bandwidth at this many bytes, so that data small enough to stay in cache is held
    to the cache's speed. When ``baseline`` is given it is timed in the same process on
    the same input sets, and ``ratio = time_s / baseline_s`` (below 1: faster than the
    baseline). Extra keyword arguments (``channels=64, size=32``) are stored in the record
    as they are, to describe the case.

    The record's keys: ``name``, ``device``, ``math_mode``, ``time_s``, ``q25_s``,
    ``q75_s``, ``repeats``, ``flops``, ``bytes``, ``intensity``, ``floor_s``,
    ``floor_ratio`` (``time_s / floor_s``, at least 1 up to measurement error), ``bound``
    (``"memory"`` or ``"compute"``), ``peak_flops``, ``bandwidth`` (the one in the floor),
    ``dram_bandwidth`` (a copy too large for any cache), ``baseline_s``, ``ratio`` (both
    ``None`` without a baseline), then the extra keyword arguments.
    """
    input_sets, dev, warmup, repeats = _prepare(make_inputs, warmup, repeats, rotate, device)
    mode = _input_math_mode(input_sets, dev, op_kind) if math_mode is None else math_mode
    if mode not in MATH_MODES:
        raise ValueError(f"math_mode must be one of {', '.join(MATH_MODES)}, got {mode!r}")
    if peaks is None:
        peaks = measure_peaks(dev, math_mode=mode)
    elif peaks.math_mode != mode:
        raise ValueError(
            f"peaks were measured in {peaks.math_mode} but {name!r} runs in {mode}; pass "
            f"peaks=measure_peaks(device, math_mode={mode!r}) or the right math_mode"
        )
    timing = _time_on(fn, input_sets, dev, warmup, repeats)
    base = _time_on(baseline, input_sets, dev, warmup, repeats) if baseline is not None else None
    bandwidth = peaks.bandwidth_for(bytes)
    floor = roofline_floor(flops, bytes, peaks.flops, bandwidth)
    record = {
        "name": name,
        "device": peaks.device,
        "math_mode": mode,
        "time_s": timing.median_s,
        "q25_s": timing.q25_s,
        "q75_s": timing.q75_s,
        "repeats": timing.repeats,
        "flops": flops,
        "bytes": bytes,
        "intensity": flops / bytes if bytes else None,
        "floor_s": floor,
        "floor_ratio": timing.median_s / floor if floor > 0 else None,
        "bound": bound(flops, bytes, peaks.flops, bandwidth),
        "peak_flops": peaks.flops,
        "bandwidth": bandwidth,
        "dram_bandwidth": peaks.bandwidth,
        "baseline_s": base.median_s if base is not None else None,
        "ratio": timing.median_s / base.median_s if base is not None else None,
    }
    clash = sorted(set(params) & set(record))
    if clash:
        raise ValueError(f"parameter names {clash} clash with the record's own keys")
    record.update(params)
    return record


# ----------------------------------------------------------------------------- files


def write_results(path: str | Path, records: list[dict], *, meta: dict | None = None) -> Path:
    """Write ``{"machine": machine_info(), "date": ..., "records": records}`` (plus
    ``"meta"`` when given) as JSON, indented and with sorted keys so that diffs stay small."""
    document = {
        "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "records": list(records),
    }
    if meta is not None:
        document["meta"] = meta
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def read_results(path: str | Path) -> dict:
    """Read a file written by :func:`write_results`."""
    return json.loads(Path(path).read_text())
