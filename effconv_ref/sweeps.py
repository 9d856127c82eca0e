"""The papers' speed figures as benchmark sweeps, shared by the chapters and the command line.

``python -m effconv_ref.sweeps lowcost-figure1 --preset gpu`` runs the sweep of Figure 1 of
Treister et al. and writes JSON under ``data/bench/``; the chapter plots what it finds there.
Every record carries the time, the roofline floor beside it (flops counted by
:func:`effconv_ref.cost.count_cost`, the fewest bytes: inputs, weights and output once) and
the time of the fully coupled ``nn.Conv2d`` (cuDNN on a GPU) run in the same process on the
same inputs.

Beside the papers' figures: ``train-steps`` times one training step of every registered
network against the ResNet of its family (:func:`train_steps`), and ``triton-ops`` the lean,
depth-wise and SIC layers on each of their paths against cuDNN's 1x1 and 3x3 convolutions
(:func:`triton_ops`). Every sweep has the presets ``gpu``, ``gpu-quick`` (the gpu preset
without its largest sizes) and ``cpu`` (:data:`SWEEP_PRESETS`); ``python -m
effconv_ref.gpu_check`` runs them all on a GPU.

The command checks its arguments before any work: ``--out`` must be a file it can write
(probed by creating its folder and a temporary file there), and the ``gpu`` presets on a
machine without a GPU are refused unless ``--force`` is given. Every sweep shows a progress
bar (``--no-progress`` hides it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from effconv_ref.bench import benchmark, device_name, math_mode_of, measure_peaks, time_fn, write_results
from effconv_ref.runtime import progress_bar
from effconv_ref.circulant import CirculantConv2d
from effconv_ref.cost import count_cost, lean_cost
from effconv_ref.backend import resolve_backend
from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.lean import LeanConv2d
from effconv_ref.steps import ExplicitRDStep, ImplicitRDStep

# Figure 1 of Treister et al.: batch 64, 64 x 64 pixels, 256 channels, 3 x 3 by default;
# one of image size, kernel size and channels varies at a time. The CPU preset keeps the
# shape of the sweep at sizes a laptop times in seconds.
PRESETS = {
    "gpu": dict(batch=64, image_size=64, kernel_size=3, channels=256,
                sweeps={"image_size": [16, 32, 64, 128, 256], "kernel_size": [3, 5, 7, 9, 11],
                        "channels": [64, 128, 256, 512, 1024]}),
    "cpu": dict(batch=2, image_size=32, kernel_size=3, channels=64,
                sweeps={"image_size": [16, 32, 64], "kernel_size": [3, 5, 7, 9],
                        "channels": [16, 32, 64, 128, 256]}),
}
# ``gpu-quick`` (every sweep has one): the gpu preset without its largest sizes, for a GPU
# lent for a few minutes (``python -m effconv_ref.gpu_check --quick``)
PRESETS["gpu-quick"] = dict(PRESETS["gpu"], sweeps={"image_size": [16, 32, 64, 128], "kernel_size": [3, 5, 7, 9],
                                                    "channels": [64, 128, 256, 512]})

FIGURE1_OPERATORS = {
    "circulant fft": lambda c, k: CirculantConv2d(c, k),
    "depth-wise fft": lambda c, k: DepthwiseConv2d(c, k, boundary="periodic", method="fft"),
    "depth-wise direct": lambda c, k: DepthwiseConv2d(c, k, boundary="zeros", method="direct"),
}


def _case(batch, channels, image_size, kernel_size, device):
    return lambda: (torch.randn(batch, channels, image_size, image_size, device=device),)


def lowcost_figure1(preset: str = "cpu", device=None, progress: bool = False, repeats=None) -> list[dict]:
    """Time of the fully coupled convolution over the time of each cheap one, as in Figure 1.

    Each record's ``speedup`` is ``time(nn.Conv2d, fully coupled) / time(operator)``, the
    paper's ratio (larger is better); ``ratio`` is its inverse, as :func:`benchmark` reports.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(PRESETS)}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = PRESETS[preset]
    peaks = measure_peaks(device)
    cases = [(axis, value) for axis, values in p["sweeps"].items() for value in values]
    records = []
    with torch.no_grad():
        for axis, value in progress_bar(cases, disable=not progress, desc="Figure 1"):
            shape = dict(batch=p["batch"], channels=p["channels"], image_size=p["image_size"],
                         kernel_size=p["kernel_size"])
            shape[axis] = value
            c, n, k = shape["channels"], shape["image_size"], shape["kernel_size"]
            make_inputs = _case(shape["batch"], c, n, k, device)
            full = torch.nn.Conv2d(c, c, k, padding=k // 2, bias=False).to(device)
            for name, build in FIGURE1_OPERATORS.items():
                op = build(c, k).to(device)
                cost = count_cost(op, *make_inputs())
                r = benchmark(name, op, make_inputs, flops=cost.flops, bytes=cost.bytes, peaks=peaks,
                              baseline=full, device=device, repeats=repeats, sweep=axis, **shape)
                r["speedup"] = r["baseline_s"] / r["time_s"]
                records.append(r)
    return records


def lowcost_steps(preset: str = "cpu", device=None, progress: bool = False, repeats=None) -> list[dict]:
    """The implicit reaction-diffusion step (eq. 11) timed against the explicit one (eq. 9)."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(PRESETS)}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = PRESETS[preset]
    b, c, n = p["batch"], p["channels"], p["image_size"]
    make_inputs = _case(b, c, n, 3, device)
    explicit = ExplicitRDStep(c).to(device).eval()
    implicit = ImplicitRDStep(c).to(device).eval()
    records = []
    with torch.no_grad():
        steps = (("implicit RD step", implicit), ("explicit RD step", explicit))
        for name, step in progress_bar(steps, disable=not progress, desc="RD steps"):
            cost = count_cost(step, *make_inputs())
            records.append(benchmark(name, step, make_inputs, flops=cost.flops, bytes=cost.bytes,
                                     baseline=explicit, device=device, repeats=repeats,
                                     batch=b, channels=c, image_size=n, kernel_size=3))
    return records


# Figure 1 of Ephrath et al.: "a typical network", 16 channels at 512 x 512 down to 512 channels
# at 16 x 16 (channels doubled as the image is halved), batch 64. The CPU preset keeps the
# progression at a size a laptop times in seconds.
LEAN_LAYERS = {
    "gpu": dict(batch=64, layers=[(16, 512), (32, 256), (64, 128), (128, 64), (256, 32), (512, 16)]),
    "cpu": dict(batch=2, layers=[(16, 128), (32, 64), (64, 32), (128, 16), (256, 8), (512, 4)]),
}
LEAN_LAYERS["gpu-quick"] = dict(LEAN_LAYERS["gpu"], layers=LEAN_LAYERS["gpu"]["layers"][1:])  # not 16 ch at 512²


class _Sequence(torch.nn.Sequential):
    """Two layers applied one after the other (the paper's "1x1 then depth-wise")."""


class _Sum(torch.nn.Module):
    """PyTorch's unfused lean convolution: ``1x1(x) + depth-wise(x)``, two passes and an add."""

    def __init__(self, c: int):
        super().__init__()
        self.pointwise = torch.nn.Conv2d(c, c, 1, bias=False)
        self.depthwise = torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)

    def forward(self, x):
        return self.pointwise(x) + self.depthwise(x)


def expanded_width(c: int) -> int:
    """``m`` such that an expanded 1x1 convolution ``m -> 6m`` has about the ``c²`` weights of a square one."""
    return max(1, round(c / 6 ** 0.5))


def lean_operators(c: int) -> dict:
    """The operators of Figure 1 of Ephrath et al. for a layer of ``c`` channels, and the input width each takes."""
    m = expanded_width(c)
    return {
        "lean (LeanConv2d)": (LeanConv2d(c, c), c),
        "1x1 + depth-wise + add (PyTorch)": (_Sum(c), c),
        "1x1 then depth-wise": (_Sequence(torch.nn.Conv2d(c, c, 1, bias=False),
                                          torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)), c),
        "expanded 1x1 (x6) then depth-wise": (_Sequence(torch.nn.Conv2d(m, 6 * m, 1, bias=False),
                                                        torch.nn.Conv2d(6 * m, 6 * m, 3, padding=1, groups=6 * m, bias=False)), m),
        "1x1 alone": (torch.nn.Conv2d(c, c, 1, bias=False), c),
    }


def lean_figure1(preset: str = "cpu", device=None, progress: bool = False, repeats=None) -> list[dict]:
    """Time of each reduced operator over the time of a 3x3 convolution, layer by layer (Figure 1).

    ``ratio`` is ``time(operator) / time(3x3 nn.Conv2d)`` (lower is faster), the paper's measure;
    ``vs_1x1`` is the operator's time over the bare ``1x1 alone`` of the same layer.
    """
    if preset not in LEAN_LAYERS:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(LEAN_LAYERS)}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, layers = LEAN_LAYERS[preset]["batch"], LEAN_LAYERS[preset]["layers"]
    peaks = measure_peaks(device)
    records = []
    with torch.no_grad():
        for c, n in progress_bar(layers, disable=not progress, desc="Figure 1 (lean)"):
            full = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device)
            baseline_s = time_fn(full, _case(batch, c, n, 3, device), repeats=repeats, device=device).median_s
            layer = []
            for name, (op, c_in) in lean_operators(c).items():
                op = op.to(device)
                make_inputs = _case(batch, c_in, n, 3, device)
                # the fused kernel is invisible to FlopCounterMode (and the unfused sum counts a full
                # 3x3 depth-wise stencil): the lean operators are counted by their formula
                cost = lean_cost(c, c, n, n, batch=batch) if name.startswith(("lean", "1x1 + depth-wise")) \
                    else count_cost(op, *make_inputs())
                r = benchmark(name, op, make_inputs, flops=cost.flops, bytes=cost.bytes, peaks=peaks,
                              device=device, repeats=repeats, batch=batch, channels=c, image_size=n,
                              params=sum(p.numel() for p in op.parameters()))
                r["baseline_s"] = baseline_s
                r["ratio"] = r["time_s"] / baseline_s
                # LeanConv2d runs its fused kernel on a GPU and its reference path elsewhere
                r["path"] = resolve_backend("auto", make_inputs()[0]) if isinstance(op, LeanConv2d) else "torch"
                layer.append(r)
            one_by_one = next(r for r in layer if r["name"] == "1x1 alone")["time_s"]
            for r in layer:
                r["vs_1x1"] = r["time_s"] / one_by_one
            records += layer
    return records


def lean_targets(records: list[dict], min_channels: int = 64) -> dict:
    """The fused kernel's targets, read off a :func:`lean_figure1` run.

    ``worst_vs_1x1``: the largest time of ``LeanConv2d`` over the bare 1x1 convolution of the
    same layer, among layers of at least ``min_channels`` channels (target: at most 1.1);
    ``beats_unfused``: whether ``LeanConv2d`` is faster than PyTorch's ``1x1 + depth-wise + add``
    at every layer.
    """
    lean = [r for r in records if r["name"] == "lean (LeanConv2d)"]
    unfused = {r["channels"]: r["time_s"] for r in records if r["name"] == "1x1 + depth-wise + add (PyTorch)"}
    wide = [r["vs_1x1"] for r in lean if r["channels"] >= min_channels]
    return {
        "worst_vs_1x1": max(wide) if wide else None,
        "beats_unfused": all(r["time_s"] < unfused[r["channels"]] for r in lean),
    }


# The crossover between the two exact paths of an ACDC stack (effconv_ref.acdc): the fast
# DCT (O(N log N) per layer, 12 layers) against the stack multiplied out into one N x N
# matrix (one 1x1 convolution). The paper's model, 12 (4N + 5N log2 N) against N², puts it
# near N = 600; the GPU preset measures it at batch 64, 32 x 32, float32 and bf16.
ACDC_CROSSOVER = {
    "gpu": dict(batch=64, image_size=32, depth=12, dtypes=("float32", "bfloat16"),
                channels=[64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]),
    "cpu": dict(batch=2, image_size=16, depth=12, dtypes=("float32",),
                channels=[16, 64, 256]),
}
ACDC_CROSSOVER["gpu-quick"] = dict(ACDC_CROSSOVER["gpu"], channels=ACDC_CROSSOVER["gpu"]["channels"][:-2])


def acdc_crossover(preset: str = "cpu", device=None, progress: bool = False,
                   repeats=None) -> list[dict]:
    """Time an ``N -> N`` ACDC stack at every pixel (``ACDCConv2d(N, N, 1, depth=12)``) on
    each path, ``"dct"``, ``"dense"`` and ``"auto"``, beside a plain 1x1 ``nn.Conv2d`` of
    the same shape (cuDNN on a GPU; ``ratio`` is the time over it).

    Each record carries the paper's cost model of its path (``model_macs``: ``depth (4N +
    5N log2 N)`` per pixel for ``dct``, ``N²`` for ``dense``; ``auto`` takes the smaller)
    and the roofline floor of that work (input and output read and written once). bf16
    runs under ``torch.autocast`` with bf16 inputs: the dense path's GEMM runs in bf16,
    ``torch.fft`` has no bf16 and runs the DCT path in float32.
    """
    from effconv_ref.acdc import ACDCConv2d, choose_backend, stack_macs

    if preset not in ACDC_CROSSOVER:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(ACDC_CROSSOVER)}")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    p = ACDC_CROSSOVER[preset]
    batch, n, depth = p["batch"], p["image_size"], p["depth"]
    # each dtype's floor uses the peak of the math mode its convolutions run in
    peaks = {d: measure_peaks(device, math_mode=math_mode_of(device, getattr(torch, d), "conv"))
             for d in p["dtypes"]}
    cases = [(d, c) for d in p["dtypes"] for c in p["channels"]]
    records = []
    with torch.no_grad():
        for dtype_name, c in progress_bar(cases, disable=not progress, desc="ACDC crossover"):
            dtype = getattr(torch, dtype_name)
            size = torch.tensor([], dtype=dtype).element_size()

            def make_inputs():
                return (torch.randn(batch, c, n, n, device=device).to(dtype),)

            def autocast():
                return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

            conv1x1 = torch.nn.Conv2d(c, c, 1, bias=False).to(device)
            model = {"dct": stack_macs(c, depth), "dense": c * c}
            for path in ("dct", "dense", "auto"):
                op = ACDCConv2d(c, c, 1, depth=depth, backend=path).to(device)
                chosen = path if path != "auto" else choose_backend(c, depth)
                macs = batch * n * n * model[chosen]
                moved = size * 2 * batch * c * n * n + 4 * 2 * depth * c

                def run(x, op=op):
                    with autocast():
                        return op(x)

                def baseline(x):
                    with autocast():
                        return conv1x1(x)

                r = benchmark(path, run, make_inputs, flops=2 * macs, bytes=moved, peaks=peaks[dtype_name],
                              baseline=baseline, device=device, repeats=repeats, batch=batch,
                              channels=c, image_size=n, depth=depth, dtype=dtype_name,
                              path=chosen, model_macs=macs)
                records.append(r)
    return records


# Table 7 of Wang, Liu & Foroosh: the forward pass of the whole network at batch 128, model M
# against ResNet-34 and model L against VGG-16 (torchvision's, untrained), 224 x 224, in eval
# mode. The paper measured on a Titan X with cuDNN v5.1: 7.32x fewer FLOPs, 2.74x faster (M);
# 42x and 14x (L). The CPU preset keeps the pairs at a size a laptop times in seconds.
FACTORIZED_TABLE7 = {
    "gpu": dict(batch=128, image_size=224, dtypes=("float32", "bfloat16"),
                pairs=[("factorized/M", "resnet34"), ("factorized/L", "vgg16")]),
    "cpu": dict(batch=1, image_size=48, dtypes=("float32",),
                pairs=[("factorized/M", "resnet34"), ("factorized/L", "vgg16")]),
}
FACTORIZED_TABLE7["gpu-quick"] = dict(FACTORIZED_TABLE7["gpu"], batch=64)


def factorized_table7(preset: str = "cpu", device=None, progress: bool = False,
                      repeats=None) -> list[dict]:
    """Forward time of each of our networks against the network the paper compares it
    with (Table 7), same process, same inputs, both in eval mode without autograd.

    One record per pair and dtype: ``name`` (ours), ``baseline`` (the torchvision network),
    ``time_s`` and ``baseline_s``; ``speedup`` = ``baseline_s / time_s`` (the paper's
    "actual"), ``mac_ratio`` = baseline multiply-adds over ours (its "theoretical", both
    counted by :func:`~effconv_ref.cost.layer_macs` at this image size) and ``efficiency`` =
    ``speedup / mac_ratio`` (the paper's 2.74 / 7.32 = 37% for M). ``math_mode`` is that of
    the convolutions (float32 runs in TF32 on a recent GPU under PyTorch's defaults);
    bf16 runs under ``torch.autocast``. The floor is our network's: its multiply-adds at
    the batch, and the fewest bytes (inputs and output once, parameters once).
    """
    import torchvision

    from effconv_ref.cost import layer_macs
    from effconv_ref.models import build

    if preset not in FACTORIZED_TABLE7:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(FACTORIZED_TABLE7)}")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    p = FACTORIZED_TABLE7[preset]
    batch, n = p["batch"], p["image_size"]
    modes = {d: math_mode_of(device, getattr(torch, d), "conv") for d in p["dtypes"]}
    peaks = {d: measure_peaks(device, math_mode=modes[d]) for d in p["dtypes"]}
    cases = [(d, ours, theirs) for d in p["dtypes"] for ours, theirs in p["pairs"]]
    records = []
    with torch.no_grad():
        for dtype_name, ours, theirs in progress_bar(cases, disable=not progress, desc="Table 7"):
            dtype = getattr(torch, dtype_name)
            model = build(ours, num_classes=1000).to(device).eval()
            baseline = getattr(torchvision.models, theirs)(num_classes=1000).to(device).eval()
            with torch.device("meta"):  # counted on shapes alone
                macs = sum(r["macs"] for r in layer_macs(build(ours, num_classes=1000), (3, n, n)))
                baseline_macs = sum(r["macs"] for r in layer_macs(
                    getattr(torchvision.models, theirs)(num_classes=1000), (3, n, n)))
            params = sum(q.numel() for q in model.parameters())
            size = torch.tensor([], dtype=dtype).element_size()
            moved = size * batch * (3 * n * n + 1000) + 4 * params

            def make_inputs():
                return (torch.randn(batch, 3, n, n, device=device),)

            def autocast():
                return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

            def run(x, net=model):
                with autocast():
                    return net(x)

            def run_baseline(x, net=baseline):
                with autocast():
                    return net(x)

            r = benchmark(ours, run, make_inputs, flops=2 * batch * macs, bytes=moved,
                          peaks=peaks[dtype_name], math_mode=modes[dtype_name],
                          baseline=run_baseline, device=device, repeats=repeats,
                          batch=batch, image_size=n, dtype=dtype_name,
                          macs=macs, baseline_macs=baseline_macs, params=params,
                          baseline_params=sum(q.numel() for q in baseline.parameters()))
            r["baseline"] = theirs
            r["speedup"] = r["baseline_s"] / r["time_s"]
            r["mac_ratio"] = baseline_macs / macs
            r["efficiency"] = r["speedup"] / r["mac_ratio"]
            records.append(r)
    return records


# ----------------------------------------------------------------------------- training steps

# One training step of every registered network: forward, cross-entropy, backward and an SGD
# step, float32 (TF32 convolutions on a recent GPU, PyTorch's default) and bf16 under
# torch.autocast. Each network runs on the images of the data set it was built for
# (train_input). The gpu preset times every network at batch 128; gpu-quick leaves out the
# networks of the largest images (STL-10's 96x96, ImageNet's 224x224); the cpu preset times
# three small CIFAR networks (one with its ResNet) at batch 2, for the tests.
TRAIN_STEPS = {
    "gpu": dict(batch=128, dtypes=("float32", "bfloat16"), models=None, max_image_size=None),
    "gpu-quick": dict(batch=128, dtypes=("float32", "bfloat16"), models=None, max_image_size=32),
    "cpu": dict(batch=2, dtypes=("float32",), max_image_size=None,
                models=("resnet/resnet8", "lowcost/mobilenet-A", "lowcost/resnet-A")),
}


def train_input(name: str) -> tuple[int, int]:
    """``(image_size, num_classes)`` of the data set the registered network ``name`` was built
    for: 224x224 and 1000 classes for ``factorized/*`` (ImageNet, Table 7's size; they also run
    from 32x32), the data sets of Table 1 of Ephrath et al. for ``lean/*-<letter>`` (CIFAR-10,
    CIFAR-100 at 32x32, STL-10 at 96x96), and CIFAR-10's 32x32 and 10 classes for the rest.
    Every network takes 3 input channels."""
    from effconv_ref.models.lean import DATASETS

    family, net = name.split("/", 1)
    if family == "factorized":
        return 224, 1000
    letter = net.rsplit("-", 1)[-1]
    if family == "lean" and letter in DATASETS:
        dataset, classes = DATASETS[letter]
        return (96 if dataset == "STL-10" else 32), classes
    return 32, 10


def train_baseline(name: str) -> str | None:
    """The network of the same family whose training step ``name``'s is compared with:
    ``lean/resnet-X`` for ``lean/<net>-X`` and ``lowcost/resnet-X`` for ``lowcost/<step>-X``
    (the papers' ResNets of the same widths and steps), ``secl/wrn-40-2`` for its SECL
    versions, ``factorized/A`` (Table 1's standard 3x3 layers) for ``factorized/*``; ``None``
    where the family has no such network (``resnet/*``, ``lean/shufflenetv2-*``)."""
    from effconv_ref.models import list_models

    family, net = name.split("/", 1)
    base = {"factorized": "factorized/A", "secl": "secl/wrn-40-2"}.get(family)
    if family in ("lean", "lowcost"):
        base = f"{family}/resnet-{net.rsplit('-', 1)[-1]}"
    return base if base in list_models() else None


def _forward_macs(name: str, num_classes: int, image_size: int) -> tuple[int, str]:
    """Multiply-adds of one forward pass of network ``name`` on one image, and how they were
    counted: by :func:`~effconv_ref.cost.layer_macs` on a meta copy where every layer with
    weights is a convolution or a linear layer (as papers count), else by
    :func:`~effconv_ref.cost.count_cost` (``FlopCounterMode``, FFTs estimated) running the
    reference path of a CPU copy in eval mode."""
    from effconv_ref.cost import layer_macs
    from effconv_ref.models import build

    size = (3, image_size, image_size)
    try:
        with torch.device("meta"):
            return sum(r["macs"] for r in layer_macs(build(name, num_classes=num_classes), size)), "layer_macs"
    except TypeError:  # a layer layer_macs cannot count (lean, ACDC, FFT steps ...)
        pass
    model = build(name, num_classes=num_classes).eval()
    return count_cost(model, torch.randn(1, *size)).macs, "count_cost"


def _failed(error: BaseException, **case) -> dict:
    """The record of a case that could not be timed: what it was and why."""
    return {**case, "status": "failed", "error": f"{type(error).__name__}: {error}", "time_s": None}


def train_steps(preset: str = "cpu", device=None, progress: bool = False, repeats=None) -> list[dict]:
    """Time one training step of registered networks: ``zero_grad``, forward, cross-entropy on
    random labels, backward, ``torch.optim.SGD`` step; float32 and bf16 (``torch.autocast``,
    float32 weights and inputs), in train mode, 3 warm-up steps.

    Work counted for the floor: the forward multiply-adds of the network on one image
    (:func:`_forward_macs`) times the batch, times 3 for the step (the backward computes the
    gradients of the inputs and of the weights of every layer, each as costly as the
    forward), times 2 flops per multiply-add. Bytes: the float32 parameters 5 times (read by
    the forward, read again by the backward, gradients written, parameters and gradients read
    and parameters written by SGD: 5 passes over ``params``, ``4 * 5 * params``), plus the
    images and the labels once; activations are not counted, so the floor stays a floor.

    Each record: ``name`` (the model), ``dtype``, ``batch``, ``image_size``, ``num_classes``,
    ``time_s`` and the harness's floor, ``macs`` (forward, one image), ``counted_by``,
    ``params``, ``baseline`` (:func:`train_baseline`), ``baseline_s`` and ``vs_baseline``
    (= ``ratio``: the step time over the baseline's at the same dtype, timed in this run;
    ``None`` where it was not), ``status`` (``"ok"``, or ``"failed"`` with ``error``: one
    network that fails does not stop the sweep).
    """
    from effconv_ref.models import build, list_models

    if preset not in TRAIN_STEPS:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(TRAIN_STEPS)}")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    p = TRAIN_STEPS[preset]
    batch = p["batch"]
    names = [n for n in (p["models"] or list_models())
             if p["max_image_size"] is None or train_input(n)[0] <= p["max_image_size"]]
    modes = {d: math_mode_of(device, getattr(torch, d), "conv") for d in p["dtypes"]}
    peaks = {d: measure_peaks(device, math_mode=modes[d]) for d in p["dtypes"]}
    records = []
    for name in progress_bar(names, disable=not progress, desc="training steps"):
        size, classes = train_input(name)
        case = dict(name=name, batch=batch, image_size=size, num_classes=classes)
        try:
            macs, counted_by = _forward_macs(name, classes, size)
        except Exception as error:  # noqa: BLE001 (recorded, the sweep goes on)
            records += [_failed(error, dtype=d, **case) for d in p["dtypes"]]
            continue
        for dtype_name in p["dtypes"]:
            dtype = getattr(torch, dtype_name)
            try:
                torch.manual_seed(0)
                model = build(name, num_classes=classes).to(device).train()
                params = sum(q.numel() for q in model.parameters())
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

                def make_inputs():
                    return (torch.randn(batch, 3, size, size, device=device),
                            torch.randint(0, classes, (batch,), device=device))

                def step(x, y, model=model, optimizer=optimizer, dtype=dtype):
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()

                r = benchmark(name, step, make_inputs, flops=2 * 3 * batch * macs,
                              bytes=4 * 5 * params + 4 * batch * 3 * size * size + 8 * batch,
                              peaks=peaks[dtype_name], math_mode=modes[dtype_name], warmup=3,
                              device=device, repeats=repeats, dtype=dtype_name, batch=batch,
                              image_size=size, num_classes=classes, macs=macs,
                              counted_by=counted_by, params=params, status="ok")
            except Exception as error:  # noqa: BLE001 (recorded, the sweep goes on)
                r = _failed(error, dtype=dtype_name, **case)
            records.append(r)
            model = optimizer = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    times = {(r["name"], r["dtype"]): r["time_s"] for r in records if r["status"] == "ok"}
    for r in records:
        r["baseline"] = train_baseline(r["name"])
        r["baseline_s"] = times.get((r["baseline"], r["dtype"]))
        ok = r["status"] == "ok" and r["baseline_s"] is not None
        r["vs_baseline"] = r["ratio"] = r["time_s"] / r["baseline_s"] if ok else None
    return records


# ----------------------------------------------------------------------------- single layers

# The three cheap layers against cuDNN's 1x1 and 3x3 convolutions of the same width, each on
# every path it has. 56x56 at batch 64: the resolution of the first ResNet stage on ImageNet,
# where layers of 64-256 channels live, and large enough that every activation (51 MB at 64
# float32 channels, up to 411 MB at 512) overflows an H100's or H200's 50-60 MB L2 cache, so
# the memory-bound layers are measured against DRAM, as in a network. The cpu preset is tiny,
# for the tests; it also tries the Triton kernels when they run under Triton's interpreter.
TRITON_OPS = {
    "gpu": dict(batch=64, image_size=56, channels=[64, 128, 256, 512], dtypes=("float32", "bfloat16"),
                backends=("existing", "triton", "auto")),
    "gpu-quick": dict(batch=64, image_size=56, channels=[64, 128, 256], dtypes=("float32", "bfloat16"),
                      backends=("existing", "triton", "auto")),
    "cpu": dict(batch=1, image_size=8, channels=[8, 16], dtypes=("float32",), backends=("reference",)),
}
TRITON_OP_PASSES = ("forward", "forward+backward")
# what "existing" means for each layer: the path it had before the Triton kernels
EXISTING_PATH = {"lean": "cuda", "depth-wise": "reference", "SIC": "reference"}


def triton_ops_backends(preset: str) -> tuple:
    """The backends the :func:`triton_ops` sweep tries at ``preset``: the preset's, plus
    ``"triton"`` on the cpu preset when ``TRITON_INTERPRET=1`` (the kernels in Triton's
    interpreter)."""
    backends = tuple(TRITON_OPS[preset]["backends"])
    if preset == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and "triton" not in backends:
        backends += ("triton",)
    return backends


def _construct(cls, *args, backend: str):
    """``cls(*args, backend=backend)``; a layer with one path (no ``backend`` argument) is
    built without it when its reference path is asked for."""
    import inspect

    if backend == "reference" and "backend" not in inspect.signature(cls).parameters:
        return cls(*args)
    return cls(*args, backend=backend)


def _layers(c: int) -> dict:
    """The layers of :func:`triton_ops`, built for ``backend``: ``name -> build(backend)``."""
    from effconv_ref.sic import SICConv2d

    return {
        "lean": lambda b: _construct(LeanConv2d, c, c, backend=b),
        "depth-wise": lambda b: _construct(DepthwiseConv2d, c, 3, backend=b),
        "SIC": lambda b: _construct(SICConv2d, c, 3, backend=b),
    }


def _layer_cost(name: str, c: int, n: int, batch: int, size: int):
    """``(flops, bytes)`` of one forward pass: each layer's multiply-adds, and input, weights and
    output once (a fused single pass: SIC's intermediate is not counted)."""
    from effconv_ref.cost import conv2d_cost, depthwise_cost, lean_cost, pointwise_cost

    if name == "lean":
        cost = lean_cost(c, c, n, n, batch=batch, dtype_bytes=size)
    elif name == "depth-wise":
        cost = depthwise_cost(c, 3, n, n, batch=batch, dtype_bytes=size)
    elif name == "SIC":
        dw, pw = depthwise_cost(c, 3, n, n, batch=batch), pointwise_cost(c, c, n, n, batch=batch)
        return 2 * (dw.macs + pw.macs), size * (2 * batch * c * n * n + dw.params + pw.params)
    else:
        cost = conv2d_cost(c, c, 1 if name == "1x1 conv" else 3, n, n, batch=batch, dtype_bytes=size)
    return cost.flops, cost.bytes


def triton_ops(preset: str = "cpu", device=None, progress: bool = False, repeats=None,
               backends=None) -> list[dict]:
    """Time ``LeanConv2d(c, c)``, ``DepthwiseConv2d(c, 3)`` (direct) and ``SICConv2d(c, 3)`` on
    each of ``backends`` beside ``nn.Conv2d(c, c, 1)`` and ``nn.Conv2d(c, c, 3, padding=1)``
    (cuDNN on a GPU), forward (without autograd) and forward+backward (gradients of the input
    and of every weight), in one process on the same inputs.

    ``backends`` defaults to :func:`triton_ops_backends`; ``"existing"`` stands for each
    layer's path before the Triton kernels (:data:`EXISTING_PATH`: the CUDA kernel for lean,
    the reference for the others). float32 runs in PyTorch's default math mode (TF32
    convolutions on a recent GPU), bf16 with bf16 inputs and layers converted to bf16.

    Work for the floor: forward as :func:`_layer_cost`; forward+backward 3 times its flops
    (the input and weight gradients each cost a forward) and twice its bytes (the backward
    reads the gradient of the output and the input, writes the input's gradient).

    Each record: ``name`` (``"lean"``, ``"depth-wise"``, ``"SIC"``, ``"1x1 conv"``, ``"3x3
    conv"``), ``backend`` (as passed; ``"torch"`` for the convolutions), ``pass``, ``dtype``,
    ``channels``, ``image_size``, ``batch``, ``time_s``, the harness's floor, ``ratio_1x1`` and
    ``ratio_3x3`` (time over the convolution's of the same pass, dtype and width),
    ``achieved_bandwidth`` (bytes / time) and ``copy_fraction`` (that over the measured copy
    bandwidth at this size, the memory-bound layers' yardstick), ``vs_fastest`` for ``auto``
    (its time over the fastest other path's), and ``status``: ``"ok"``; ``"unavailable"``
    with ``error`` when the layer refuses the backend here (``ValueError`` or ``TypeError``
    when built or first called, :class:`~effconv_ref.kernels.KernelUnavailable`: a backend
    that does not exist yet, or cannot run on this machine); ``"failed"`` with ``error`` for
    any other exception (a bug, or out of memory).
    """
    from effconv_ref.kernels import KernelUnavailable

    if preset not in TRITON_OPS:
        raise ValueError(f"preset={preset!r}; choose one of {', '.join(TRITON_OPS)}")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    p = TRITON_OPS[preset]
    batch, n = p["batch"], p["image_size"]
    backends = tuple(triton_ops_backends(preset) if backends is None else backends)
    modes = {d: math_mode_of(device, getattr(torch, d), "conv") for d in p["dtypes"]}
    peaks = {d: measure_peaks(device, math_mode=modes[d]) for d in p["dtypes"]}
    unavailable = (ValueError, TypeError, NotImplementedError, KernelUnavailable)
    cases = [(d, c) for d in p["dtypes"] for c in p["channels"]]
    records = []
    for dtype_name, c in progress_bar(cases, disable=not progress, desc="layers"):
        dtype = getattr(torch, dtype_name)
        size = torch.tensor([], dtype=dtype).element_size()
        todo = [("1x1 conv", "torch", lambda _: torch.nn.Conv2d(c, c, 1, bias=False)),
                ("3x3 conv", "torch", lambda _: torch.nn.Conv2d(c, c, 3, padding=1, bias=False))]
        todo += [(name, backend, build) for name, build in _layers(c).items() for backend in backends]
        for name, backend, build in todo:
            path = EXISTING_PATH.get(name, backend) if backend == "existing" else backend
            for pass_ in TRITON_OP_PASSES:
                case = dict(name=name, backend=path, dtype=dtype_name, channels=c, image_size=n,
                            batch=batch, **{"pass": pass_})
                make_inputs = _layer_inputs(batch, c, n, dtype, device, pass_ == "forward+backward")
                try:
                    layer = build(path).to(device=device, dtype=dtype)
                    run = _layer_call(layer, pass_)
                    run(*make_inputs())  # the first call: compiles, autotunes, or refuses
                except unavailable as error:
                    records.append({**_failed(error, **case), "status": "unavailable"})
                    continue
                except Exception as error:  # noqa: BLE001 (recorded, the sweep goes on)
                    records.append(_failed(error, **case))
                    continue
                flops, moved = _layer_cost(name, c, n, batch, size)
                if pass_ == "forward+backward":
                    flops, moved = 3 * flops, 2 * moved
                try:
                    r = benchmark(name, run, _layer_inputs(batch, c, n, dtype, device,
                                                           pass_ == "forward+backward"),
                                  flops=flops, bytes=moved, peaks=peaks[dtype_name],
                                  math_mode=modes[dtype_name], device=device, repeats=repeats,
                                  **{k: v for k, v in case.items() if k != "name"}, status="ok")
                except Exception as error:  # noqa: BLE001
                    records.append(_failed(error, **case))
                    continue
                r["achieved_bandwidth"] = moved / r["time_s"]
                r["copy_fraction"] = r["achieved_bandwidth"] / r["bandwidth"]
                records.append(r)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    _layer_ratios(records)
    return records


def _layer_inputs(batch, c, n, dtype, device, backward: bool):
    """Inputs for :func:`benchmark`: the ``k``-th call makes the ``k``-th input set from seed
    ``k``, so that every layer is timed on the same inputs; with ``backward`` the input
    requires its gradient and the gradient of the output comes along."""
    calls = iter(range(1 << 30))

    def make_inputs():
        g = torch.Generator(device=device).manual_seed(next(calls))
        x = torch.randn(batch, c, n, n, device=device, generator=g).to(dtype)
        if not backward:
            return (x,)
        return (x.requires_grad_(), torch.randn(batch, c, n, n, device=device, generator=g).to(dtype))

    return make_inputs


def _layer_call(layer, pass_: str):
    """What one timed call does: the forward without autograd, or the forward and the
    gradients of the input and of every weight."""
    weights = [w for w in layer.parameters() if w.requires_grad]
    if pass_ == "forward":
        def run(x):
            with torch.no_grad():
                return layer(x)
    else:
        def run(x, grad):
            return torch.autograd.grad(layer(x), [x, *weights], grad)
    return run


def _layer_ratios(records: list[dict]) -> None:
    """Fill in ``ratio_1x1``, ``ratio_3x3`` and (for ``auto``) ``vs_fastest``."""
    ok = [r for r in records if r["status"] == "ok"]

    def key(r):
        return r["pass"], r["dtype"], r["channels"]

    conv = {(r["name"], *key(r)): r["time_s"] for r in ok if r["name"].endswith(" conv")}
    for r in records:
        for k in ("1x1", "3x3"):
            base = conv.get((f"{k} conv", *key(r)))
            r[f"ratio_{k}"] = r["time_s"] / base if r["status"] == "ok" and base else None
        others = [o["time_s"] for o in ok if o["name"] == r["name"] and key(o) == key(r)
                  and o["backend"] != "auto"]
        r["vs_fastest"] = (r["time_s"] / min(others) if r["backend"] == "auto" and r["status"] == "ok"
                           and others else None)


SWEEPS = {"lowcost-figure1": lowcost_figure1, "lowcost-steps": lowcost_steps, "lean-figure1": lean_figure1,
          "acdc-crossover": acdc_crossover, "factorized-table7": factorized_table7,
          "train-steps": train_steps, "triton-ops": triton_ops}
# the presets of each sweep (``gpu``, ``gpu-quick``, ``cpu``; the tests add their own)
SWEEP_PRESETS = {"lowcost-figure1": PRESETS, "lowcost-steps": PRESETS, "lean-figure1": LEAN_LAYERS,
                 "acdc-crossover": ACDC_CROSSOVER, "factorized-table7": FACTORIZED_TABLE7,
                 "train-steps": TRAIN_STEPS, "triton-ops": TRITON_OPS}


def default_path(sweep: str, device: str) -> Path:
    """``data/bench/<sweep>_<device>.json``, the device name made a file name."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return Path("data") / "bench" / f"{sweep}_{slug}.json"


PROG = "python -m effconv_ref.sweeps"


def _refuse(message: str):
    """End the command with one line on stderr and exit status 2, as argparse does."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_out(out: str | Path) -> Path:
    """``out`` as a :class:`Path`, once it is known that a results file can be written there.

    Raises :class:`ValueError` for an empty path, an existing folder, or a place where no
    file can be written (a path under a regular file, a read-only or missing mount): the
    folder is created and a temporary file written and removed in it to find out.
    """
    if str(out).strip() == "":
        raise ValueError("--out is empty; give a JSON file name, e.g. --out results.json")
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; give a JSON file name in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".probe-"):
            pass
    except OSError as error:
        raise ValueError(
            f"--out {str(out)!r}: cannot write in {str(path.parent)!r} "
            f"({error.strerror or error})"
        ) from None
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help=f"one of {', '.join(SWEEPS)}")
    parser.add_argument("--preset", default=None,
                        help="gpu, gpu-quick (without the largest sizes) or cpu (default: gpu when a GPU is present)")
    parser.add_argument("--out", default=None, help="JSON file (default: data/bench/<sweep>_<device>.json)")
    parser.add_argument("--force", action="store_true",
                        help="run the gpu preset even where there is no GPU (slow)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.sweep not in SWEEPS:
        parser.error(f"unknown sweep {args.sweep!r}; choose one of {', '.join(SWEEPS)}")
    gpu = torch.cuda.is_available()
    preset = args.preset or ("gpu" if gpu else "cpu")
    presets = SWEEP_PRESETS[args.sweep]
    if preset not in presets:
        parser.error(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    if preset.startswith("gpu") and not gpu and not args.force:
        _refuse(f"--preset {preset} sizes the sweep for a GPU, and this machine has none: it would "
                "run for hours on the CPU; use --preset cpu, or add --force to run it anyway")
    device = torch.device("cuda" if gpu else "cpu")
    try:
        out = check_out(args.out if args.out is not None else default_path(args.sweep, device_name(device)))
    except ValueError as error:
        _refuse(str(error))
    if preset.startswith("gpu") and not gpu:
        print(f"--force: running the {preset} preset on the CPU ({device_name(device)})", file=sys.stderr)
    records = SWEEPS[args.sweep](preset, progress=not args.no_progress)
    write_results(out, records, meta={"sweep": args.sweep, "preset": preset})
    print(f"{len(records)} records written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

