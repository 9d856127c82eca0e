"""CirculantConv2d (section 3.2.3) against its sum formula and dense matrices, in float64."""

import pytest
import torch
import torch.nn.functional as F

from effconv_ref.circulant import CirculantConv2d, circulant_symbol
from effconv_ref.depthwise import depthwise_symbol
from effconv_ref.matrix import conv2d_matrix

CASES = [  # (B, C, H, W, k)
    (1, 3, 5, 7, 3),
    (2, 4, 6, 4, 3),
    (1, 2, 7, 7, 5),
    (2, 5, 4, 9, 1),
    (1, 1, 5, 6, 5),
]


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def make(C, k, seed=0):
    torch.manual_seed(seed)
    return CirculantConv2d(C, k).double()


def circulant_by_sum(x, weight):
    """y[c,i,j] = Σ_d Σ_{u,v} w[d,u,v] x[(c-d) mod C, (i+u-r) mod H, (j+v-r) mod W], by loops."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    r = k // 2
    y = torch.zeros_like(x)
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    for d in range(C):
                        for u in range(k):
                            for v in range(k):
                                y[b, c, i, j] += weight[d, u, v] * x[b, (c - d) % C, (i + u - r) % H, (j + v - r) % W]
    return y


def dense_by_loops(weight):
    C, k, _ = weight.shape
    dense = torch.zeros(C, C, k, k, dtype=weight.dtype)
    for c in range(C):
        for c2 in range(C):
            for d in range(C):
                if (c - c2) % C == d:
                    dense[c, c2] = weight[d]
    return dense


def test_against_the_sum_formula():
    m = make(3, 3, seed=1)
    x = rand(1, 3, 4, 5, seed=2)
    torch.testing.assert_close(m(x), circulant_by_sum(x, m.weight.detach()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("B,C,H,W,k", CASES)
def test_against_dense_matrix(B, C, H, W, k):
    m = make(C, k, seed=H * W + C)
    x, y = rand(B, C, H, W, seed=3), rand(B, C, H, W, seed=4)
    dense = m.dense_weight().detach()
    assert dense.shape == (C, C, k, k)
    torch.testing.assert_close(dense, dense_by_loops(m.weight.detach()), rtol=0, atol=0)
    K = conv2d_matrix(dense, H, W, boundary="periodic")
    out, adj = m(x), m.adjoint(y)
    assert out.shape == x.shape
    for b in range(B):
        torch.testing.assert_close(out[b].reshape(-1), K @ x[b].reshape(-1), rtol=1e-11, atol=1e-12)
        torch.testing.assert_close(adj[b].reshape(-1), K.T @ y[b].reshape(-1), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close((out * y).sum(), (x * adj).sum(), rtol=1e-11, atol=1e-12)


def test_gradients_equal_the_dense_convolution():
    """Autograd through the 3-D FFT equals autograd through F.conv2d with dense_weight()."""
    m = make(3, 3, seed=5)
    x = rand(2, 3, 5, 6, seed=6).requires_grad_()
    v = rand(2, 3, 5, 6, seed=7)
    g_fft = torch.autograd.grad((m(x) * v).sum(), (x, m.weight))
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), m.dense_weight())
    g_dense = torch.autograd.grad((y * v).sum(), (x, m.weight))
    for a, b in zip(g_fft, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_one_channel_is_the_periodic_depthwise_convolution():
    w = rand(1, 3, 3, seed=8)
    torch.testing.assert_close(circulant_symbol(w, 5, 6), depthwise_symbol(w[:, None], 5, 6), rtol=1e-12, atol=1e-12)


def test_module_conventions():
    m = CirculantConv2d(4, 3)
    assert m.weight.shape == (4, 3, 3) and isinstance(m.weight, torch.nn.Parameter)
    assert m.weight.numel() == 3 * 3 * 4  # m² c numbers
    assert repr(m) == "CirculantConv2d(4, kernel_size=3, boundary='periodic')"
    m.weight.data.fill_(100.0)
    m.reset_parameters()
    assert m.weight.abs().max() <= 1 / 6  # fan_in = C k² = 36


def test_errors():
    m = CirculantConv2d(3, 5)
    with pytest.raises(ValueError, match="kernel .5x5. is larger than the image .5x4."):
        m(torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="input has 4 channels but channels=3"):
        m(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"y must be 4-D \(B, C, H, W\)"):
        m.adjoint(torch.randn(3, 6, 6))
    with pytest.raises(ValueError, match="kernel_size=2: only odd kernel sizes"):
        CirculantConv2d(3, 2)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        CirculantConv2d(0, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        CirculantConv2d(3, 3, backend="cuda")(torch.randn(1, 3, 5, 5))
