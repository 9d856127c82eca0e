"""The model registry and the baseline CIFAR ResNet."""

import pytest
import torch
import torch.nn as nn

from effconv_ref import models
from effconv_ref.models import registry
from effconv_ref.models.resnet import CifarResNet


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnets_are_registered():
    assert {"resnet/resnet8", "resnet/resnet20"} <= set(models.list_models())
    assert models.list_models("resnet/") == ["resnet/resnet20", "resnet/resnet8"]
    assert models.list_models() == sorted(models.list_models())
    assert models.list_models("no-such-family/") == []


def test_unknown_model_is_one_line_naming_the_choices():
    with pytest.raises(ValueError) as info:
        models.build("resnet/resnet21")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown model 'resnet/resnet21'; did you mean 'resnet/resnet20'")
    assert message.endswith("? choose one of: " + ", ".join(models.list_models()))


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @models.register("test/tiny")
    def tiny(num_classes=10, in_channels=3, **kwargs):
        return nn.Conv2d(in_channels, num_classes, 1)

    assert "test/tiny" in models.list_models("test/")
    assert isinstance(models.build("test/tiny", num_classes=4, in_channels=2), nn.Conv2d)
    with pytest.raises(ValueError, match="already registered"):
        models.register("test/tiny")(tiny)


def test_resnet20_parameter_count_matches_he_et_al():
    # He et al. (2016), table 6: ResNet-20 has 0.27M parameters
    assert count(models.build("resnet/resnet20")) == pytest.approx(0.27e6, rel=0.02)
    # 6n + 2 weighted layers: 19 convolutions in the main path + 1 linear, plus 2 projections
    model = models.build("resnet/resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2
    assert sum(m.kernel_size == (1, 1) for m in convs) == 2


@pytest.mark.parametrize("name", ["resnet/resnet8", "resnet/resnet20"])
def test_forward_shapes(name):
    torch.manual_seed(0)
    model = models.build(name, num_classes=7, in_channels=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    # STL-10 resolution: global pooling makes any size work
    assert models.build(name, num_classes=10)(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_stages_downsample_32_16_8():
    model = CifarResNet(1)
    x = model.stem(torch.randn(1, 3, 32, 32))
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_blocks_per_stage_must_be_positive():
    with pytest.raises(ValueError, match="blocks_per_stage"):
        CifarResNet(0)
