"""One benchmark harness: time a function honestly and put the roofline floor beside it.

* :func:`time_fn` times ``fn(*args)``: on a GPU with CUDA events around each call (after a
  warm-up), on the CPU with a monotonic clock; it cycles through several independent input
  sets so that caches do not flatter, and reports the median and quartiles (:class:`Timing`).
* :func:`measure_peaks` measures what this machine can do at best — memory bandwidth from a
  large copy, flop rate from a large matrix product (:class:`Peaks`).
* :func:`benchmark` times a function (and, optionally, a baseline such as cuDNN's
  convolution on the same inputs) and reports the time beside the roofline floor
  ``max(flops / peak, bytes / bandwidth)`` from :mod:`effconv_ref.cost`.
* :func:`write_results` stores records as JSON under ``data/`` together with
  :func:`machine_info`: which machine, which software, which commit.
"""

from __future__ import annotations

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

from effconv_ref.cost import bound, roofline_floor

__all__ = [
    "machine_info",
    "Timing",
    "time_fn",
    "Peaks",
    "measure_peaks",
    "benchmark",
    "write_results",
    "read_results",
]

PEAKS_CACHE = Path.home() / ".cache" / "effconv_ref" / "peaks.json"


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
    """Run time of repeated calls, in seconds: median and quartiles."""

    median_s: float
    q25_s: float
    q75_s: float
    repeats: int

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
    return Timing(median_s=float(median), q25_s=float(q25), q75_s=float(q75), repeats=repeats)


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


# ----------------------------------------------------------------------------- peaks


@dataclass(frozen=True)
class Peaks:
    """What a device can do at best: ``bandwidth`` in bytes/s, ``flops`` in flop/s."""

    bandwidth: float
    flops: float
    device: str
    how: str

    def __str__(self) -> str:
        return f"{self.device}: {self.bandwidth / 1e9:.1f} GB/s, {self.flops / 1e12:.2f} Tflop/s"


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{_cpu_name()} ({torch.get_num_threads()} threads)"


@functools.cache
def _measure(device: str) -> Peaks:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    copy_mb, n, repeats = (256, 8192, 20) if cuda else (64, 1024, 10)
    src = torch.empty(copy_mb * 2**20 // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    copy = _time_on(lambda: dst.copy_(src), [()], dev, warmup=2, repeats=repeats)
    a, b = (torch.randn(n, n, device=dev) for _ in range(2))
    mm = _time_on(lambda: torch.mm(a, b), [()], dev, warmup=2, repeats=repeats)
    return Peaks(
        bandwidth=2 * copy_mb * 2**20 / copy.median_s,
        flops=2 * n**3 / mm.median_s,
        device=_device_name(dev),
        how=(
            f"median of {repeats}: copy of {copy_mb} MiB float32 (read + write counted); "
            f"{n}x{n} float32 matmul (TF32 "
            f"{'on' if cuda and torch.backends.cuda.matmul.allow_tf32 else 'off'})"
        ),
    )


def measure_peaks(
    device: str | torch.device | None = None, *, cache_path: str | Path | None = PEAKS_CACHE
) -> Peaks:
    """Measure the device's memory bandwidth and float32 flop rate (a copy and a matmul).

    Measured once per process and device; with a ``cache_path`` (default
    ``~/.cache/effconv_ref/peaks.json``), also stored there keyed by device name and reused
    by later processes. Delete that file to measure again; ``cache_path=None`` skips it.
    ``device`` defaults to CUDA when a GPU is present, else the CPU (about 1 s there).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    name = _device_name(dev)
    stored: dict = {}
    if cache_path is not None:
        try:
            stored = json.loads(Path(cache_path).read_text())
            return Peaks(**stored[name])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    peaks = _measure(str(dev))
    if cache_path is not None:
        try:
            stored = stored if isinstance(stored, dict) else {}
            stored[name] = asdict(peaks)
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cache_path).write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only home is no reason to fail a benchmark
    return peaks


# ----------------------------------------------------------------------------- benchmark


def benchmark(
    name: str,
    fn: Callable,
    make_inputs: Callable[[], tuple],
    *,
    flops: float,
    bytes: float,
    peaks: Peaks | None = None,
    baseline: Callable | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    rotate: int = 4,
    device: str | torch.device | None = None,
    **params: Any,
) -> dict:
    """Time ``fn`` and report it beside the roofline floor; return a JSON-ready record.

    ``flops`` and ``bytes`` are the work of one call (e.g. from :mod:`effconv_ref.cost`);
    ``peaks`` defaults to :func:`measure_peaks` for the device. When ``baseline`` is given it
    is timed in the same process on the same input sets, and ``ratio = time_s /
    baseline_s`` (below 1: faster than the baseline). Extra keyword arguments (``channels=64,
    size=32``) are stored in the record as they are, to describe the case.

    The record's keys: ``name``, ``device``, ``time_s``, ``q25_s``, ``q75_s``, ``repeats``,
    ``flops``, ``bytes``, ``intensity``, ``floor_s``, ``floor_ratio`` (``time_s /
    floor_s``, at least 1 up to measurement error), ``bound`` (``"memory"`` or
    ``"compute"``), ``peak_flops``, ``bandwidth``, ``baseline_s``, ``ratio`` (both ``None``
    without a baseline), then the extra keyword arguments.
    """
    input_sets, dev, warmup, repeats = _prepare(make_inputs, warmup, repeats, rotate, device)
    if peaks is None:
        peaks = measure_peaks(dev)
    timing = _time_on(fn, input_sets, dev, warmup, repeats)
    base = _time_on(baseline, input_sets, dev, warmup, repeats) if baseline is not None else None
    floor = roofline_floor(flops, bytes, peaks.flops, peaks.bandwidth)
    record = {
        "name": name,
        "device": peaks.device,
        "time_s": timing.median_s,
        "q25_s": timing.q25_s,
        "q75_s": timing.q75_s,
        "repeats": timing.repeats,
        "flops": flops,
        "bytes": bytes,
        "intensity": flops / bytes if bytes else None,
        "floor_s": floor,
        "floor_ratio": timing.median_s / floor if floor > 0 else None,
        "bound": bound(flops, bytes, peaks.flops, peaks.bandwidth),
        "peak_flops": peaks.flops,
        "bandwidth": peaks.bandwidth,
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
