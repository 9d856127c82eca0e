"""Cost by formula agrees with cost by counting; expectations written from the textbook."""

import math

import pytest
import torch
from torch import nn

from effconv_ref.cost import (
    Cost,
    bound,
    conv2d_cost,
    count_cost,
    lean_cost,
    count_params,
    depthwise_cost,
    fft_flops,
    pointwise_cost,
    roofline_floor,
)

# (in, out, kernel, H, W, stride, padding, groups, bias, batch)
CONVS = [
    (8, 16, 3, 12, 12, 1, 1, 1, False, 1),  # 3x3 "same"
    (8, 16, 1, 12, 12, 1, 0, 1, False, 2),  # 1x1
    (12, 12, 3, 11, 7, 1, 1, 12, False, 1),  # depth-wise, odd non-square image
    (6, 10, 3, 13, 9, 2, 1, 1, True, 3),  # stride 2, odd sizes, bias
    (4, 6, (3, 5), 10, 15, 1, (1, 2), 2, True, 1),  # rectangular kernel, groups 2
    (5, 7, 5, 9, 9, 2, 0, 1, False, 1),  # no padding, stride 2
]


@pytest.mark.parametrize("cin,cout,k,h,w,s,p,g,bias,batch", CONVS)
def test_conv2d_cost_matches_counting(cin, cout, k, h, w, s, p, g, bias, batch):
    layer = nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g, bias=bias)
    x = torch.randn(batch, cin, h, w)
    counted = count_cost(layer, x)
    formula = conv2d_cost(cin, cout, k, h, w, stride=s, padding=p, groups=g, bias=bias,
                          batch=batch)
    assert formula.macs == counted.macs
    assert formula.params == count_params(layer) == counted.params
    assert formula.bytes == counted.bytes


def test_conv2d_cost_by_hand():
    # 3x3 conv, 8 -> 16 channels, 10x14 image, stride 2, padding 1, bias, batch 2, float32.
    # Output: floor((10 + 2 - 3) / 2) + 1 = 5, floor((14 + 2 - 3) / 2) + 1 = 7.
    cost = conv2d_cost(8, 16, 3, 10, 14, stride=2, padding=1, bias=True, batch=2)
    params = 16 * 8 * 3 * 3 + 16  # 1168
    macs = 2 * 16 * 5 * 7 * 8 * 3 * 3  # 80640
    moved = 4 * (2 * 8 * 10 * 14 + params + 2 * 16 * 5 * 7)  # 4 * (2240 + 1168 + 1120)
    assert (cost.params, cost.macs, cost.bytes) == (params, macs, moved) == (1168, 80640, 18112)


def test_padding_none_is_same_for_odd_kernels():
    cost = conv2d_cost(3, 4, 5, 9, 11)  # padding 2: output 9 x 11
    assert cost.macs == 4 * 9 * 11 * 3 * 5 * 5


def test_building_blocks():
    # depth-wise 3x3 on 32 channels of 16x16: one 3x3 filter per channel
    dw = depthwise_cost(32, 3, 16, 16)
    assert (dw.params, dw.macs) == (32 * 9, 32 * 16 * 16 * 9)
    # 1x1 from 32 to 64 channels on 16x16
    pw = pointwise_cost(32, 64, 16, 16)
    assert (pw.params, pw.macs) == (32 * 64, 64 * 16 * 16 * 32)
    # the separable pair costs far less than the dense 3x3 it replaces
    dense = conv2d_cost(32, 64, 3, 16, 16)
    assert (dw + pw).macs / dense.macs == pytest.approx((9 + 64) / (9 * 64))


class _FFTRoundTrip(nn.Module):
    def forward(self, x):
        return torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])


def test_fft_counting_uses_the_estimate():
    # rfft2 then irfft2 of 2 x 3 images of 8 x 16 = 128 points: each a real-input transform,
    # 2.5 N log2 N = 2.5 * 128 * 7 = 2240 flops, 6 images, two transforms
    x = torch.randn(2, 3, 8, 16)
    counted = count_cost(_FFTRoundTrip(), x)
    flops = 2 * 6 * 2.5 * 128 * 7
    assert counted.macs == flops / 2 == 13440
    assert counted.params == 0
    assert counted.bytes == 2 * (2 * 3 * 8 * 16 * 4)  # input and output, float32


def test_fft_complex_counting():
    # a complex FFT of 16 points along the last dim, 4 rows: 4 * 5 * 16 * 4 flops
    z = torch.randn(4, 16, dtype=torch.complex64)
    counted = count_cost(lambda t: torch.fft.fft(t), z)
    assert counted.macs == 4 * 5 * 16 * 4 / 2
    assert counted.bytes == 2 * (4 * 16 * 2 * 4)  # complex numbers are two floats


def test_fft_flops_formula():
    assert fft_flops(1024) == 5 * 1024 * 10
    assert fft_flops(1024, real=True) == 2.5 * 1024 * 10
    assert fft_flops((8, 16), n_transforms=3) == 3 * 5 * 128 * 7
    assert fft_flops(12) == pytest.approx(5 * 12 * math.log2(12))


def test_cost_arithmetic():
    a = Cost(params=10, macs=100, bytes=50)
    b = Cost(params=1, macs=20, bytes=30)
    assert a + b == Cost(11, 120, 80)
    assert sum([a, b]) == a + b
    assert a.flops == 200
    assert a.intensity == 4.0
    assert (a + b).intensity == 240 / 80
    assert str(Cost(9408, 1_230_000, 410_000)) == (
        "params 9,408  MACs 1.23M  bytes 410.00KB  intensity 6.00 flop/B"
    )


def test_roofline():
    # 1 Gflop and 1 GB on a 10 Tflop/s, 1 TB/s device: 0.1 ms of math, 1 ms of traffic
    assert roofline_floor(1e9, 1e9, 1e13, 1e12) == pytest.approx(1e-3)
    assert bound(1e9, 1e9, 1e13, 1e12) == "memory"
    assert bound(1e12, 1e9, 1e13, 1e12) == "compute"
    with pytest.raises(ValueError, match="bandwidth"):
        roofline_floor(1, 1, 1, 0)


def test_bad_conv_arguments():
    with pytest.raises(ValueError, match="groups"):
        conv2d_cost(6, 4, 3, 8, 8, groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        conv2d_cost(3, 3, 7, 4, 4, padding=0)
    with pytest.raises(ValueError, match="height"):
        conv2d_cost(3, 3, 3, 0, 4)


def test_lean_cost_by_hand():
    """in=6, out=4 at 5x7, stride 2, batch 3: 24 + 16 weights; output 3x4."""
    c = lean_cost(6, 4, 5, 7, stride=2, batch=3)
    assert c.params == 6 * 4 + 4 * 4
    assert c.macs == 3 * 3 * 4 * (6 * 4 + 4 * 4)
    assert c.bytes == 4 * (3 * 6 * 5 * 7 + 40 + 3 * 4 * 3 * 4)
    assert lean_cost(4, 6, 8, 8, bias=True).params == 24 + 16 + 6
