"""The dense matrix of eq. (4) against PyTorch's convolution, in float64 on random shapes."""

import pytest
import torch
import torch.nn.functional as F

from effconv_ref.matrix import conv2d_matrix, convolution_matrix

CASES = [  # (c_in, c_out, k, H, W, stride, groups)
    (3, 4, 3, 6, 5, 1, 1),
    (2, 5, 3, 7, 7, 2, 1),
    (4, 4, 3, 5, 8, 1, 4),
    (3, 2, 1, 4, 3, 1, 1),
    (6, 4, 5, 9, 6, 2, 2),
    (1, 1, 3, 1, 4, 1, 1),
]


@pytest.mark.parametrize("c_in,c_out,k,H,W,stride,groups", CASES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_matrix_equals_conv2d(c_in, c_out, k, H, W, stride, groups, boundary):
    g = torch.Generator().manual_seed(c_in * 100 + H * 10 + W)
    weight = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64, generator=g)
    x = torch.randn(c_in, H, W, dtype=torch.float64, generator=g)
    if boundary == "zeros":
        y = F.conv2d(x[None], weight, stride=stride, padding=k // 2, groups=groups)[0]
    else:
        if k // 2 > min(H, W):
            pytest.skip("circular padding needs the kernel radius within the image")
        xp = F.pad(x[None], (k // 2,) * 4, mode="circular")
        y = F.conv2d(xp, weight, stride=stride, groups=groups)[0]
    K = conv2d_matrix(weight, H, W, stride=stride, boundary=boundary, groups=groups)
    assert K.shape == (y.numel(), x.numel())
    torch.testing.assert_close(K @ x.reshape(-1), y.reshape(-1), rtol=1e-12, atol=1e-12)


def test_single_stencil_by_hand():
    """A 2x2 image and the stencil [[0,0,0],[0,a,b],[0,0,0]]: y = a x + b (x shifted left)."""
    s = torch.zeros(3, 3, dtype=torch.float64)
    s[1, 1], s[1, 2] = 2.0, 3.0
    expected = torch.tensor([[2.0, 3.0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 3.0], [0, 0, 0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(convolution_matrix(s, 2, 2), expected)
    periodic = expected.clone()
    periodic[1, 0] = periodic[3, 2] = 3.0
    torch.testing.assert_close(convolution_matrix(s, 2, 2, boundary="periodic"), periodic)


def test_bad_input():
    with pytest.raises(ValueError, match="boundary='reflect'"):
        convolution_matrix(torch.ones(3, 3), 4, 4, boundary="reflect")
    with pytest.raises(ValueError, match="weight must be 4-D"):
        conv2d_matrix(torch.ones(3, 3), 4, 4)
    with pytest.raises(ValueError, match="groups=2 must divide"):
        conv2d_matrix(torch.ones(3, 1, 3, 3), 4, 4, groups=2)
