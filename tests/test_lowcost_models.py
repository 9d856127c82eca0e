"""The networks of section 4 of Treister et al. (``lowcost/<step>-<net>``) against Table 2."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from effconv_ref import models
from effconv_ref.models.lowcost import NETWORKS, STEPS, ConnectingLayer, LowCostNet
from effconv_ref.steps import ExplicitRDStep, ImplicitRDStep

TABLE2 = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "papers" / "lowcost_table2.json").read_text()
)
NAMES = [f"lowcost/{step}-{net}" for step in STEPS for net in NETWORKS]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_count(step: str, widths, classes: int) -> int:
    """The closed form: opening + 4 steps per block + connecting layers + classifier."""
    per_step = {
        "resnet": lambda w: 18 * w * w + 2 * w,     # two 3x3 C x C convolutions, one BN
        "mobilenet": lambda w: w * w + 13 * w,      # 9w depth-wise, w² 1x1, two BNs
        "linearmix": lambda w: 2 * w * w + 20 * w,  # two (9w + w²), one BN
    }.get(step, lambda w: w * w + 11 * w)           # RD: 9w (K_dw or K_circ) + w² (M) + 2w (N)
    opening = 75 * widths[0] + 2 * widths[0]         # 5x5 conv 3 -> w_1, BN
    connecting = sum(9 * w + 4 * w for w in widths[:-1])
    classifier = (widths[-1] + 1) * classes
    return opening + sum(4 * per_step(w) for w in widths) + connecting + classifier


def test_all_eighteen_are_registered():
    assert models.list_models("lowcost/") == sorted(NAMES)
    assert len(NAMES) == 18


def test_table2_json_is_the_papers():
    assert "Table 2" in TABLE2["source"] and "Low-Cost Parameterizations" in TABLE2["source"]
    entries = TABLE2["entries"]
    assert len(entries) == 36
    assert {e["dataset"] for e in entries} == {"CIFAR-10", "CIFAR-100", "STL-10"}
    for e in entries:
        assert e["num_classes"] == (100 if e["dataset"] == "CIFAR-100" else 10)
        assert e["step"] in STEPS and e["network"] in NETWORKS
        assert 0 < e["val_acc"] < 100


@pytest.mark.parametrize("entry", TABLE2["entries"],
                         ids=lambda e: f"{e['step']}-{e['network']}-{e['dataset']}")
def test_parameter_counts_match_table2(entry):
    model = models.build(f"lowcost/{entry['step']}-{entry['network']}", num_classes=entry["num_classes"])
    n = count(model)
    assert n == expected_count(entry["step"], NETWORKS[entry["network"]], entry["num_classes"])
    # 10 classes: within 2% of the paper. 100 classes: within 10%, because the paper's
    # CIFAR-100 counts do not follow from its CIFAR-10 ones (see the lowcost module).
    tolerance = 0.02 if entry["num_classes"] == 10 else 0.10
    if (entry["step"], entry["network"], entry["num_classes"]) == ("resnet", "A", 10):
        # The one exception: the 24 fully coupled 3x3 convolutions of ResNet-A alone hold
        # 72 (32² + 64² + 128²) = 1,548,288 weights, already 3.2% above the printed 1.5M, so
        # no reading of the architecture is within 2%. Printed to two figures, "1.5M" is
        # [1.45M, 1.55M); our 1,555,082 (convolutions + BN + opening + connecting layers +
        # classifier) is 0.3% above that interval and 3.7% above 1.5M.
        assert 72 * (32**2 + 64**2 + 128**2) == 1_548_288
        tolerance = 0.04
    assert n == pytest.approx(entry["params"], rel=tolerance)


def test_hundred_classes_add_only_the_classifier():
    for net, widths in NETWORKS.items():
        grow = count(models.build(f"lowcost/exprd-{net}", num_classes=100)) \
            - count(models.build(f"lowcost/exprd-{net}", num_classes=10))
        assert grow == 90 * (widths[-1] + 1)
    assert 90 * (192 + 1) == 17370 and 90 * (256 + 1) == 23130


def test_exact_counts_quoted_in_the_docstring():
    exact = {  # (step, net, classes) -> parameters
        ("resnet", "A", 10): 1_555_082, ("resnet", "B", 10): 3_493_834,
        ("mobilenet", "A", 10): 102_666, ("mobilenet", "B", 10): 218_506,
        ("linearmix", "A", 10): 194_954, ("linearmix", "B", 10): 421_450,
        ("exprd", "A", 10): 100_874, ("exprd", "B", 10): 215_818,
        ("resnet", "B", 100): 3_511_204, ("resnet", "C", 100): 6_301_796,
        ("mobilenet", "B", 100): 235_876, ("mobilenet", "C", 100): 404_196,
        ("linearmix", "B", 100): 438_820, ("linearmix", "C", 100): 765_796,
        ("exprd", "B", 100): 233_188, ("exprd", "C", 100): 400_356,
    }
    for (step, net, classes), n in exact.items():
        assert expected_count(step, NETWORKS[net], classes) == n
    # the three RD steps cost the same (K_circ has k² C weights, like K_dw)
    for net in NETWORKS:
        counts = {count(models.build(f"lowcost/{s}-{net}")) for s in ("exprd", "imprd", "circrd")}
        assert len(counts) == 1


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_structure_of_network_c():
    model = models.build("lowcost/imprd-C", num_classes=100)
    assert sum(isinstance(m, ConnectingLayer) for m in model.modules()) == 3
    assert sum(isinstance(m, ImplicitRDStep) for m in model.modules()) == 16
    assert model.fc.in_features == 256 and model.fc.out_features == 100
    opening = model.opening[0]
    assert opening.kernel_size == (5, 5) and opening.in_channels == 3 and opening.bias is None
    # blocks at 32, 16, 8 and 4 pixels; the last block goes straight to global pooling
    x = model.opening(torch.randn(1, 3, 32, 32))
    sizes = []
    for layer in model.blocks:
        x = layer(x)
        if isinstance(layer, nn.Sequential):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert isinstance(model.blocks[-1], nn.Sequential)


def test_connecting_layer_is_n_of_x_and_kdw_x():
    layer = ConnectingLayer(3).double().eval()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        want = layer.norm(torch.cat([x, layer.depthwise(x)], dim=1))
        got = layer(x)
    torch.testing.assert_close(got, want)
    assert got.shape == (2, 6, 5, 4)
    assert count(layer) == 9 * 3 + 4 * 3


def test_step_keywords_reach_every_step():
    model = models.build("lowcost/exprd-A", h=0.05)
    steps = [m for m in model.modules() if isinstance(m, ExplicitRDStep)]
    assert len(steps) == 12 and all(s.h == 0.05 for s in steps)
    with pytest.raises(ValueError, match="h"):
        models.build("lowcost/imprd-A", h=0)
    with pytest.raises(TypeError):
        models.build("lowcost/resnet-A", h=0.1)  # the ResNet step has no time step


def test_other_inputs_and_bad_widths():
    model = models.build("lowcost/circrd-A", num_classes=7, in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    with torch.no_grad():  # STL-10 resolution
        assert models.build("lowcost/exprd-A").eval()(torch.randn(1, 3, 96, 96)).shape == (1, 10)
    with pytest.raises(ValueError, match="twice"):
        LowCostNet("exprd", (32, 48))
    with pytest.raises(ValueError, match="step"):
        LowCostNet("densenet", (32, 64))
