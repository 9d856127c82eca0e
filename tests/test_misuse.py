"""Every operator and step against the inputs a user gets wrong or a path does not expect: empty
batches, empty images, half precision, mixed dtypes, autocast, bad time steps and backends,
non-finite input, TorchScript, and the model registry's names and class counts.

Each operator path is one entry of ``PATHS``; the README's table "What each operator supports"
states what these tests assert.
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from effconv_ref import (
    CirculantConv2d,
    CirculantRDStep,
    DepthwiseConv2d,
    ExplicitRDStep,
    ImplicitRDStep,
    LeanConv2d,
    LinearMix,
    LinearMixStep,
    MobileNetStep,
    ResNetStep,
    models,
)
from effconv_ref.ops import implicit_solve
from effconv_ref.sic import SICConv2d, TpSConv2d, UnravelledConv2d
from effconv_ref.steps import MAX_H

C, H, W = 4, 6, 5  # odd, non-square

# name -> (module factory, output channels, stride)
PATHS = {
    "depthwise direct zeros": (lambda: DepthwiseConv2d(C, 3), C, 1),
    "depthwise direct periodic": (lambda: DepthwiseConv2d(C, 3, boundary="periodic"), C, 1),
    "depthwise fft": (lambda: DepthwiseConv2d(C, 3, boundary="periodic", method="fft"), C, 1),
    "circulant": (lambda: CirculantConv2d(C, 3), C, 1),
    "linearmix zeros": (lambda: LinearMix(C, 3), C, 1),
    "linearmix periodic": (lambda: LinearMix(C, 3, boundary="periodic"), C, 1),
    "lean": (lambda: LeanConv2d(C, C), C, 1),
    "lean 4->6 stride 2 bias": (lambda: LeanConv2d(C, 6, stride=2, bias=True), 6, 2),
    "unravelled 4->6 b=2 bias": (lambda: UnravelledConv2d(C, 6, 3, 2, bias=True), 6, 1),
    "sic": (lambda: SICConv2d(C, 3), C, 1),
    "sic 4->6 5x5": (lambda: SICConv2d(C, 5, out_channels=6), 6, 1),
    "sic tps projection": (lambda: SICConv2d(C, 3, grid=(2, 2), neighborhood=(2, 1)), C, 1),
    "tps reference": (lambda: TpSConv2d(C, 3, (2, 2), (1, 2), bias=True, backend="reference"), C, 1),
    "tps gather": (lambda: TpSConv2d(C, 3, (2, 2), (1, 2), bias=True, backend="gather"), C, 1),
    "ResNetStep": (lambda: ResNetStep(C), C, 1),
    "MobileNetStep": (lambda: MobileNetStep(C), C, 1),
    "LinearMixStep": (lambda: LinearMixStep(C), C, 1),
    "ExplicitRDStep": (lambda: ExplicitRDStep(C), C, 1),
    "ImplicitRDStep": (lambda: ImplicitRDStep(C), C, 1),
    "CirculantRDStep": (lambda: CirculantRDStep(C), C, 1),
}
FFT_PATHS = ["depthwise fft", "circulant", "ImplicitRDStep", "CirculantRDStep"]
# the operators with an adjoint, by path
ADJOINTS = ["depthwise direct zeros", "depthwise direct periodic", "depthwise fft", "circulant",
            "linearmix zeros", "linearmix periodic"]
STEPS = [ResNetStep, MobileNetStep, LinearMixStep, ExplicitRDStep, ImplicitRDStep, CirculantRDStep]
OPERATORS = [DepthwiseConv2d, CirculantConv2d, LinearMix, LeanConv2d, UnravelledConv2d, SICConv2d, TpSConv2d]


def make(name, dtype=torch.float32):
    factory, out_channels, stride = PATHS[name]
    torch.manual_seed(0)
    return factory().to(dtype).eval(), out_channels, stride


def x_of(batch=2, dtype=torch.float32, height=H, width=W, seed=1):
    return torch.randn(batch, C, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def out_shape(batch, out_channels, stride):
    return (batch, out_channels, -(-H // stride), -(-W // stride))


# ---------------------------------------------------------------------------- empty batches and images

@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", PATHS)
def test_an_empty_batch_gives_an_empty_batch_and_backpropagates(name, train):
    m, out_channels, stride = make(name)
    m.train(train)
    x = x_of(batch=0).requires_grad_()
    y = m(x)
    assert y.shape == out_shape(0, out_channels, stride) and y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in m.parameters():
        assert p.grad is None or not p.grad.any()


@pytest.mark.parametrize("name", ADJOINTS)
def test_an_empty_batch_through_the_adjoint(name):
    m, _, _ = make(name)
    assert m.adjoint(x_of(batch=0)).shape == (0, C, H, W)


def test_implicit_solve_of_an_empty_batch_stays_in_the_graph_of_h():
    w = torch.randn(C, 1, 3, 3, requires_grad=True)
    h = torch.tensor(0.3, requires_grad=True)
    z = implicit_solve(x_of(batch=0), w, h)
    assert z.shape == (0, C, H, W)
    gw, gh = torch.autograd.grad(z.sum(), (w, h))
    assert not gw.any() and gh == 0


@pytest.mark.parametrize("height, width", [(0, W), (H, 0), (0, 0)])
@pytest.mark.parametrize("name", PATHS)
def test_an_empty_image_is_a_value_error_naming_the_rule(name, height, width):
    m, _, _ = make(name)
    with pytest.raises(ValueError, match=r"height >= 1 and width >= 1; got shape \(2, 4, "):
        m(x_of(height=height, width=width))


def test_implicit_solve_of_an_empty_image_is_a_value_error():
    with pytest.raises(ValueError, match="height >= 1 and width >= 1"):
        implicit_solve(x_of(height=0), torch.randn(C, 1, 3, 3), 0.1)


# ---------------------------------------------------------------------------- dtypes and autocast

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", PATHS)
def test_half_precision_runs_and_returns_the_inputs_dtype(name, dtype):
    """The FFT paths compute float16/bfloat16 in float32 and cast back; the others run as F.conv2d does."""
    m32, _, _ = make(name)
    m, _, _ = make(name, dtype)
    x = x_of()
    y = m(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), m32(x), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_implicit_solve_in_half_precision(dtype):
    x, w = x_of(), torch.randn(C, 1, 3, 3)
    z = implicit_solve(x.to(dtype), w.to(dtype), 0.5)
    assert z.dtype == dtype
    torch.testing.assert_close(z.float(), implicit_solve(x, w, 0.5), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", PATHS)
def test_mixed_dtypes_are_one_type_error(name):
    m, _, _ = make(name, torch.float64)
    with pytest.raises(TypeError, match=r"input is torch.float32 but the parameters are torch.float64; "
                                        r"they must have one dtype"):
        m(x_of())
    m, _, _ = make(name, torch.float32)
    with pytest.raises(TypeError, match="must have one dtype"):
        m(x_of(dtype=torch.float64))


@pytest.mark.parametrize("name", ADJOINTS)
def test_mixed_dtypes_through_the_adjoint(name):
    m, _, _ = make(name, torch.float64)
    with pytest.raises(TypeError, match="y is torch.float32 but the parameters are torch.float64"):
        m.adjoint(x_of())


def test_implicit_solve_with_mixed_dtypes_is_a_type_error():
    with pytest.raises(TypeError, match="x is torch.float32 but the parameters are torch.float64"):
        implicit_solve(x_of(), torch.randn(C, 1, 3, 3, dtype=torch.float64), 0.1)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", PATHS)
def test_autocast_fft_paths_compute_in_float32_the_others_in_autocasts_dtype(name, input_dtype):
    m, _, _ = make(name)  # float32 parameters, a float32 or a bfloat16 input: no dtype error
    x = x_of()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.to(input_dtype))
    fft_steps = ("ImplicitRDStep", "CirculantRDStep")  # their last operation is FFT-based
    if name in ("depthwise fft", "circulant") or name in fft_steps:
        assert y.dtype == torch.float32
    elif name.startswith(("ResNetStep", "LinearMixStep", "ExplicitRDStep", "sic")) and name != "sic 4->6 5x5":
        assert y.dtype in (torch.float32, torch.bfloat16)  # y + (bfloat16 update) promotes to the input's
    else:
        assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x), atol=0.15, rtol=0.05)


# ---------------------------------------------------------------------------- time steps and backends

@pytest.mark.parametrize("h", [float("inf"), float("-inf"), float("nan"), 0.0, -1.0,
                               torch.tensor(float("inf")), torch.tensor(float("nan"))],
                         ids=["inf", "-inf", "nan", "0", "-1", "tensor-inf", "tensor-nan"])
def test_implicit_solve_needs_a_finite_positive_h(h):
    with pytest.raises(ValueError, match=r"h must be > 0 and finite \(the time step\)"):
        implicit_solve(x_of(), torch.randn(C, 1, 3, 3), h)


def test_implicit_solve_rejects_an_h_its_dtype_cannot_hold_and_solves_it_in_float64():
    with pytest.raises(ValueError, match=r"h=1e\+300 is larger than torch.float32 can hold"):
        implicit_solve(x_of(), torch.randn(C, 1, 3, 3), 1e300)
    z = implicit_solve(x_of(dtype=torch.float64), torch.randn(C, 1, 3, 3, dtype=torch.float64), 1e300)
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("cls", [ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
@pytest.mark.parametrize("h", [1e300, 1e7])
def test_a_step_larger_than_max_h_is_rejected(cls, h):
    with pytest.raises(ValueError, match=r"h \(the time step\) must be <= MAX_H = 1e\+06"):
        cls(C, h=h)


@pytest.mark.parametrize("cls", [ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
def test_the_largest_step_is_finite_in_float32(cls):
    torch.manual_seed(0)
    assert torch.isfinite(cls(C, h=MAX_H).eval()(x_of())).all()


@pytest.mark.parametrize("make_op", [
    lambda b: DepthwiseConv2d(C, 3, boundary="periodic", method="fft", backend=b),
    lambda b: CirculantConv2d(C, 3, backend=b),
    lambda b: LeanConv2d(C, C, backend=b),
    lambda b: ImplicitRDStep(C, backend=b),
], ids=["depthwise", "circulant", "lean", "ImplicitRDStep"])
@pytest.mark.parametrize("backend", ["gpu", "CUDA", "", None])
def test_a_bad_backend_is_rejected_at_construction(make_op, backend):
    with pytest.raises(ValueError, match="is not a backend; choose one of auto, reference, cuda"):
        make_op(backend)


def test_implicit_solve_checks_backend_before_any_work():
    with pytest.raises(ValueError, match="backend='gpu' is not a backend"):
        implicit_solve(x_of(batch=0), torch.randn(C, 1, 3, 3), 0.1, backend="gpu")


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_direct_depthwise_refuses_backend_cuda(boundary):
    with pytest.raises(ValueError, match="backend='cuda' selects the CUDA spectral step of method='fft'"):
        DepthwiseConv2d(C, 3, boundary=boundary, method="direct", backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("run", [
    lambda x: DepthwiseConv2d(C, 3, boundary="periodic", method="fft", backend="cuda")(x),
    lambda x: DepthwiseConv2d(C, 3, boundary="periodic", method="fft", backend="cuda").adjoint(x),
    lambda x: CirculantConv2d(C, 3, backend="cuda")(x),
    lambda x: LeanConv2d(C, C, backend="cuda")(x),
    lambda x: implicit_solve(x, torch.randn(C, 1, 3, 3), 0.1, backend="cuda"),
    lambda x: ImplicitRDStep(C, backend="cuda")(x),
], ids=["depthwise", "depthwise-adjoint", "circulant", "lean", "implicit_solve", "ImplicitRDStep"])
@pytest.mark.parametrize("batch", [2, 0])
def test_backend_cuda_insists_even_for_an_empty_batch(run, batch):
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        run(x_of(batch=batch))


# ---------------------------------------------------------------------------- non-finite input

def one_inf(dtype=torch.float64):
    x = torch.zeros(2, C, 8, 8, dtype=dtype)
    x[0, 1, 3, 4] = float("inf")
    return x


def not_finite(y):
    """Non-finite values per (sample, channel)."""
    return (~torch.isfinite(y)).sum((2, 3)).tolist()


def test_one_inf_pixel_spoils_a_neighbourhood_on_the_direct_path_and_the_channel_on_the_fft_path():
    torch.manual_seed(0)
    direct = DepthwiseConv2d(C, 3, boundary="periodic").double()
    fft = DepthwiseConv2d(C, 3, boundary="periodic", method="fft", backend="reference").double()
    fft.load_state_dict(direct.state_dict())
    assert not_finite(direct(one_inf())) == [[0, 9, 0, 0], [0, 0, 0, 0]]
    y = fft(one_inf())
    assert not_finite(y) == [[0, 64, 0, 0], [0, 0, 0, 0]] and y[0, 1].isnan().all()
    auto = DepthwiseConv2d(C, 3, boundary="periodic", method="fft", backend="auto").double()
    auto.load_state_dict(direct.state_dict())
    assert not_finite(auto(one_inf())) == not_finite(y)  # "auto" on a CPU: the same spectra


def test_one_inf_pixel_spoils_the_whole_sample_on_the_circulant_path():
    y = CirculantConv2d(C, 3).double()(one_inf())
    assert y[0].isnan().all() and torch.isfinite(y[1]).all()


def test_one_inf_pixel_spoils_its_channel_in_implicit_solve():
    z = implicit_solve(one_inf(), torch.randn(C, 1, 3, 3, dtype=torch.float64), 0.5)
    assert not_finite(z) == [[0, 64, 0, 0], [0, 0, 0, 0]]


def test_one_inf_pixel_in_the_lean_reference_path():
    torch.manual_seed(0)
    y = LeanConv2d(C, C, backend="reference").double()(one_inf())
    assert not_finite(y) == [[1, 9, 1, 1], [0, 0, 0, 0]]  # 3x3 in its channel, the pixel in the others
    corners = y[0, 1, [2, 2, 4, 4], [3, 5, 3, 5]]
    assert corners.isnan().all()  # 0 · inf at the zero corner taps


def test_one_inf_pixel_spoils_whole_channels_of_its_sample_in_the_implicit_step():
    torch.manual_seed(0)
    y = ImplicitRDStep(C).double().eval()(one_inf())
    per_channel = not_finite(y)
    assert per_channel[1] == [0] * C and per_channel[0][1] == 64  # its own channel, all nan
    assert set(per_channel[0]) <= {0, 64}  # other channels: nan wherever the reaction is +inf


def test_one_inf_pixel_spoils_its_sample_in_the_circulant_step():
    torch.manual_seed(0)
    y = CirculantRDStep(C).double().eval()(one_inf())
    assert y[0].isnan().all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("cls", STEPS)
def test_one_inf_pixel_spoils_the_whole_batch_in_training_mode(cls):
    torch.manual_seed(0)
    y = cls(C).double().train()(one_inf())
    assert not torch.isfinite(y[1]).all()  # the batch statistics of BatchNorm2d


# ---------------------------------------------------------------------------- TorchScript, trace, compile

@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name", PATHS)
def test_torchscript_is_refused_with_a_clear_message(name):
    m, _, _ = make(name)
    with pytest.raises(TypeError, match=rf"{type(m).__name__} does not support TorchScript \(torch.jit.script\); "
                                        r"use torch.compile, or torch.jit.trace"):
        torch.jit.script(m)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name", ["lowcost/imprd-A", "lean/leanresnet-A"])
def test_torchscript_of_a_model_names_the_operator_that_refuses(name):
    with pytest.raises(TypeError, match="does not support TorchScript"):
        torch.jit.script(models.build(name))


@pytest.mark.parametrize("name", PATHS)
def test_jit_trace_still_works(name):
    m, _, _ = make(name)
    x = x_of()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in favour of torch.compile
        traced = torch.jit.trace(m, x)
    torch.testing.assert_close(traced(x_of(seed=5)), m(x_of(seed=5)))


@pytest.mark.parametrize("name", PATHS)
def test_torch_compile_runs_forward_and_backward(name):
    """Graph capture and AOT autograd without a C++ compiler (backend="aot_eager"): seconds on a CPU."""
    torch._dynamo.reset()
    m, _, _ = make(name)
    x = x_of().requires_grad_()
    compiled = torch.compile(m, backend="aot_eager")
    y, y_eager = compiled(x), m(x)
    torch.testing.assert_close(y, y_eager)
    g = torch.autograd.grad(y.square().sum(), x)[0]
    torch.testing.assert_close(g, torch.autograd.grad(y_eager.square().sum(), x)[0])


# ---------------------------------------------------------------------------- the model registry

@pytest.mark.parametrize("name, suggestion", [
    ("lean/leanresnet-a", "'lean/leanresnet-A'"),
    ("LOWCOST/IMPRD-A", "'lowcost/imprd-A'"),
    ("resnet/resnet21", "'resnet/resnet20'"),
    ("lean/leanresnt-A", "'lean/leanresnet-A'"),
])
def test_an_unknown_model_suggests_the_closest_names(name, suggestion):
    with pytest.raises(ValueError, match=rf"unknown model '{name}'; did you mean {re.escape(suggestion)}"):
        models.build(name)


def test_a_case_insensitive_match_is_the_only_suggestion():
    with pytest.raises(ValueError, match=r"did you mean 'lean/leanresnet-A'\? choose one of"):
        models.build("lean/leanresnet-a")


def test_an_unknown_model_far_from_every_name_gets_only_the_list():
    with pytest.raises(ValueError, match=r"unknown model 'xyz'; choose one of: "):
        models.build("xyz")


def test_a_model_name_that_is_not_a_string_is_a_type_error():
    with pytest.raises(TypeError, match="the model name must be a str"):
        models.build(None)


@pytest.mark.parametrize("num_classes, error", [
    (0, ValueError), (-3, ValueError), (2.0, TypeError), ("10", TypeError), (True, TypeError), (None, TypeError),
])
def test_num_classes_must_be_an_int_of_at_least_one(num_classes, error):
    with pytest.raises(error, match="num_classes must be an int >= 1"):
        models.build("resnet/resnet8", num_classes=num_classes)


@pytest.mark.parametrize("in_channels, error", [(0, ValueError), (3.0, TypeError)])
def test_in_channels_must_be_an_int_of_at_least_one(in_channels, error):
    with pytest.raises(error, match="in_channels must be an int >= 1"):
        models.build("resnet/resnet8", in_channels=in_channels)


def test_a_numpy_integer_is_a_class_count():
    model = models.build("resnet/resnet8", num_classes=np.int64(7))
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 7)


# ---------------------------------------------------------------------------- the README's table

def test_the_readme_table_lists_every_operator_and_step():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## What each operator supports" in text
    section = text.split("## What each operator supports")[1].split("\n## ")[0]
    for cls in OPERATORS + STEPS:
        assert f"`{cls.__name__}" in section, cls.__name__
    assert "`implicit_solve`" in section
    for word in ("float16", "bfloat16", "autocast", "TorchScript", "torch.compile", "nan", "B = 0"):
        assert word in section, word


@pytest.mark.parametrize("name", PATHS)
def test_the_dtype_checks_let_the_meta_device_through(name):
    """Cost counting runs every operator on the ``meta`` device, which autocast does not know."""
    m, out_channels, stride = make(name)
    y = m.to("meta")(torch.empty(2, C, H, W, device="meta"))
    assert y.shape == out_shape(2, out_channels, stride) and y.device.type == "meta"
