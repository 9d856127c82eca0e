"""LinearMix (eq. 7): K_dw + M against a dense weight built by hand, in float64."""

import pytest
import torch
import torch.nn.functional as F

from effconv_ref.linearmix import LinearMix
from effconv_ref.matrix import conv2d_matrix

CASES = [  # (B, C, H, W, k)
    (1, 3, 5, 7, 3),
    (2, 4, 6, 4, 3),
    (1, 2, 7, 6, 5),
    (2, 3, 4, 5, 1),
]


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def dense_by_hand(depthwise, pointwise):
    C, _, k, _ = depthwise.shape
    dense = torch.zeros(C, C, k, k, dtype=depthwise.dtype)
    for o in range(C):
        for i in range(C):
            dense[o, i, k // 2, k // 2] = pointwise[o, i, 0, 0]
        dense[o, o] += depthwise[o, 0]
    return dense


@pytest.mark.parametrize("B,C,H,W,k", CASES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_against_dense(B, C, H, W, k, boundary):
    torch.manual_seed(H * W + k)
    m = LinearMix(C, k, boundary=boundary).double()
    x, y = rand(B, C, H, W, seed=1), rand(B, C, H, W, seed=2)
    dense = m.dense_weight().detach()
    torch.testing.assert_close(dense, dense_by_hand(m.depthwise.detach(), m.pointwise.detach()), rtol=0, atol=0)
    K = conv2d_matrix(dense, H, W, boundary=boundary)
    out, adj = m(x), m.adjoint(y)
    assert out.shape == x.shape
    for b in range(B):
        torch.testing.assert_close(out[b].reshape(-1), K @ x[b].reshape(-1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(adj[b].reshape(-1), K.T @ y[b].reshape(-1), rtol=1e-12, atol=1e-12)
    if boundary == "zeros":
        torch.testing.assert_close(out, F.conv2d(x, dense, padding=k // 2), rtol=1e-12, atol=1e-12)


def test_gradients_reach_both_parameters():
    m = LinearMix(3, 3).double()
    x = rand(1, 3, 5, 5, seed=3)
    gd, gp = torch.autograd.grad(m(x).square().sum(), (m.depthwise, m.pointwise))
    dense_out = F.conv2d(x, m.dense_weight(), padding=1)
    ref_d, ref_p = torch.autograd.grad(dense_out.square().sum(), (m.depthwise, m.pointwise))
    torch.testing.assert_close(gd, ref_d)
    torch.testing.assert_close(gp, ref_p)


def test_module_conventions():
    m = LinearMix(4, 3)
    params = dict(m.named_parameters())
    assert set(params) == {"depthwise", "pointwise"}
    assert params["depthwise"].shape == (4, 1, 3, 3) and params["pointwise"].shape == (4, 4, 1, 1)
    assert all(isinstance(p, torch.nn.Parameter) for p in params.values())
    assert repr(m) == "LinearMix(4, kernel_size=3, boundary='zeros')"
    m.pointwise.data.fill_(100.0)
    m.reset_parameters()
    assert m.pointwise.abs().max() <= 0.5 and m.depthwise.abs().max() <= 1 / 3


def test_errors():
    with pytest.raises(ValueError, match="kernel_size=2: only odd kernel sizes"):
        LinearMix(3, 2)
    with pytest.raises(ValueError, match="boundary='circular' is not a boundary"):
        LinearMix(3, 3, boundary="circular")
    m = LinearMix(3, 5, boundary="periodic")
    with pytest.raises(ValueError, match="input has 2 channels but channels=3"):
        m(torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"input must be 4-D \(B, C, H, W\)"):
        m(torch.randn(1, 1, 3, 6, 6))
    with pytest.raises(ValueError, match="kernel .5x5. is larger than the image .3x6."):
        m(torch.randn(1, 3, 3, 6))
