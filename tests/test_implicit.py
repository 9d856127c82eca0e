"""implicit_solve (section 3.2.2): (I + h KᵀK)⁻¹ x by FFT against a dense linear solve, in float64."""

import pytest
import torch

from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.matrix import conv2d_matrix
from effconv_ref.ops import implicit_solve

CASES = [  # (B, C, H, W, k, h)
    (1, 3, 5, 7, 3, 0.7),
    (2, 2, 6, 4, 3, 2.5),
    (1, 2, 5, 5, 5, 0.1),
    (2, 3, 4, 7, 1, 1.0),
    (1, 1, 8, 3, 3, 10.0),
]


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("B,C,H,W,k,h", CASES)
def test_against_dense_solve(B, C, H, W, k, h):
    x, weight = rand(B, C, H, W, seed=1), rand(C, 1, k, k, seed=2)
    K = conv2d_matrix(weight, H, W, boundary="periodic", groups=C)
    A = torch.eye(C * H * W, dtype=torch.float64) + h * K.T @ K
    z = implicit_solve(x, weight, h)
    assert z.shape == x.shape
    for b in range(B):
        torch.testing.assert_close(z[b].reshape(-1), torch.linalg.solve(A, x[b].reshape(-1)), rtol=1e-10, atol=1e-12)
    # a 0-d tensor h gives the same
    torch.testing.assert_close(implicit_solve(x, weight, torch.tensor(h, dtype=torch.float64)), z, rtol=0, atol=0)


def test_solves_the_system_built_from_the_module():
    """z + h Kᵀ K z == x with K and Kᵀ applied by DepthwiseConv2d's direct path."""
    m = DepthwiseConv2d(3, 3, boundary="periodic").double()
    x, h = rand(2, 3, 6, 5, seed=3), 0.3
    z = implicit_solve(x, m.weight.detach(), h)
    torch.testing.assert_close(z + h * m.adjoint(m(z)), x.detach(), rtol=1e-11, atol=1e-12)


def test_gradcheck_x_weight_h():
    x = rand(1, 2, 4, 5, seed=4).requires_grad_()
    weight = rand(2, 1, 3, 3, seed=5).requires_grad_()
    h = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, t: implicit_solve(a, w, t, backend="reference"), (x, weight, h))


def test_gradients_against_dense_solve():
    x = rand(1, 2, 4, 3, seed=6).requires_grad_()
    weight = rand(2, 1, 3, 3, seed=7).requires_grad_()
    h = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    v = rand(1, 2, 4, 3, seed=8)
    grads = torch.autograd.grad((implicit_solve(x, weight, h) * v).sum(), (x, weight, h))
    K = conv2d_matrix(weight, 4, 3, boundary="periodic", groups=2)
    A = torch.eye(24, dtype=torch.float64) + h * K.T @ K
    ref = torch.autograd.grad((torch.linalg.solve(A, x.reshape(-1)) * v.reshape(-1)).sum(), (x, weight, h))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_errors():
    x, w = torch.randn(1, 3, 6, 6), torch.randn(3, 1, 3, 3)
    for h in (0.0, -1.0, torch.tensor(-0.5)):
        with pytest.raises(ValueError, match="h must be > 0"):
            implicit_solve(x, w, h)
    with pytest.raises(TypeError, match="h must be a float or a 0-d"):
        implicit_solve(x, w, "0.1")
    with pytest.raises(TypeError, match="h must be a float or a 0-d"):
        implicit_solve(x, w, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="kernel .5x5. is larger than the image .6x4."):
        implicit_solve(torch.randn(1, 3, 6, 4), torch.randn(3, 1, 5, 5), 0.1)
    with pytest.raises(ValueError, match="weight has 3 channels but x has 2"):
        implicit_solve(torch.randn(1, 2, 6, 6), w, 0.1)
    with pytest.raises(ValueError, match=r"x must be 4-D \(B, C, H, W\)"):
        implicit_solve(torch.randn(3, 6, 6), w, 0.1)
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, k, k\)"):
        implicit_solve(x, torch.randn(3, 3, 3, 3), 0.1)
    with pytest.raises(ValueError, match="kernel_size=4: only odd kernel sizes"):
        implicit_solve(x, torch.randn(3, 1, 4, 4), 0.1)
    with pytest.raises(ValueError, match="backend='fast' is not a backend"):
        implicit_solve(x, w, 0.1, backend="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        implicit_solve(torch.randn(1, 3, 6, 6), torch.randn(3, 1, 3, 3), 0.1, backend="cuda")
