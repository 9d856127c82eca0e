"""The networks of "Factorized Convolutional Neural Networks": Table 1's skeleton and every
body, their multiply-adds against the paper's and against hand formulas written here from
eqs. (2), (6), (7) and (8), their parameters, the per-layer counter against FlopCounterMode,
and the Table 7 sweep."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
import torchvision

from effconv_ref.cost import count_cost, layer_macs
from effconv_ref.models import build, list_models
from effconv_ref.models.factorized import (
    TPS_2D,
    TPS_3D,
    BottleneckPair,
    FactorizedNet,
    MaxPool,
    Residual,
    comp,
    stage_costs,
    table1,
)
from effconv_ref.resources import read_json
from effconv_ref.sic import SICConv2d, TpSConv2d, UnravelledConv2d

LETTERS = "ABCDEFGHIJLM"
NAMES = [f"factorized/{m}" for m in LETTERS]
STAGES = [(128, 36 * 36), (256, 18 * 18), (512, 6 * 6)]  # (c, h w) of stages 2-4 at 221 and 224


def on_meta(name, **kwargs):
    with torch.device("meta"):
        return build(name, num_classes=1000, **kwargs)


def total(rows):
    return sum(r["macs"] for r in rows)


# --------------------------------------------------------------------------------------
# hand formulas, from the paper's equations and Table 1 (independent of the model code)
# --------------------------------------------------------------------------------------


def skeleton_macs(image):
    """7x7/2 unpadded 3 -> 64, the three widening 1x1s, 512 -> 1024 at 6x6, FC 1024 -> 2048 -> 1000."""
    side = (image - 7) // 2 + 1
    return (64 * 3 * 49 * side * side + 128 * 64 * 36 * 36 + 256 * 128 * 18 * 18
            + 512 * 256 * 6 * 6 + 1024 * 512 * 6 * 6 + 1024 * 2048 + 2048 * 1000)


def standard(c, n, k, hw):        # eq. (2)
    return n * c * k * k * hw


def unravelled(c, n, k, b, hw):   # eq. (6)
    return b * c * k * k * hw + b * c * n * hw


def sic(c, n, k, hw):             # eq. (7)
    return c * k * k * hw + c * n * hw


def tps(n, k, prod_t, hw):        # eq. (8): each of n outputs reads prod_t inputs
    return n * prod_t * k * k * hw


def body_macs(letter, c, hw):
    """The body of one stage (after its opening 1x1), as sections 3.1-3.3 describe it."""
    if letter == "A":
        return 2 * standard(c, c, 3, hw)
    if letter == "B":
        return 2 * unravelled(c, c, 3, 4, hw)
    if letter in "CDE":
        return {"C": 2, "D": 4, "E": 6}[letter] * sic(c, c, 3, hw)
    if letter == "F":
        return 4 * sic(c, c, 5, hw)
    if letter == "G":
        return 4 * tps(c, 3, c // 4, hw)
    if letter == "H":
        return 4 * tps(c, 3, c * 30 // 128, hw)  # 30/128 of the channels: 2·5·3, 4·5·3, 4·5·6
    if letter == "I":
        return 4 * standard(c // 4, c // 4, 3, hw) * 4  # 4 groups of c/4 -> c/4
    if letter == "J":
        return 8 * (c * 9 * hw + tps(c, 1, c // 4, hw))
    pairs = {"L": 4, "M": 6}[letter]
    return pairs * (sic(c, c // 2, 3, hw) + sic(c // 2, c, 3, hw))


def expected_macs(letter, image=221):
    return skeleton_macs(image) + sum(body_macs(letter, c, hw) for c, hw in STAGES)


def expected_params(letter, classes=1000):
    """Weights of every convolution and FC, BN's two per channel, the FC biases."""
    skeleton = (3 * 64 * 49 + 2 * 64 + 64 * 128 + 2 * 128 + 128 * 256 + 2 * 256 + 256 * 512 + 2 * 512
                + 512 * 1024 + 2 * 1024 + 1024 * 2048 + 2048 + 2048 * classes + classes)
    body = 0
    for c, _ in STAGES:
        bn = 2 * c
        body += {
            "A": 2 * (9 * c * c + bn),
            "B": 2 * (4 * c * 9 + 4 * c * c + bn),
            "C": 2 * (9 * c + c * c + bn),
            "D": 4 * (9 * c + c * c + bn),
            "E": 6 * (9 * c + c * c + bn),
            "F": 4 * (25 * c + c * c + bn),
            "G": 4 * (9 * c * c // 4 + bn),
            "H": 4 * (9 * c * (c * 30 // 128) + bn),
            "I": 4 * (9 * c * c // 4 + bn),
            "J": 8 * (9 * c + c * c // 4 + bn),
            "L": 4 * (9 * c + c * c // 2 + c + 9 * c // 2 + c * c // 2 + bn),
            "M": 6 * (9 * c + c * c // 2 + c + 9 * c // 2 + c * c // 2 + bn),
        }[letter]
    return skeleton + body


def test_the_hand_formulas_give_table_1():
    """The formulas above, not the models: A-F to the printed digit but C (267.3M, printed
    268M), L and M to Table 7's 381M and 492M."""
    assert [round(expected_macs(m) / 1e6) for m in "ABCDEFLM"] == [1093, 593, 267, 376, 485, 393, 381, 492]
    assert expected_macs("C") == 267_326_464 and skeleton_macs(221) == 158_706_688


# --------------------------------------------------------------------------------------
# building and running
# --------------------------------------------------------------------------------------


def test_registered():
    assert list_models("factorized/") == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_on_small_images(name):
    torch.manual_seed(0)
    model = build(name, num_classes=10)
    # batch 1 (eval: the last stage is 1x1 at 32x32, too small for batch statistics)
    model.eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    y = model(x)
    assert y.shape == (1, 10)
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    # batch 2 in training mode: every parameter gets a finite gradient
    model.train()
    model.zero_grad(set_to_none=True)
    y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)
    y.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_runs_at_221_and_224():
    model = build("factorized/C", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 221, 221)).shape == (1, 5)
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


@pytest.mark.parametrize("image", [221, 224])
def test_map_sizes_follow_table_1(image):
    rows = layer_macs(on_meta("factorized/D"), (3, image, image))
    sizes = {r["name"]: r["output_size"] for r in rows}
    assert sizes["stem.0"] == ((image - 7) // 2 + 1,) * 2  # 108 (221) or 109 (224)
    assert [sizes[f"stages.{i}.opening.0"] for i in range(3)] == [(36, 36), (18, 18), (6, 6)]
    assert sizes["widen.0"] == (6, 6)


def test_the_skeleton():
    model = build("factorized/A", num_classes=1000)
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == \
        (3, 64, (7, 7), (2, 2), (0, 0))
    assert [(type(p), p.kernel_size, p.stride) for p in model.pools] == \
        [(MaxPool, 3, 3), (MaxPool, 2, 2), (MaxPool, 3, 3)]
    assert [(s.opening[0].in_channels, s.opening[0].out_channels, s.opening[0].kernel_size)
            for s in model.stages] == [(64, 128, (1, 1)), (128, 256, (1, 1)), (256, 512, (1, 1))]
    assert (model.widen[0].in_channels, model.widen[0].out_channels) == (512, 1024)
    assert (model.fc[0].in_features, model.fc[0].out_features, model.fc[2].p) == (1024, 2048, 0.2)
    assert (model.classifier.in_features, model.classifier.out_features) == (2048, 1000)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 1 + 3 + 6 + 1  # BN after every convolution
    assert all(c.bias is None for c in convs)


def layers_of(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_the_bodies():
    a, b = build("factorized/A"), build("factorized/B")
    assert [len(s.body) for s in a.stages] == [2, 2, 2]
    assert all(isinstance(layer[0], Residual) and layer[0].f.kernel_size == (3, 3)
               for s in a.stages for layer in s.body)
    unravelled = layers_of(b, UnravelledConv2d)
    assert len(unravelled) == 6 and {u.bases for u in unravelled} == {4}
    for letter, count, k in (("C", 2, 3), ("D", 4, 3), ("E", 6, 3), ("F", 4, 5)):
        sics = layers_of(build(f"factorized/{letter}"), SICConv2d)
        assert len(sics) == 3 * count and {s.kernel_size for s in sics} == {k}
        assert all(s.residual for s in sics)
    for letter, grids in (("G", TPS_2D), ("H", TPS_3D)):
        layers = layers_of(build(f"factorized/{letter}"), TpSConv2d)
        assert len(layers) == 12 and {t.kernel_size for t in layers} == {3}
        assert [(t.grid, t.neighborhood) for t in layers[::4]] == [grids[c] for c in (128, 256, 512)]
    assert TPS_2D == {128: ((8, 16), (4, 8)), 256: ((16, 16), (8, 8)), 512: ((16, 32), (8, 16))}
    assert TPS_3D == {128: ((4, 8, 4), (2, 5, 3)), 256: ((8, 8, 4), (4, 5, 3)), 512: ((8, 8, 8), (4, 5, 6))}
    grouped = [m for m in build("factorized/I").modules() if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert len(grouped) == 12 and {g.kernel_size for g in grouped} == {(3, 3)}
    j = layers_of(build("factorized/J"), SICConv2d)
    assert len(j) == 24 and all(isinstance(s.proj, TpSConv2d) and s.proj.density == 0.25 for s in j)
    for letter, pairs in (("L", 4), ("M", 6)):
        model = build(f"factorized/{letter}")
        assert [len(s.body) for s in model.stages] == [pairs] * 3
        for stage, c in zip(model.stages, (128, 256, 512)):
            for pair in stage.body:
                assert isinstance(pair, BottleneckPair)
                assert (pair.sic_a.channels, pair.sic_a.out_channels, pair.sic_b.out_channels) == (c, c // 2, c)
                assert not pair.sic_a.residual and not pair.sic_b.residual  # the pair has the residual


@pytest.mark.parametrize("name", NAMES)
def test_every_body_layer_has_its_residual(name):
    """With every body weight zero, each layer (or bottleneck pair) passes its input on:
    relu(bn(0 + x)), BN at its initial running statistics. (The maps have the sizes of a
    32x32 image's, 4, 2 and 1, the shapes the test above has already run.)"""
    torch.manual_seed(0)
    model = build(name).eval()
    eps = 1e-5
    for stage, size in zip(model.stages, (4, 2, 1)):
        for p in stage.body.parameters():
            if p.dim() > 1:  # convolution weights, not BN's
                nn.init.zeros_(p)
        x = torch.rand(2, stage.opening[0].out_channels, size, size)
        with torch.no_grad():
            y = stage.body(x)
        depth = len(stage.body)
        torch.testing.assert_close(y, x / math.sqrt(1 + eps) ** depth)


# --------------------------------------------------------------------------------------
# multiply-adds and parameters
# --------------------------------------------------------------------------------------

PAPER = read_json("papers/factorized_tables.json")
PRINTED = {e["model"]: e["flops"] for e in PAPER["table1"]["entries"] + PAPER["table7"]["entries"]}

EXACT = {"A": 1_092_987_904, "B": 593_185_792, "C": 267_326_464, "D": 375_946_240, "E": 484_566_016,
         "F": 393_051_136, "G": 625_847_296, "H": 596_651_008, "I": 625_847_296, "J": 281_758_720,
         "L": 380_756_992, "M": 491_782_144}


@pytest.mark.parametrize("letter", LETTERS)
def test_macs_at_221_and_224(letter):
    model = on_meta(f"factorized/{letter}")
    at221, at224 = total(layer_macs(model, (3, 221, 221))), total(layer_macs(model, (3, 224, 224)))
    assert at221 == expected_macs(letter) == EXACT[letter]
    assert at224 == expected_macs(letter, 224) == at221 + 64 * 3 * 49 * (109 ** 2 - 108 ** 2)
    if letter in PRINTED:  # Table 1 (A-F) and Table 7 (L, M)
        assert abs(at221 / PRINTED[letter] - 1) < 0.01


@pytest.mark.parametrize("letter", LETTERS)
def test_parameter_counts(letter):
    model = on_meta(f"factorized/{letter}")
    assert sum(p.numel() for p in model.parameters()) == expected_params(letter)


def test_l_and_m_parameters_match_table_7():
    assert expected_params("L") == 6_293_288 and expected_params("M") == 7_010_984
    assert round(expected_params("L") / 1e5) == 63 and round(expected_params("M") / 1e6) == 7  # 6.3M, 7M


def test_comp_is_the_channel_mixing_part_per_stage():
    """Tables 2, 5 and 6's "Comp": the bodies' channel-mixing multiply-adds over A's, exactly."""
    printed = {e["model"]: Fraction(*e["comp"])
               for t in ("table2", "table5", "table6") for e in PAPER[t]["entries"]}
    assert printed == {"A": 1, "B": Fraction(4, 9), "C": Fraction(1, 9), "D": Fraction(2, 9),
                       "E": Fraction(1, 3), "G": Fraction(1, 2), "H": Fraction(15, 32),
                       "I": Fraction(1, 2), "J": Fraction(1, 9)}
    for letter, ratio in printed.items():
        assert comp(letter) == ratio, letter


def test_per_stage_body_costs():
    a = stage_costs(on_meta("factorized/A"))
    assert [(s["stage"], s["channels"], s["size"]) for s in a] == [(2, 128, 36), (3, 256, 18), (4, 512, 6)]
    for letter in "BCDEFGHIJLM":
        mine = stage_costs(on_meta(f"factorized/{letter}"))
        for s, base, (c, hw) in zip(mine, a, STAGES):
            assert s["body"] == s["intra"] + s["channel"] == body_macs(letter, c, hw)
            ratio = Fraction(s["body"], base["body"])
            if letter in "GHI":  # no depth-wise part: exactly 1/2, 15/32, 1/2 per stage
                assert s["intra"] == 0
                assert ratio == {"G": Fraction(1, 2), "H": Fraction(15, 32), "I": Fraction(1, 2)}[letter]
            if letter == "J":  # projections 1/9 of A, plus 8 depth-wise 3x3 filters: 1/9 + 4/c
                assert ratio == Fraction(1, 9) + Fraction(4, c)


def test_table1_rows():
    rows = {r["model"]: r for r in table1()}
    assert list(rows) == list("ABCDEFLM")
    for letter, r in rows.items():
        assert r["macs"] == EXACT[letter] and r["paper"] == PRINTED[letter]
        assert r["relative"] == pytest.approx(EXACT[letter] / PRINTED[letter] - 1)
        assert r["params"] == expected_params(letter)
    assert round(rows["C"]["relative"], 4) == -0.0025  # 267.3M against the printed 268M
    assert table1(224, models="G")[0]["paper"] is None


# --------------------------------------------------------------------------------------
# the per-layer counter against FlopCounterMode
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_layer_macs_agree_with_flop_counter(name):
    model = on_meta(name)
    x = torch.zeros(1, 3, 221, 221, device="meta")
    assert total(layer_macs(model, (3, 221, 221))) == count_cost(model, x).macs


@pytest.mark.parametrize("name, macs", [("resnet34", 3_663_761_408), ("vgg16", 15_470_264_320)])
def test_layer_macs_of_torchvision_networks(name, macs):
    with torch.device("meta"):
        model = getattr(torchvision.models, name)()  # untrained: nothing is downloaded
    rows = layer_macs(model, (3, 224, 224))
    assert total(rows) == count_cost(model, torch.zeros(1, 3, 224, 224, device="meta")).macs == macs
    assert rows[0]["name"] in ("conv1", "features.0") and rows[-1]["type"] == "Linear"


def test_layer_macs_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
                          TpSConv2d(8, 3, (2, 4), (2, 2)), Residual(nn.Conv2d(8, 8, 1)),
                          nn.Flatten(), nn.Linear(8 * 5 * 4, 3))
    model.train()
    model[1].eval()  # a frozen BN stays frozen
    rows = layer_macs(model, (4, 9, 7))
    assert [m.training for m in model] == [True, False, True, True, True, True, True]  # restored
    assert [(r["name"], r["type"], r["groups"], r["output_size"], r["fan_in"], r["outputs"]) for r in rows] == [
        ("0", "Conv2d", 2, (5, 4), 2 * 9, 8 * 20),
        ("3", "TpSConv2d", None, (5, 4), 4 * 9, 8 * 20),
        ("4.f", "Conv2d", 1, (5, 4), 8, 8 * 20),
        ("6", "Linear", None, None, 160, 3),
    ]
    assert total(rows) == count_cost(model.eval(), torch.randn(1, 4, 9, 7)).macs
    assert all(r["macs"] == r["fan_in"] * r["outputs"] for r in rows)


def test_layer_macs_refuses_what_it_cannot_count():
    with pytest.raises(TypeError, match=r"layer_macs counts nn.Conv2d, nn.Linear and TpSConv2d; 1 \(PReLU\)"):
        layer_macs(nn.Sequential(nn.Conv2d(3, 3, 1), nn.PReLU()), (3, 4, 4))
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\)"):
        layer_macs(nn.Conv2d(3, 3, 1), (1, 3, 4, 4))


# --------------------------------------------------------------------------------------
# misuse
# --------------------------------------------------------------------------------------


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match=r"unknown model 'factorized/K'; did you mean"):
        build("factorized/K")
    with pytest.raises(ValueError, match=r"unknown model 'factorized/a'; did you mean 'factorized/A'\?"):
        build("factorized/a")
    with pytest.raises(ValueError, match=r"model='N'; choose one of A, B, C, D, E, F, G, H, I, J, L, M"):
        FactorizedNet("N")
    with pytest.raises(TypeError, match="unexpected keyword argument 'width'"):
        build("factorized/A", width=2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        build("factorized/A", num_classes=0)
    with pytest.raises(ValueError, match="channels=7 must be even"):
        BottleneckPair(7)


def test_bad_inputs():
    model = build("factorized/C", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"input is 6x9; the 7x7 convolution of stage 1 \(unpadded\) needs"):
        model(torch.randn(1, 3, 6, 9))
    with pytest.raises(ValueError, match=r"input has 1 channels but in_channels=3"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="must be 4-D"):
        model(torch.randn(3, 64, 64))
    assert build("factorized/C", in_channels=1)(torch.randn(2, 1, 64, 64)).shape == (2, 10)  # the registry's default


def map_sizes(image):
    """The side of the map after the 7x7 convolution and after each max-pool."""
    sizes = [(image - 7) // 2 + 1]
    for pool in (MaxPool(3), MaxPool(2), MaxPool(3)):
        sizes.append(pool(torch.zeros(1, 1, sizes[-1], sizes[-1])).shape[-1])
    return sizes


def test_pools_round_down_and_degrade_gracefully():
    assert map_sizes(221) == [108, 36, 18, 6] and map_sizes(224) == [109, 36, 18, 6]
    assert map_sizes(64) == [29, 9, 4, 1] and map_sizes(41) == [18, 6, 3, 1]
    # below 41x41 a window finds a smaller map: ceil rounding keeps its one partial window
    assert map_sizes(40) == [17, 5, 2, 1] and map_sizes(32) == [13, 4, 2, 1] and map_sizes(7) == [1, 1, 1, 1]
    for image in range(7, 230):
        floor = [(image - 7) // 2 + 1]
        for k in (3, 2, 3):
            floor.append((floor[-1] - k) // k + 1)
        assert (map_sizes(image) == floor) == (image >= 41), image
    model = build("factorized/A", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 7, 7)).shape == model(torch.randn(1, 3, 40, 33)).shape == (1, 4)
    x = torch.arange(10.0).reshape(1, 1, 2, 5)  # smaller than the 3x3 window in height
    torch.testing.assert_close(MaxPool(3)(x), torch.tensor([[[[7.0, 9.0]]]]))  # columns 0-2, 3-4


# --------------------------------------------------------------------------------------
# the Table 7 sweep
# --------------------------------------------------------------------------------------


def test_table7_sweep_on_the_cpu_preset():
    from effconv_ref import sweeps

    assert sweeps.SWEEPS["factorized-table7"] is sweeps.factorized_table7
    gpu = sweeps.FACTORIZED_TABLE7["gpu"]
    assert (gpu["batch"], gpu["image_size"]) == (128, 224)
    records = sweeps.factorized_table7("cpu", device="cpu", repeats=1)
    assert [(r["name"], r["baseline"], r["dtype"]) for r in records] == [
        ("factorized/M", "resnet34", "float32"), ("factorized/L", "vgg16", "float32")]
    n = sweeps.FACTORIZED_TABLE7["cpu"]["image_size"]
    for r in records:
        model = on_meta(r["name"])
        with torch.device("meta"):
            baseline = getattr(torchvision.models, r["baseline"])()
        assert r["macs"] == total(layer_macs(model, (3, n, n)))
        assert r["baseline_macs"] == total(layer_macs(baseline, (3, n, n)))
        assert r["mac_ratio"] == pytest.approx(r["baseline_macs"] / r["macs"])
        assert r["speedup"] == pytest.approx(r["baseline_s"] / r["time_s"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["mac_ratio"])
        assert r["math_mode"] == "fp32" and r["floor_s"] > 0 and r["flops"] == 2 * r["macs"]
        assert r["params"] == expected_params(r["name"][-1])
    with pytest.raises(ValueError, match="preset='huge'"):
        sweeps.factorized_table7("huge")
