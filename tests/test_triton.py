"""The Triton kernels (``backend="triton"``) against the reference paths.

On a machine without a GPU they run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py before anything imports them); on a GPU, compiled (``make gpu`` runs this file there).

- Fuzz: random odd and non-square shapes, batch 1 and 2, in != out both ways, stride 2, every
  dtype, every config, forward and backward, against a float64 reference. Every input is a
  non-contiguous view into a buffer of NaN (NCHW-like or channels_last-like), so a read outside
  the image, or of the wrong element, shows up as NaN or as an error.
- ``gradcheck`` of each registered operator in float64.
- ``torch.compile(fullgraph=True)`` captures the operators in one graph (on fake CUDA tensors, no
  GPU needed) and, on a GPU, runs them forward and backward (PyTorch cannot trace the
  interpreter's kernels).
- Compile tests: every kernel and config for sm_80 and sm_90 (``mma``/``wgmma`` in the PTX where
  the kernel has a ``tl.dot``, shared memory within the GPU's limit), and what sm_75 gets.
- Mutation check: the fuzz fails on the lean kernel with a broken mask and with a shifted tap.
"""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effconv_ref import LeanConv2d
from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.kernels.triton_build import interpreting, load_triton, use_config
from effconv_ref.ops.depthwise_conv import depthwise_conv2d_triton
from effconv_ref.ops.intra_pointwise import intra_pointwise_triton
from effconv_ref.ops.lean_conv import lean_conv2d_reference, lean_conv2d_triton
from effconv_ref.sic import SICConv2d, UnravelledConv2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not interpreting(),
    reason="without a GPU the Triton kernels run only under TRITON_INTERPRET=1 (conftest.py sets it)",
)

# ‖out − ref‖ / ‖ref‖ allowed per dtype: float32 exact (the interpreter, or a GPU with TF32 off),
# TF32 (a GPU under PyTorch's default for convolutions: 10-bit mantissa operands), half types
# (operands rounded to 11 or 8 bits, float accumulation).
TOLERANCE = {"float32": 1e-5, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 3e-2}
MODES = ["float32", "float32 channels_last", "float16", "bfloat16"]


def tolerance(dtype: torch.dtype) -> float:
    name = str(dtype).removeprefix("torch.")
    if name == "float32" and DEVICE == "cuda" and torch.backends.cudnn.allow_tf32:
        return TOLERANCE["tf32"]
    return TOLERANCE[name]


def guarded(values: torch.Tensor, layout: str) -> torch.Tensor:
    """``values`` ``(B, C, H, W)`` as a non-contiguous view into a NaN buffer one pixel and one channel
    larger on every side, laid out NCHW (``"nchw"``) or channels_last (``"channels_last"``)."""
    B, C, H, W = values.shape
    if layout == "channels_last":
        buffer = torch.full((B, H + 2, W + 3, C + 2), float("nan"), dtype=values.dtype, device=DEVICE)
        view = buffer[:, 1:H + 1, 1:W + 1, 1:C + 1].permute(0, 3, 1, 2)
    else:
        buffer = torch.full((B, C + 2, H + 2, W + 3), float("nan"), dtype=values.dtype, device=DEVICE)
        view = buffer[:, 1:C + 1, 1:H + 1, 1:W + 1]
    view.copy_(values)
    return view


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(out, ref, dtype, what):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    error = relative_error(out, ref)
    assert error <= tolerance(dtype), f"{what}: relative error {error:.2e} > {tolerance(dtype):.0e}"


def compare(run, inputs: list, dtype: torch.dtype, layout: str, seed: int, what: str):
    """Run ``run(*inputs)`` in ``dtype`` on the device (the first input a guarded view) and in float64
    on the CPU from the same rounded values; compare the outputs and every input's gradient."""
    rounded = [t.to(dtype).double() for t in inputs]
    reference = [t.clone().requires_grad_() for t in rounded]
    ref = run(*reference)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref.backward(g)
    first = guarded(rounded[0].to(dtype).to(DEVICE), layout).requires_grad_()
    rest = [t.to(dtype).to(DEVICE).requires_grad_() for t in rounded[1:]]
    out = run(first, *rest)
    out.backward(g.to(dtype).to(DEVICE))
    assert_close(out, ref, dtype, f"{what}: forward")
    for name, mine, theirs in zip(["x", *[f"parameter {i}" for i in range(1, len(inputs))]], [first, *rest], reference):
        assert_close(mine.grad, theirs.grad, dtype, f"{what}: gradient of {name}")


def cases(seed: int, count: int, shape_of):
    """``count`` random cases ``shape_of(rng)``, the same on every run."""
    rng = random.Random(seed)
    return [shape_of(rng) for _ in range(count)]


def odd(rng, low, high):
    return rng.randrange(low | 1, high + 1, 2)


# ---- the lean convolution ---------------------------------------------------------------------

def lean_shape(rng):
    cin, cout = rng.choice([(rng.randint(3, 12), rng.randint(33, 45)), (rng.randint(33, 45), rng.randint(3, 12))])
    return dict(batch=rng.choice([1, 2]), cin=cin, cout=cout, height=odd(rng, 3, 9), width=rng.randint(4, 11),
                stride=rng.choice([1, 2]), bias=rng.random() < 0.5)


LEAN_CASES = cases(17, 2, lean_shape)


def lean_inputs(case, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case["batch"], case["cin"], case["height"], case["width"], generator=g)
    pointwise = torch.randn(case["cout"], case["cin"], 1, 1, generator=g) / case["cin"] ** 0.5
    stencil = torch.randn(min(case["cin"], case["cout"]), 4, generator=g)
    inputs = [x, pointwise, stencil] + ([torch.randn(case["cout"], generator=g)] if case["bias"] else [])
    return inputs


def lean_triton(x, pointwise, stencil, bias=None, *, stride):
    return lean_conv2d_triton(x, pointwise, stencil, bias, stride)


def lean_reference(x, pointwise, stencil, bias=None, *, stride):
    return lean_conv2d_reference(x, pointwise, stencil, bias, stride)


def lean_op(stride):
    def run(*inputs):
        return (lean_triton if inputs[0].dtype != torch.float64 else lean_reference)(*inputs, stride=stride)
    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", range(len(load_triton("lean_triton").CONFIGS)))
@pytest.mark.parametrize("case", LEAN_CASES, ids=lambda c: "{batch}x{cin}->{cout}x{height}x{width}/s{stride}".format(**c))
def test_lean_kernel_fuzz(case, config, mode):
    dtype, _, layout = mode.partition(" ")
    with use_config(config):
        compare(lean_op(case["stride"]), lean_inputs(case, seed=config), getattr(torch, dtype), layout or "nchw",
                seed=config, what=f"lean {case} config {config} {mode}")


# ---- the depth-wise convolution ---------------------------------------------------------------

def depthwise_shape(rng):
    k = rng.choice([3, 5])
    return dict(batch=rng.choice([1, 2]), channels=rng.randint(3, 7), mult=rng.choice([1, 2]), k=k,
                height=odd(rng, k, 9), width=rng.randint(k, 10), stride=rng.choice([1, 2]),
                periodic=rng.random() < 0.5)


DEPTHWISE_CASES = cases(23, 2, depthwise_shape) + [dict(batch=1, channels=4, mult=1, k=3, height=7, width=6,
                                                        stride=2, periodic=True)]


def depthwise_op(case):
    def run(x, weight):
        if x.dtype == torch.float64:  # the reference: F.conv2d (circular padding when periodic)
            r = case["k"] // 2
            if case["periodic"]:
                x = torch.nn.functional.pad(x, (r, r, r, r), mode="circular")
            return torch.nn.functional.conv2d(x, weight, stride=case["stride"], groups=case["channels"],
                                              padding=0 if case["periodic"] else r)
        return depthwise_conv2d_triton(x, weight, case["stride"], case["periodic"])
    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", range(len(load_triton("depthwise_triton").CONFIGS)))
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: "{channels}x{mult}k{k}_{height}x{width}/s{stride}{periodic}".format(**c))
def test_depthwise_kernel_fuzz(case, config, mode):
    dtype, _, layout = mode.partition(" ")
    g = torch.Generator().manual_seed(config)
    x = torch.randn(case["batch"], case["channels"], case["height"], case["width"], generator=g)
    weight = torch.randn(case["channels"] * case["mult"], 1, case["k"], case["k"], generator=g)
    with use_config(config):
        compare(depthwise_op(case), [x, weight], getattr(torch, dtype), layout or "nchw", seed=config,
                what=f"depthwise {case} config {config} {mode}")


# ---- the unravelled / SIC convolution ---------------------------------------------------------

def sic_shape(rng):
    c = rng.randint(3, 20)
    residual = rng.random() < 0.5
    return dict(batch=rng.choice([1, 2]), c=c, n=c if residual else rng.randint(3, 40), bases=rng.choice([1, 2]),
                k=rng.choice([1, 3]), height=odd(rng, 3, 9), width=rng.randint(4, 10), residual=residual,
                bias=rng.random() < 0.5)


SIC_CASES = cases(29, 2, sic_shape) + [dict(batch=1, c=36, n=36, bases=1, k=3, height=5, width=6, residual=True,
                                            bias=False)]


def sic_op(case):
    def run(x, basis, proj, bias=None):
        if x.dtype == torch.float64:  # the reference: eq. (4) then eq. (5), two convolutions
            J = torch.nn.functional.conv2d(x, basis, padding=case["k"] // 2, groups=case["c"])
            y = torch.nn.functional.conv2d(J, proj, bias)
            return y + x if case["residual"] else y
        return intra_pointwise_triton(x, basis, proj, bias, case["residual"])
    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", range(len(load_triton("sic_triton").CONFIGS)))
@pytest.mark.parametrize("case", SIC_CASES, ids=lambda c: "{c}x{bases}->{n}k{k}_{height}x{width}r{residual}".format(**c))
def test_intra_pointwise_kernel_fuzz(case, config, mode):
    dtype, _, layout = mode.partition(" ")
    g = torch.Generator().manual_seed(config)
    c, b, n, k = case["c"], case["bases"], case["n"], case["k"]
    inputs = [torch.randn(case["batch"], c, case["height"], case["width"], generator=g),
              torch.randn(c * b, 1, k, k, generator=g) / k,
              torch.randn(n, c * b, 1, 1, generator=g) / (c * b) ** 0.5]
    if case["bias"]:
        inputs.append(torch.randn(n, generator=g))
    with use_config(config):
        compare(sic_op(case), inputs, getattr(torch, dtype), layout or "nchw", seed=config,
                what=f"intra_pointwise {case} config {config} {mode}")


# ---- the modules, gradcheck, torch.compile ----------------------------------------------------

MODULES = {
    "LeanConv2d": lambda backend: LeanConv2d(7, 5, stride=2, bias=True, backend=backend),
    "DepthwiseConv2d": lambda backend: DepthwiseConv2d(5, 3, stride=2, backend=backend),
    "DepthwiseConv2d periodic": lambda backend: DepthwiseConv2d(5, 3, boundary="periodic", backend=backend),
    "SICConv2d": lambda backend: SICConv2d(5, 3, backend=backend),
    "UnravelledConv2d": lambda backend: UnravelledConv2d(5, 6, 3, 2, bias=True, backend=backend),
}


@pytest.mark.parametrize("name", MODULES)
def test_module_with_the_triton_backend_equals_the_reference(name):
    torch.manual_seed(3)
    reference = MODULES[name]("reference")
    fast = MODULES[name]("triton").to(DEVICE)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5 if name != "LeanConv2d" else 7, 7, 6)
    assert_close(fast(x.to(DEVICE)), reference(x).double(), torch.float32, name)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = fast(x.to(DEVICE))
    assert y.dtype == torch.bfloat16  # as autocast makes nn.Conv2d compute
    assert_close(y, reference(x).double(), torch.bfloat16, f"{name} under autocast")


def test_gradcheck_of_the_triton_operators():
    g = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()

    for stride in (1, 2):
        assert torch.autograd.gradcheck(lambda *t: lean_conv2d_triton(*t, stride), (
            rand(1, 4, 5, 4), rand(3, 4, 1, 1), rand(3, 4), rand(3)), fast_mode=True)
        for periodic in (False, True):
            assert torch.autograd.gradcheck(lambda *t: depthwise_conv2d_triton(*t, stride, periodic), (
                rand(1, 2, 5, 4), rand(4, 1, 3, 3)), fast_mode=True)
    for residual, bases in ((True, 1), (False, 2)):
        n = 3 if residual else 4
        assert torch.autograd.gradcheck(lambda *t: intra_pointwise_triton(*t, residual), (
            rand(1, 3, 4, 5), rand(3 * bases, 1, 3, 3), rand(n, 3 * bases, 1, 1), rand(n)), fast_mode=True)


def test_the_operators_are_registered_with_torch_library():
    for name in ("lean_conv2d", "depthwise_conv2d", "intra_pointwise"):
        assert hasattr(torch.ops.effconv, name), name


TRACE_ON_FAKE_CUDA = """
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from effconv_ref import LeanConv2d
from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.sic import SICConv2d

graphs = []
def capture(gm, inputs):
    graphs.append(gm)
    return gm

model = torch.nn.Sequential(LeanConv2d(6, 6, stride=2, backend="triton"),
                            DepthwiseConv2d(6, 3, backend="triton"), SICConv2d(6, 3, backend="triton"))
compiled = torch.compile(model, backend=capture, fullgraph=True)
with FakeTensorMode(allow_non_fake_inputs=True):
    model.to("cuda")
    y = compiled(torch.empty(2, 6, 9, 7, device="cuda"))
print(tuple(y.shape), y.device)
print(*[n.target for g in graphs for n in g.graph.nodes if "effconv" in str(n.target)])
"""


def test_dynamo_traces_the_operators_in_one_graph_on_fake_cuda_tensors():
    """Without a GPU: torch.compile(fullgraph=True) captures a model of the three operators in one
    graph, each operator one node, on fake CUDA tensors; their fake implementations run the operator
    bodies, launches included (wrap_triton), on shapes alone. Compiled kernels are needed, so this
    runs in a process without the interpreter."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", TRACE_ON_FAKE_CUDA], capture_output=True, text=True,
                            env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shape, nodes = result.stdout.strip().splitlines()[-2:]
    assert shape == "(2, 6, 5, 4) cuda:0"
    assert nodes.split() == ["effconv.lean_conv2d.default", "effconv.depthwise_conv2d.default",
                             "effconv.intra_pointwise.default"]


@pytest.mark.skipif(DEVICE == "cpu", reason="torch.compile traces a Triton kernel through its compiled "
                    "JITFunction; the interpreter's kernels cannot be traced, so this runs on a GPU (make gpu)")
def test_torch_compile_traces_through_the_triton_operators():
    torch.manual_seed(4)
    model = torch.nn.Sequential(LeanConv2d(6, 6, backend="triton"), DepthwiseConv2d(6, 3, backend="triton"),
                                SICConv2d(6, 3, backend="triton")).to(DEVICE)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break
    x = torch.randn(1, 6, 5, 7, device=DEVICE, requires_grad=True)
    y = compiled(x)
    y.square().sum().backward()
    eager_x = x.detach().clone().requires_grad_()
    expected = model(eager_x)
    expected.square().sum().backward()
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(x.grad, eager_x.grad)


def test_errors_name_the_argument_and_the_rule(monkeypatch):
    with pytest.raises(TypeError, match="backend='triton' supports float32, float16 and bfloat16"):
        LeanConv2d(3, 3, backend="triton").double()(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="backend='triton' supports float32"):
        DepthwiseConv2d(3, 3, backend="triton").double()(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="backend='triton' runs method='direct'"):
        DepthwiseConv2d(3, 3, boundary="periodic", method="fft", backend="triton")
    with pytest.raises(ValueError, match="method='fft' computes stride 1 only"):
        DepthwiseConv2d(3, 3, stride=2, boundary="periodic", method="fft")
    with pytest.raises(ValueError, match="a TpS projection"):
        SICConv2d(4, 3, grid=(2, 2), neighborhood=(1, 2), backend="triton")
    with pytest.raises(ValueError, match="backend='cuda' is not a backend; choose one of auto, reference, triton"):
        SICConv2d(4, 3, backend="cuda")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="backend='triton' cannot run: the input is on cpu"):
            LeanConv2d(3, 3, backend="triton")(torch.randn(1, 3, 4, 4))


def test_auto_takes_the_reference_on_the_cpu():
    from effconv_ref.backend import resolve_backend

    x = torch.randn(1, 3, 4, 4)
    assert resolve_backend("auto", x, ("auto", "reference", "cuda", "triton")) == "reference"


# ---- compile tests: what each GPU gets ----------------------------------------------------------

def compile_rows(*args) -> list:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "effconv_ref.kernels.triton_targets", "--json", *args],
                            capture_output=True, text=True, env=environment, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ampere_and_hopper():
    return compile_rows("--sm", "80", "--sm", "90")


def test_every_kernel_and_config_compiles_for_sm80_and_sm90(ampere_and_hopper):
    rows = ampere_and_hopper
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"lean", "depthwise", "intra_pointwise"}
    for name, module in (("lean", "lean_triton"), ("depthwise", "depthwise_triton"), ("intra_pointwise", "sic_triton")):
        configs = {r["config"] for r in rows if r["kernel"] == name}
        assert configs == set(range(len(load_triton(module).CONFIGS))), name
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16", "float16"}


def test_the_channel_sums_run_on_tensor_cores(ampere_and_hopper):
    for r in ampere_and_hopper:
        expected = {80: "mma", 90: "wgmma"}[r["sm"]] if r["kernel"] != "depthwise" else "fma"
        assert r["instruction"] == expected, r


def test_shared_memory_within_each_gpu(ampere_and_hopper):
    for r in ampere_and_hopper:
        assert 0 <= r["shared"] <= r["shared_limit"], r


def test_what_a_t4_gets():
    """Triton 3.8 compiles tl.dot to FP32 FMAs on sm_75 even for half types: no tensor cores on a
    T4 through Triton, which is why "auto" takes the CUDA kernel there (effconv_ref.backend)."""
    rows = compile_rows("--sm", "75", "--config", "0")
    assert {r["instruction"] for r in rows} == {"fma"}
    assert all(r["shared"] <= r["shared_limit"] for r in rows)


# ---- the mutation check: the fuzz catches a broken kernel ------------------------------------------

MUTATIONS = {
    "broken mask": ("(hh < H)", "(hh < H + 1)"),  # the down tap reads the row below the image
    "shifted tap": ("sxc, sxh, sxw, 3, 1, 0, ACC)", "sxc, sxh, sxw, 3, 1, 1, ACC)"),  # down -> down-right
}


def mutant(tmp_path, original: str, changed: str):
    source = Path(load_triton("lean_triton").__file__).read_text()
    assert source.count(original) == 1, f"the mutation site {original!r} must occur once"
    path = tmp_path / f"lean_mutant_{abs(hash(changed))}.py"
    path.write_text(source.replace(original, changed))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lean_forward_fuzz(module):
    """The fuzz's forward check of ``module.lean_forward`` on one case per stride."""
    for stride in (1, 2):
        case = dict(LEAN_CASES[0], stride=stride, bias=False)
        x, pointwise, stencil = lean_inputs(case, seed=stride)
        out = module.lean_forward(guarded(x.to(DEVICE), "nchw"), pointwise.reshape(case["cout"], -1).to(DEVICE),
                                  stencil.to(DEVICE), None, stride)
        assert_close(out, lean_reference(x.double(), pointwise.double(), stencil.double(), stride=stride),
                     torch.float32, f"lean_forward stride {stride}")


def test_the_fuzz_passes_the_kernel_as_it_is(tmp_path):
    site = MUTATIONS["broken mask"][0]
    lean_forward_fuzz(mutant(tmp_path, site, site))  # the same loading, nothing changed


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_fuzz_fails_on_a_mutated_kernel(mutation, tmp_path):
    with pytest.raises(AssertionError, match="relative error (nan|[0-9.e+-]+) >"):
        lean_forward_fuzz(mutant(tmp_path, *MUTATIONS[mutation]))


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's rule, for a machine without a GPU")
def test_setting_the_interpreter_too_late_is_a_clear_error():
    script = ("import os, torch, effconv_ref\n"
              "os.environ['TRITON_INTERPRET'] = '1'\n"
              "effconv_ref.LeanConv2d(3, 3, backend='triton')(torch.randn(1, 3, 4, 4))\n")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode != 0
    assert "ValueError: backend='triton' cannot run: TRITON_INTERPRET=1 was set after Triton was imported" \
        in result.stderr
