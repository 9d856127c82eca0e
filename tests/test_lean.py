"""The lean convolution (eqs. 3-4 of LeanResNet): LeanConv2d, its reference path, the autograd
Function's explicit backward, and the fused kernel kernels/lean.cu."""

import math

import pytest
import torch
import torch.nn.functional as F

from effconv_ref.lean import LeanConv2d
from effconv_ref.matrix import conv2d_matrix
from effconv_ref.ops.lean_conv import LeanConv, lean_conv2d

# (batch, in, out, H, W, stride): odd sizes, non-square images, in < out, in > out, in == out, batch 1
SHAPES = [
    (2, 3, 3, 7, 5, 1),
    (1, 4, 6, 6, 9, 2),
    (3, 5, 2, 9, 4, 2),
    (2, 6, 3, 5, 8, 1),
    (1, 2, 5, 4, 7, 1),
    (2, 4, 4, 5, 6, 2),
    (1, 1, 1, 1, 3, 2),
]


def rand(*shape, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, device=device, generator=g)


def weight_by_loops(pointwise, stencil):
    """The 3x3 weight of eqs. (3)-(4), entry by entry: α everywhere at the centre, the taps
    (up, left, right, down) of channel i at (i, i) for i < min(in, out). Differentiable."""
    out_channels, in_channels = pointwise.shape[:2]
    zero = pointwise.new_zeros(())
    blocks = []
    for o in range(out_channels):
        row = []
        for i in range(in_channels):
            k = [[zero, zero, zero], [zero, pointwise[o, i, 0, 0], zero], [zero, zero, zero]]
            if o == i and o < stencil.shape[0]:
                k[0][1], k[1][0], k[1][2], k[2][1] = stencil[o, 0], stencil[o, 1], stencil[o, 2], stencil[o, 3]
            row.append(torch.stack([torch.stack(r) for r in k]))
        blocks.append(torch.stack(row))
    return torch.stack(blocks)


def make(shape, seed, bias=False):
    batch, cin, cout, h, w, stride = shape
    layer = LeanConv2d(cin, cout, stride=stride, bias=bias, backend="reference").double()
    with torch.no_grad():
        for i, p in enumerate(layer.parameters()):
            p.copy_(rand(*p.shape, seed=seed + 10 + i))
    return layer, rand(batch, cin, h, w, seed=seed)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_the_dense_3x3_convolution(shape):
    layer, x = make(shape, seed=1, bias=True)
    weight = weight_by_loops(layer.pointwise, layer.stencil)
    expected = F.conv2d(x, weight, layer.bias, stride=layer.stride, padding=1)
    y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.dense_weight(), weight, rtol=0, atol=0)
    # the block matrix of eq. (4), built pixel by pixel
    h, w = x.shape[-2:]
    K = conv2d_matrix(layer.dense_weight().detach(), h, w, stride=layer.stride)
    for b in range(x.shape[0]):
        flat = K @ x[b].reshape(-1) + layer.bias.detach().repeat_interleave(y.shape[2] * y.shape[3])
        torch.testing.assert_close(flat, y[b].detach().reshape(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_backward_matches_the_dense_convolution(shape):
    layer, x = make(shape, seed=2)
    x.requires_grad_()
    g = rand(*layer(x).shape, seed=3)
    grads = torch.autograd.grad(layer(x), (x, layer.pointwise, layer.stencil), g)
    expected = F.conv2d(x, weight_by_loops(layer.pointwise, layer.stencil), stride=layer.stride, padding=1)
    refs = torch.autograd.grad(expected, (x, layer.pointwise, layer.stencil), g)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:5])
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_of_the_explicit_backward(shape, bias):
    layer, x = make(shape, seed=4, bias=bias)
    params = [x.requires_grad_(), layer.pointwise.detach().requires_grad_(), layer.stencil.detach().requires_grad_()]
    b = layer.bias.detach().requires_grad_() if bias else None
    stride = layer.stride

    def f(x, pointwise, stencil, *bias):
        return LeanConv.apply(x, pointwise, stencil, bias[0] if bias else None, stride, False)

    assert torch.autograd.gradcheck(f, (*params, *([b] if bias else [])))


def test_function_in_reference_mode_equals_the_reference_path():
    layer, x = make((2, 5, 3, 7, 6, 2), seed=5, bias=True)
    x.requires_grad_()
    inputs = (x, layer.pointwise, layer.stencil, layer.bias)
    y = LeanConv.apply(*inputs, 2, False)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    g = rand(*y.shape, seed=6)
    for a, b in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(layer(x), inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin, cout", [(3, 7), (7, 3), (5, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count(cin, cout, bias):
    layer = LeanConv2d(cin, cout, bias=bias)
    count = sum(p.numel() for p in layer.parameters())
    assert count == cin * cout + 4 * min(cin, cout) + (cout if bias else 0)
    assert layer.pointwise.shape == (cout, cin, 1, 1) and layer.stencil.shape == (min(cin, cout), 4)


def test_reset_parameters_bounds_and_extra_repr():
    torch.manual_seed(0)
    layer = LeanConv2d(16, 8, stride=2, bias=True)
    bound = 1 / math.sqrt(16)
    for p in layer.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound
    assert repr(layer) == "LeanConv2d(16, 8, stride=2)"
    assert LeanConv2d(3, 4, backend="reference").extra_repr() == "3, 4, stride=1, bias=False, backend='reference'"


def test_auto_on_the_cpu_runs_the_reference_in_float64():
    layer, x = make((1, 3, 4, 5, 5, 1), seed=7)
    layer.backend = "auto"
    torch.testing.assert_close(layer(x), lean_conv2d(x, layer.pointwise, layer.stencil, backend="reference"))


def test_errors():
    layer = LeanConv2d(3, 4)
    with pytest.raises(ValueError, match="input must be 4-D"):
        layer(torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match="input has 2 channels but in_channels=3"):
        layer(torch.randn(1, 2, 5, 5))
    with pytest.raises(TypeError, match="real floating"):
        layer(torch.ones(1, 3, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="stride=3 is not supported; the lean convolution supports stride 1 and 2"):
        LeanConv2d(3, 4, stride=3)
    with pytest.raises(ValueError, match="stride=0 is not supported"):
        lean_conv2d(torch.randn(1, 3, 5, 5), layer.pointwise, layer.stencil, stride=0)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        LeanConv2d(0, 4)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        LeanConv2d(3, -1)
    with pytest.raises(ValueError, match=r"stencil must be \(min\(in, out\), 4\)"):
        lean_conv2d(torch.randn(1, 3, 5, 5), layer.pointwise, torch.randn(4, 4))
    with pytest.raises(ValueError, match="backend='gpu' is not a backend"):
        LeanConv2d(3, 4, backend="gpu")
    double = LeanConv2d(3, 4, backend="cuda").double()
    rule = "backend='cuda' supports float32, float16 and bfloat16 inputs; got torch.float64"
    with pytest.raises(TypeError, match=rule):
        double(torch.randn(1, 3, 5, 5, dtype=torch.float64))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        LeanConv2d(3, 4, backend="cuda")(torch.randn(1, 3, 5, 5))


@pytest.mark.compile
def test_lean_kernel_compiles(nvcc):
    """Compiles kernels/lean.cu with nvcc for the GPUs readers use; CI must not skip this."""
    from effconv_ref.ops import lean_conv as module

    ext = module._kernel()
    for name in ("lean_forward", "lean_backward_input", "lean_grad_stencil"):
        assert callable(getattr(ext, name))
    assert module._kernel() is ext  # cached: a second call does not rebuild


# ---- on a GPU: the fused kernel against the float64 reference -----------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (batch, in, out, H, W, stride): the sweep's layers, odd and non-square sizes, in != out both ways,
# channel counts that are not multiples of the tiles
GPU_SHAPES = [
    (4, 16, 16, 128, 128, 1),
    (4, 16, 32, 128, 128, 2),
    (8, 64, 64, 32, 32, 1),
    (8, 64, 128, 32, 32, 2),
    (16, 256, 256, 8, 8, 1),
    (4, 512, 512, 16, 16, 1),
    (4, 256, 512, 16, 16, 2),
    (1, 3, 70, 33, 17, 1),
    (2, 70, 3, 33, 17, 2),
    (3, 20, 9, 11, 10, 2),
    (2, 9, 20, 1, 7, 1),
    (2, 100, 100, 9, 13, 2),
]


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def check_against_reference(shape, dtype, tol, seed, bias=True):
    batch, cin, cout, h, w, stride = shape
    layer = LeanConv2d(cin, cout, stride=stride, bias=bias, backend="cuda", device="cuda", dtype=dtype)
    with torch.no_grad():  # taps as large as the 1x1 weights, so that an error in them shows
        layer.stencil.copy_(rand(*layer.stencil.shape, seed=seed + 1, device="cuda", dtype=dtype) / math.sqrt(cin))
    x = rand(batch, cin, h, w, seed=seed, device="cuda", dtype=dtype).requires_grad_()
    params = list(layer.parameters())
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    g = rand(*y.shape, seed=seed + 2, device="cuda", dtype=dtype)
    grads = torch.autograd.grad(y, [x, *params], g)

    ref = LeanConv2d(cin, cout, stride=stride, bias=bias, backend="reference").double()
    ref.load_state_dict({k: v.double().cpu() for k, v in layer.state_dict().items()})
    x64 = x.detach().double().cpu().requires_grad_()
    y64 = ref(x64)
    refs = torch.autograd.grad(y64, [x64, *ref.parameters()], g.double().cpu())
    assert rel_err(y, y64) <= tol, (shape, seed, "forward")
    for name, a, r in zip(["x", "pointwise", "stencil", "bias"], grads, refs):
        assert a.dtype == dtype and torch.isfinite(a).all(), (shape, name)
        assert rel_err(a, r) <= tol, (shape, seed, name)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_kernel_matches_reference_float32(shape):
    seed = torch.seed() % 2**31  # fresh random inputs on every run
    for i in range(2):
        check_against_reference(shape, torch.float32, 1e-5, seed + 100 * i, bias=i == 0)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [GPU_SHAPES[1], GPU_SHAPES[2], GPU_SHAPES[7], GPU_SHAPES[9]])
def test_kernel_matches_reference_half_precision(shape, dtype, tol):
    check_against_reference(shape, dtype, tol, torch.seed() % 2**31)


@pytest.mark.cuda
@needs_gpu
def test_auto_falls_back_for_float64_and_empty_batches_on_gpu():
    layer = LeanConv2d(3, 4, backend="auto", device="cuda", dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, device="cuda", dtype=torch.float64)  # "auto" falls back to the reference
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.dense_weight(), padding=1))
    empty = LeanConv2d(3, 4, backend="cuda", device="cuda")(torch.randn(0, 3, 5, 5, device="cuda"))
    assert empty.shape == (0, 4, 5, 5)
