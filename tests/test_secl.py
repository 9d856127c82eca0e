"""The WRN-40-2 of Table 1 and its SECL versions: exact parameter counts, shapes, the
parts each is made of, and both ways of counting their cost."""

import pytest
import torch
import torch.nn as nn

from effconv_ref.acdc import ACDCConv2d, ACDCDepthwise2d
from effconv_ref.models import build, list_models
from effconv_ref.models.secl import WideResNet, wrn_costs

NAMES = ["secl/wrn-40-2", "secl/wrn-40-2-secl", "secl/wrn-40-2-secl-lr"]


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_registered():
    assert list_models("secl/") == sorted(NAMES)


@pytest.mark.parametrize("name, params", list(zip(NAMES, [2_243_546, 105_578, 97_850])))
def test_parameter_counts_are_exact(name, params):
    assert count(build(name)) == params


def test_low_rank_saves_three_weights_per_depthwise_channel():
    # 36 depth-wise 3x3 layers see 16 + 11·32 + 32 + 11·64 + 64 + 11·128 = 2,576 channels
    assert 105_578 - 97_850 == 3 * 2_576


def test_block_convolutions_are_replaced_and_the_rest_stays():
    secl, lr = build("secl/wrn-40-2-secl"), build("secl/wrn-40-2-secl-lr")
    for model, depthwise in ((secl, nn.Conv2d), (lr, ACDCDepthwise2d)):
        convs = [m for m in model.modules() if isinstance(m, ACDCConv2d)]
        assert len(convs) == 36
        assert all(c.kernel_size == 3 and c.padding == 1 and c.acdc.depth == 12 for c in convs)
        assert all(isinstance(c.depthwise, depthwise) for c in convs)
        assert sorted({c.stride for c in convs}) == [1, 2]
        assert sum(c.stride == 2 for c in convs) == 2
        plain = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
        assert [tuple(m.kernel_size) for m in plain] == [(3, 3), (1, 1), (1, 1), (1, 1)]
    full = build("secl/wrn-40-2")
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in full.modules()) \
        == 37


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_groups(name):
    torch.manual_seed(0)
    model = build(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    sizes = []
    h = model.conv1(x)
    for group in model.groups:
        h = group(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert model(x).shape == (2, 7)
    assert model(torch.randn(1, 3, 24, 20)).shape == (1, 7)  # batch 1, another size


def test_small_wrn_and_bad_arguments():
    assert len(WideResNet(10, 1).groups[0]) == 1
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        WideResNet(41, 2)
    with pytest.raises(ValueError, match="width must be a positive int"):
        WideResNet(16, 0)
    with pytest.raises(ValueError, match="conv='dct'"):
        WideResNet(16, 1, conv="dct")


def test_costs_our_count_and_the_papers():
    wrn, secl, lr = (build(n) for n in NAMES)
    ours = [wrn_costs(m) for m in (wrn, secl, lr)]
    paper = [wrn_costs(m, rule="paper") for m in (wrn, secl, lr)]
    assert [c["params"] for c in ours] == [2_243_546, 105_578, 97_850]
    # Table 1: 2.24M / 46.4K / 38.7K parameters, 328M / 33.2M / 33.2M mult-adds
    assert [c["params"] for c in paper] == [2_243_546, 46_442, 38_714]
    assert [round(c["macs"] / 1e6, 1) for c in paper] == [328.3, 33.2, 33.2]
    assert round(ours[0]["macs"] / 1e6) == 328
    # every stack is cheaper multiplied out (N <= 128 < 600): with the tiling folded in,
    # the SECL network costs what the depth-wise-separable WRN costs; applied as N x N
    # matrices to the tiled input, 3 x 16·32·1024 more
    assert ours[1]["macs"] == ours[2]["macs"] == 44_127_488
    square = [wrn_costs(m, rule="min")["macs"] for m in (secl, lr)]
    assert square == [45_700_352] * 2 and square[0] - ours[1]["macs"] == 3 * 16 * 32 * 1024
    assert all(c.path() == "dense" for c in secl.modules() if isinstance(c, ACDCConv2d))
    with pytest.raises(ValueError, match="rule='both'"):
        wrn_costs(wrn, rule="both")


def counted_macs(model):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.randn(1, 3, 32, 32))
    return counter.get_total_flops() // 2


def test_counted_costs_agree_with_the_formula():
    """FlopCounterMode counts the same multiply-adds: WRN-40-2 as built, and WRN-SECL as it
    runs at test time, each SECL layer a depth-wise and an (out, in) 1x1 convolution."""
    wrn, secl = build("secl/wrn-40-2"), build("secl/wrn-40-2-secl")
    assert counted_macs(wrn) == wrn_costs(wrn)["macs"]
    for name, module in list(secl.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, ACDCConv2d):
                pointwise = nn.Conv2d(child.in_channels, child.out_channels, 1, bias=False)
                setattr(module, child_name, nn.Sequential(child.depthwise, pointwise))
    assert counted_macs(secl) == wrn_costs(build("secl/wrn-40-2-secl"))["macs"]
