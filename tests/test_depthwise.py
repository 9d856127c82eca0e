"""DepthwiseConv2d (eq. 5) and its FFT path (eq. 10) against dense matrices, in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from effconv_ref.depthwise import DepthwiseConv2d, depthwise_symbol
from effconv_ref.matrix import conv2d_matrix

CASES = [  # (B, C, H, W, k)
    (1, 3, 5, 7, 3),
    (2, 2, 6, 4, 3),
    (1, 4, 7, 7, 5),
    (2, 3, 4, 9, 1),
    (1, 2, 5, 6, 5),  # kernel as tall as the image
    (3, 1, 8, 3, 3),
]


def make(C, k, boundary, method="direct", seed=0):
    torch.manual_seed(seed)
    return DepthwiseConv2d(C, k, boundary=boundary, method=method).double()


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def dense_by_hand(weight):
    C, _, k, _ = weight.shape
    dense = torch.zeros(C, C, k, k, dtype=weight.dtype)
    for c in range(C):
        dense[c, c] = weight[c, 0]
    return dense


@pytest.mark.parametrize("B,C,H,W,k", CASES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_direct_against_conv2d_and_dense_matrix(B, C, H, W, k, boundary):
    m = make(C, k, boundary, seed=H * W)
    x, y = rand(B, C, H, W, seed=1), rand(B, C, H, W, seed=2)
    padding_mode = "circular" if boundary == "periodic" else "zeros"
    conv = torch.nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=False, padding_mode=padding_mode).double()
    conv.weight.data.copy_(m.weight.data)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, conv(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.dense_weight(), dense_by_hand(m.weight.detach()), rtol=0, atol=0)
    K = conv2d_matrix(m.dense_weight().detach(), H, W, boundary=boundary)
    adj = m.adjoint(y)
    for b in range(B):
        torch.testing.assert_close(out[b].reshape(-1), K @ x[b].reshape(-1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(adj[b].reshape(-1), K.T @ y[b].reshape(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("B,C,H,W,k", CASES)
def test_fft_equals_direct_periodic(B, C, H, W, k):
    direct = make(C, k, "periodic", seed=H + W)
    fft = DepthwiseConv2d(C, k, boundary="periodic", method="fft").double()
    fft.weight.data.copy_(direct.weight.data)
    x, y = rand(B, C, H, W, seed=3), rand(B, C, H, W, seed=4)
    torch.testing.assert_close(fft(x), direct(x), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(fft.adjoint(y), direct.adjoint(y), rtol=1e-11, atol=1e-12)
    # <K x, y> == <x, K^T y>
    lhs, rhs = (fft(x) * y).sum(), (x * fft.adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_adjoint_inner_product_direct(boundary):
    m = make(3, 3, boundary, seed=5)
    x, y = rand(2, 3, 5, 8, seed=6), rand(2, 3, 5, 8, seed=7)
    torch.testing.assert_close((m(x) * y).sum(), (x * m.adjoint(y)).sum(), rtol=1e-12, atol=1e-12)


def test_fft_gradients_equal_direct():
    direct, fft = make(3, 3, "periodic", seed=8), DepthwiseConv2d(3, 3, boundary="periodic", method="fft").double()
    fft.weight.data.copy_(direct.weight.data)
    x = rand(2, 3, 5, 6, seed=9).requires_grad_()
    v = rand(2, 3, 5, 6, seed=10)
    gd = torch.autograd.grad((direct(x) * v).sum(), (x, direct.weight))
    gf = torch.autograd.grad((fft(x) * v).sum(), (x, fft.weight))
    for a, b in zip(gf, gd):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("H,W", [(5, 7), (6, 4), (3, 3)])
def test_symbol_is_the_eigenvalue_of_the_dense_matrix(H, W):
    """K applied to the plane wave e^{2πi(f i/H + g j/W)} is K̂[f, g] times that wave."""
    C, k = 2, 3
    weight = rand(C, 1, k, k, seed=11)
    k_hat = depthwise_symbol(weight, H, W)
    assert k_hat.shape == (C, H, W // 2 + 1)
    K = conv2d_matrix(weight, H, W, boundary="periodic", groups=C).to(torch.complex128)
    i, j = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    for f in range(H):
        for g in range(W // 2 + 1):
            wave = torch.exp(2j * math.pi * (f * i / H + g * j / W)).reshape(-1)
            Kw = (K @ wave.repeat(C)).reshape(C, H * W)
            torch.testing.assert_close(Kw, k_hat[:, f, g, None] * wave, rtol=1e-12, atol=1e-12)
    # equivalently: the conjugate of rfft2 of the unflipped stencil with its centre rolled to (0, 0)
    embedded = F.pad(weight[:, 0], (0, W - k, 0, H - k)).roll((-(k // 2), -(k // 2)), dims=(-2, -1))
    torch.testing.assert_close(k_hat, torch.fft.rfft2(embedded).conj(), rtol=1e-12, atol=1e-12)


def test_module_conventions():
    m = DepthwiseConv2d(4, 5, boundary="periodic", method="fft")
    assert m.weight.shape == (4, 1, 5, 5) and isinstance(m.weight, torch.nn.Parameter)
    assert m.in_channels == m.out_channels == 4
    assert repr(m) == "DepthwiseConv2d(4, kernel_size=5, boundary='periodic', method='fft')"
    m.weight.data.fill_(100.0)
    m.reset_parameters()
    assert m.weight.abs().max() <= 1 / 5  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 25


def test_errors():
    with pytest.raises(ValueError, match="method='fft' needs boundary='periodic'"):
        DepthwiseConv2d(3, 3, boundary="zeros", method="fft")
    with pytest.raises(ValueError, match="method='spectral' is not a method"):
        DepthwiseConv2d(3, 3, method="spectral")
    with pytest.raises(ValueError, match="boundary='reflect' is not a boundary"):
        DepthwiseConv2d(3, 3, boundary="reflect")
    with pytest.raises(ValueError, match="kernel_size=4: only odd kernel sizes"):
        DepthwiseConv2d(3, 4)
    with pytest.raises(ValueError, match="backend='gpu' is not a backend"):
        DepthwiseConv2d(3, 3, backend="gpu")
    m = DepthwiseConv2d(3, 5, boundary="periodic", method="fft")
    with pytest.raises(ValueError, match="kernel .5x5. is larger than the image .4x6."):
        m(torch.randn(1, 3, 4, 6))
    with pytest.raises(ValueError, match="kernel .5x5. is larger than the image"):
        DepthwiseConv2d(3, 5, boundary="periodic")(torch.randn(1, 3, 6, 3))
    with pytest.raises(ValueError, match="input has 2 channels but channels=3"):
        m(torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match="y has 2 channels"):
        m.adjoint(torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"input must be 4-D \(B, C, H, W\)"):
        m(torch.randn(3, 6, 6))
    with pytest.raises(TypeError, match="input must be a real floating tensor"):
        m(torch.ones(1, 3, 6, 6, dtype=torch.long))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    m = DepthwiseConv2d(3, 3, boundary="periodic", method="fft", backend="cuda")
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        m(torch.randn(1, 3, 5, 5))


@pytest.mark.parametrize("B,C,H,W,k", CASES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_stride_two_keeps_every_second_row_and_column_of_the_dense_matrix(B, C, H, W, k, boundary):
    """Stride 2 is the stride-1 layer's rows for the pixels (2p, 2q): eq. (5) sampled, ⌈H/2⌉ x ⌈W/2⌉."""
    torch.manual_seed(H * W)
    m = DepthwiseConv2d(C, k, stride=2, boundary=boundary).double()
    x = rand(B, C, H, W, seed=3)
    out = m(x)
    assert out.shape == (B, C, math.ceil(H / 2), math.ceil(W / 2))
    K = conv2d_matrix(m.dense_weight().detach(), H, W, boundary=boundary).reshape(C, H, W, C * H * W)
    K2 = K[:, ::2, ::2].reshape(-1, C * H * W)
    for b in range(B):
        torch.testing.assert_close(out[b].reshape(-1), K2 @ x[b].reshape(-1), rtol=1e-12, atol=1e-12)
    assert repr(m).startswith(f"DepthwiseConv2d({C}, kernel_size={k}, stride=2, ")
    with pytest.raises(ValueError, match="adjoint is defined for stride 1"):
        m.adjoint(out)
