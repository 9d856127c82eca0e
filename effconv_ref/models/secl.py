"""The networks of "Training Structured Efficient Convolutional Layers" (section 4.1,
Table 1): WRN-40-2 of Zagoruyko & Komodakis and its SECL versions, built by name.

``secl/wrn-40-2``          the teacher: every block convolution a 3x3 ``nn.Conv2d``
``secl/wrn-40-2-secl``     the 36 block convolutions ``ACDCConv2d(in, out, 3, stride, 1,
                           depth=12)``: a full-rank depth-wise 3x3, then 12 ACDC layers
``secl/wrn-40-2-secl-lr``  the same with ``depthwise="acdc"``: each 3x3 filter one ACDC
                           matrix (6 parameters instead of 9)

Architecture (Zagoruyko & Komodakis, 2016)::

    conv1   3x3 nn.Conv2d in_channels -> 16 (no bias)
    group g six pre-activation basic blocks, widths 32 / 64 / 128, strides 1 / 2 / 2:
            o = σ(BN(x));  y = conv_b(σ(BN(conv_a(o, stride))));  x ↦ y + shortcut
            the shortcut is a 1x1 nn.Conv2d(o, stride) on each group's first block and
            the identity x on the others
    head    BN, σ, 8x8 average pooling (global at 32x32), linear classifier

conv1 and the 1x1 shortcuts stay standard ``nn.Conv2d`` in every variant. Parameters:
2,243,546 / 105,578 / 97,850 (10 classes). ``model.groups`` (an ``nn.ModuleList`` of the
three groups) is where attention transfer reads its maps (:mod:`effconv_ref.distill`).

Readings of the text, and why
-----------------------------
- **Where the shortcut starts.** As in the authors' code of the WRN paper, the 1x1 shortcut
  reads the pre-activated ``o`` (it needs the normalised input as much as ``conv_a`` does).
- **Pooling.** "8x8 average pooling" is global average pooling on 32x32 inputs; we pool
  globally, so the same network also runs on other image sizes.
- **Initialisation.** Full convolutions: He et al.'s normal, ``fan_out`` (the WRN code); the
  depth-wise filters of the SECL layers: He et al.'s normal with ``fan_in = k²`` so that
  each filter keeps its input's scale; the ACDC diagonals ``N(1, 0.01²)`` (Moczulski et al.).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from effconv_ref.acdc import ACDCConv2d, stack_macs
from effconv_ref.models.registry import register

__all__ = ["CONVS", "WideBlock", "WideResNet", "wrn_costs"]

CONVS = ("full", "secl", "secl-lr")


def _conv(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if kind == "full":
        return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    return ACDCConv2d(in_channels, out_channels, 3, stride, 1, depth=12,
                      depthwise="full" if kind == "secl" else "acdc")


class WideBlock(nn.Module):
    """A pre-activation basic block: ``o = σ(BN(x))``, ``y = conv_b(σ(BN(conv_a(o))))``,
    ``y + shortcut(o)`` (a 1x1 convolution) or ``y + x``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv: str,
                 shortcut: bool):
        super().__init__()
        self.bn_a = nn.BatchNorm2d(in_channels)
        self.conv_a = _conv(conv, in_channels, out_channels, stride)
        self.bn_b = nn.BatchNorm2d(out_channels)
        self.conv_b = _conv(conv, out_channels, out_channels, 1)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                         if shortcut else None)
        if not shortcut and (in_channels != out_channels or stride != 1):
            raise ValueError("a block that changes the width or the size needs shortcut=True")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn_a(x))
        y = self.conv_b(F.relu(self.bn_b(self.conv_a(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` (``depth = 6n + 4``: ``n`` blocks per group) with block
    convolutions of kind ``conv`` (``"full"``, ``"secl"`` or ``"secl-lr"``)."""

    def __init__(self, depth: int = 40, width: int = 2, conv: str = "full",
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 \
                or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, …); "
                             f"got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int; got {width!r}")
        if conv not in CONVS:
            raise ValueError(f"conv={conv!r}; choose one of {', '.join(CONVS)}")
        self.depth, self.width, self.conv = depth, width, conv
        blocks = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups, c = [], 16
        for w, stride in zip(widths, (1, 2, 2)):
            groups.append(nn.Sequential(*[
                WideBlock(c if b == 0 else w, w, stride if b == 0 else 1, conv, b == 0)
                for b in range(blocks)
            ]))
            c = w
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Conv2d):  # the depth-wise part of an ACDCConv2d
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, conv={self.conv!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.groups:
            x = group(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("secl/wrn-40-2")
def wrn_40_2(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-2, the teacher of Table 1 (2,243,546 parameters)."""
    return WideResNet(40, 2, "full", num_classes, in_channels, **kwargs)


@register("secl/wrn-40-2-secl")
def wrn_40_2_secl(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-SECL(40,2): every block convolution an ``ACDCConv2d`` (105,578 parameters)."""
    return WideResNet(40, 2, "secl", num_classes, in_channels, **kwargs)


@register("secl/wrn-40-2-secl-lr")
def wrn_40_2_secl_lr(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-SECL-LR(40,2): ``ACDCConv2d(depthwise="acdc")`` (97,850 parameters)."""
    return WideResNet(40, 2, "secl-lr", num_classes, in_channels, **kwargs)


# --------------------------------------------------------------------------------------
# what the networks cost, counted two ways
# --------------------------------------------------------------------------------------


def wrn_costs(model: WideResNet, image_size: int = 32, rule: str = "ours") -> dict:
    """Parameters and test-time multiply-adds of ``model`` on one ``image_size²`` image,
    layer by layer, by formula.

    ``rule="ours"``: the model as it runs. Each SECL layer costs its depth-wise filter
    (``k² in`` per output pixel) plus the cheaper of its two exact paths (the paper's
    "whichever would be cheaper", :func:`~effconv_ref.acdc.choose_backend`): the 12-layer
    stack, ``12 (4N + 5N log2 N)``, or the stack multiplied out with the tiling folded
    in, one ``N x in`` matrix, ``N · in``.

    ``rule="min"``: the same rule with the multiplied-out stack applied to the tiled
    input as the square ``N x N`` matrix, ``N²`` (what the paper's rule gives when the
    tiling is not folded in).

    ``rule="paper"``: the convention that reproduces Table 1's 46.4K and 33.2M. Each
    12-layer stack is counted as one ACDC layer (``2N`` parameters, ``4N + 5N log2 N``
    operations, again against ``N²``) at the resolution of the layer's *input* (which
    differs for the two stride-2 layers, as a counter that reads each layer's input size
    would count it), and every ReLU output and every input of the average pooling counts
    as one operation.

    Returns ``params``, ``macs`` and the part of ``macs`` in each kind of layer.
    """
    if rule not in ("ours", "min", "paper"):
        raise ValueError(f"rule={rule!r}; choose 'ours', 'min' or 'paper'")
    parts = {"conv1": 0, "block convolutions": 0, "shortcuts": 0, "classifier": 0,
             "relu and pooling": 0}
    params = sum(p.numel() for p in model.parameters())
    n = image_size
    c1 = model.conv1
    parts["conv1"] = 9 * c1.in_channels * c1.out_channels * n * n
    for group in model.groups:
        for block in group:
            stride = block.conv_a.stride if isinstance(block.conv_a, ACDCConv2d) \
                else block.conv_a.stride[0]
            m = (n - 1) // stride + 1
            if rule == "paper":
                parts["relu and pooling"] += block.bn_a.num_features * n * n \
                    + block.bn_b.num_features * m * m
            for conv in (block.conv_a, block.conv_b):
                if isinstance(conv, nn.Conv2d):
                    parts["block convolutions"] += (9 * conv.in_channels * conv.out_channels
                                                    * m * m)
                    continue
                N, depth, pixels = conv.out_channels, conv.acdc.depth, m * m
                if rule == "paper":  # one ACDC layer, at the input's resolution
                    params -= 2 * N * (depth - 1)
                    depth = 1
                    pixels = (n * n) if conv is block.conv_a else m * m
                dense = N * conv.in_channels if rule == "ours" else N * N
                pointwise = min(stack_macs(N, depth), dense)
                parts["block convolutions"] += 9 * conv.in_channels * m * m \
                    + round(pointwise * pixels)
            if block.shortcut is not None:
                s = block.shortcut
                parts["shortcuts"] += s.in_channels * s.out_channels * m * m
            n = m
    parts["classifier"] = model.fc.in_features * model.fc.out_features
    if rule == "paper":
        parts["relu and pooling"] += 2 * model.bn.num_features * n * n
    return {"params": params, "macs": sum(parts.values()), "parts": parts}
