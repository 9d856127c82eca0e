"""The papers' speed figures as benchmark sweeps, shared by the chapters and the command line.

``python -m effconv_ref.sweeps lowcost-figure1 --preset gpu`` runs the sweep of Figure 1 of
Treister et al. and writes JSON under ``data/bench/``; the chapter plots what it finds there.
Every record carries the time, the roofline floor beside it (flops counted by
:func:`effconv_ref.cost.count_cost`, the fewest bytes: inputs, weights and output once) and
the time of the fully coupled ``nn.Conv2d`` (cuDNN on a GPU) run in the same process on the
same inputs.

The command checks its arguments before any work: ``--out`` must be a file it can write
(probed by creating its folder and a temporary file there), and the ``gpu`` preset on a
machine without a GPU is refused unless ``--force`` is given. Every sweep shows a progress
bar (``--no-progress`` hides it).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

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



SWEEPS = {"lowcost-figure1": lowcost_figure1, "lowcost-steps": lowcost_steps, "lean-figure1": lean_figure1,
          "acdc-crossover": acdc_crossover, "factorized-table7": factorized_table7}


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
    parser.add_argument("--preset", default=None, help="gpu or cpu (default: gpu when a GPU is present)")
    parser.add_argument("--out", default=None, help="JSON file (default: data/bench/<sweep>_<device>.json)")
    parser.add_argument("--force", action="store_true",
                        help="run the gpu preset even where there is no GPU (slow)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.sweep not in SWEEPS:
        parser.error(f"unknown sweep {args.sweep!r}; choose one of {', '.join(SWEEPS)}")
    gpu = torch.cuda.is_available()
    preset = args.preset or ("gpu" if gpu else "cpu")
    presets = LEAN_LAYERS if args.sweep == "lean-figure1" else PRESETS
    if preset not in presets:
        parser.error(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    if preset == "gpu" and not gpu and not args.force:
        _refuse("--preset gpu sizes the sweep for a GPU, and this machine has none: it would "
                "run for hours on the CPU; use --preset cpu, or add --force to run it anyway")
    device = torch.device("cuda" if gpu else "cpu")
    try:
        out = check_out(args.out if args.out is not None else default_path(args.sweep, device_name(device)))
    except ValueError as error:
        _refuse(str(error))
    if preset == "gpu" and not gpu:
        print(f"--force: running the gpu preset on the CPU ({device_name(device)})", file=sys.stderr)
    records = SWEEPS[args.sweep](preset, progress=not args.no_progress)
    write_results(out, records, meta={"sweep": args.sweep, "preset": preset})
    print(f"{len(records)} records written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

