"""The plain CIFAR ResNet of He et al. (2016), section 4.2: the baseline every cheap
convolution in the book is measured against.

A 3x3 convolution with 16 filters, then three stages of ``n`` basic blocks with 16, 32 and
64 channels on 32x32, 16x16 and 8x8 maps (the first block of stages 2 and 3 has stride 2
and a 1x1 projection shortcut), global average pooling and a linear classifier:
``6n + 2`` layers with weights. ``resnet/resnet20`` is ``n = 3`` (0.27M parameters),
``resnet/resnet8`` is ``n = 1``.
"""

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

from effconv_ref.models.registry import register


class CifarResNet(nn.Module):
    """CIFAR-style ResNet with ``blocks_per_stage`` basic blocks in each of three stages."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple = (16, 32, 64),
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for block in range(blocks_per_stage):
                downsample = None
                if block == 0 and (stride != 1 or channels != width):
                    downsample = nn.Sequential(
                        nn.Conv2d(channels, width, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(width),
                    )
                blocks.append(BasicBlock(channels, width, stride if block == 0 else 1, downsample))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet/resnet8")
def resnet8(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-8: one basic block per stage (78k parameters); the smoke-scale baseline."""
    return CifarResNet(1, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register("resnet/resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-20: three basic blocks per stage (0.27M parameters), He et al. (2016)."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, **kwargs)
