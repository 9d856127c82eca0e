"""The residual steps of effconv_ref.steps against their equations, built as dense matrices.

Each step is applied to a tiny image in float64 and compared with the paper's formula
computed independently: the convolutions as block matrices from ``conv2d_matrix`` (eq. 4/5),
the 1x1 convolution as a matrix, the normalisation as a per-channel affine map (eval mode,
non-trivial running statistics), and, for eq. 11, a dense ``torch.linalg.solve``.
"""

import pytest
import torch
import torch.nn as nn

from effconv_ref.matrix import conv2d_matrix, convolution_matrix
from effconv_ref.steps import (
    DEFAULT_H,
    CirculantRDStep,
    ExplicitRDStep,
    ImplicitRDStep,
    LinearMixStep,
    MobileNetStep,
    ResNetStep,
)

SHAPES = [  # (C, H, W, k): odd, non-square images
    (3, 5, 4, 3),
    (2, 7, 6, 5),
]
BATCHES = [1, 2]


def relu(v):
    return torch.clamp(v, min=0)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """float64, every parameter and BatchNorm statistic random, eval mode."""
    g = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=torch.float64))
    return module.eval()


def norm_matrix(bn: nn.BatchNorm2d, pixels: int):
    """N in eval mode as ``v -> s * v + b`` on a flattened (C H W) vector."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale.repeat_interleave(pixels), shift.repeat_interleave(pixels)


def apply_norm(bn, v, pixels):
    s, b = norm_matrix(bn, pixels)
    return s * v + b


def pointwise_matrix(conv: nn.Conv2d, H, W, boundary="periodic"):
    assert conv.kernel_size == (1, 1) and conv.bias is None
    return conv2d_matrix(conv.weight.detach(), H, W, boundary=boundary)


def depthwise_matrix(weight, H, W, boundary):
    return conv2d_matrix(weight.detach(), H, W, boundary=boundary, groups=weight.shape[0])


def circulant_matrix(weight, H, W):
    """K_circ (eq. 12) built block by block: block (c, c') is C(weight[(c - c') mod C]), periodic."""
    C = weight.shape[0]
    rows = [
        torch.cat([convolution_matrix(weight[(c - d) % C].detach(), H, W, boundary="periodic")
                   for d in range(C)], dim=1)
        for c in range(C)
    ]
    return torch.cat(rows, dim=0)


def run_dense(step, formula, B, C, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = step(x)
    want = torch.stack([formula(xi.reshape(-1)) for xi in x]).reshape(B, C, H, W)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- eq. 3

@pytest.mark.parametrize("C,H,W,k", SHAPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_resnet_step_is_eq3(C, H, W, k, B, boundary):
    step = randomise(ResNetStep(C, k, boundary=boundary), seed=1)
    K1 = conv2d_matrix(step.conv1.weight.detach(), H, W, boundary=boundary)
    K2 = conv2d_matrix(step.conv2.weight.detach(), H, W, boundary=boundary)

    def eq3(y):  # y + K2ᵀ σ(N(K1 y))
        return y + K2.T @ relu(apply_norm(step.norm, K1 @ y, H * W))

    run_dense(step, eq3, B, C, H, W, seed=2)


# --------------------------------------------------------------------------- eq. 13

@pytest.mark.parametrize("C,H,W,k", SHAPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_mobilenet_step_is_eq13(C, H, W, k, B, boundary):
    step = randomise(MobileNetStep(C, k, boundary=boundary), seed=3)
    K = depthwise_matrix(step.depthwise.weight, H, W, boundary)
    M = pointwise_matrix(step.pointwise, H, W)

    def eq13(y):  # ỹ = σ(N1(K_bd y)); σ(N2(M ỹ))
        t = relu(apply_norm(step.norm1, K @ y, H * W))
        return relu(apply_norm(step.norm2, M @ t, H * W))

    run_dense(step, eq13, B, C, H, W, seed=4)


# --------------------------------------------------------------------------- eqs. 3 + 7

@pytest.mark.parametrize("C,H,W,k", SHAPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_linearmix_step_is_eq3_with_eq7(C, H, W, k, B, boundary):
    step = randomise(LinearMixStep(C, k, boundary=boundary), seed=5)

    def K_lm(op):  # K_dw + M (eq. 7), from the two parameters, not from dense_weight()
        return (depthwise_matrix(op.depthwise, H, W, boundary)
                + conv2d_matrix(op.pointwise.detach(), H, W, boundary=boundary))

    K1, K2 = K_lm(step.conv1), K_lm(step.conv2)

    def eq3(y):
        return y + K2.T @ relu(apply_norm(step.norm, K1 @ y, H * W))

    run_dense(step, eq3, B, C, H, W, seed=6)


# --------------------------------------------------------------------------- eqs. 9, 11, 12

@pytest.mark.parametrize("C,H,W,k", SHAPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("boundary", ["periodic", "zeros"])
def test_explicit_rd_step_is_eq9(C, H, W, k, B, boundary):
    h = 0.3
    step = randomise(ExplicitRDStep(C, k, h=h, boundary=boundary), seed=7)
    K = depthwise_matrix(step.depthwise.weight, H, W, boundary)
    M = pointwise_matrix(step.pointwise, H, W)

    def eq9(y):  # y + h(−K_dwᵀ K_dw y + σ(N(M y)))
        return y + h * (-K.T @ (K @ y) + relu(apply_norm(step.norm, M @ y, H * W)))

    run_dense(step, eq9, B, C, H, W, seed=8)


@pytest.mark.parametrize("C,H,W,k", SHAPES)
@pytest.mark.parametrize("B", BATCHES)
def test_implicit_rd_step_is_eq11(C, H, W, k, B):
    h = 0.7
    step = randomise(ImplicitRDStep(C, k, h=h), seed=9)
    K = depthwise_matrix(step.depthwise.weight, H, W, "periodic")
    M = pointwise_matrix(step.pointwise, H, W)
    A = torch.eye(C * H * W, dtype=torch.float64) + h * K.T @ K

    def eq11(y):  # (I + h K_dwᵀ K_dw)⁻¹ (y + h σ(N(M y)))
        return torch.linalg.solve(A, y + h * relu(apply_norm(step.norm, M @ y, H * W)))

    run_dense(step, eq11, B, C, H, W, seed=10)


@pytest.mark.parametrize("C,H,W,k", SHAPES)
@pytest.mark.parametrize("B", BATCHES)
def test_circulant_rd_step_is_eq9_with_eq12(C, H, W, k, B):
    h = 0.4
    step = randomise(CirculantRDStep(C, k, h=h), seed=11)
    K = circulant_matrix(step.depthwise.weight, H, W)
    M = pointwise_matrix(step.pointwise, H, W)

    def eq9(y):  # y + h(−K_circᵀ K_circ y + σ(N(M y)))
        return y + h * (-K.T @ (K @ y) + relu(apply_norm(step.norm, M @ y, H * W)))

    run_dense(step, eq9, B, C, H, W, seed=12)


def test_train_mode_normalises_with_batch_statistics():
    """In train mode N uses the batch's mean and (biased) variance over (N, H, W)."""
    C, H, W, h = 3, 5, 4, 0.3
    step = randomise(ExplicitRDStep(C, 3, h=h), seed=13).train()
    x = torch.randn(2, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    K = depthwise_matrix(step.depthwise.weight, H, W, "periodic")
    M = pointwise_matrix(step.pointwise, H, W)
    my = torch.stack([M @ xi.reshape(-1) for xi in x]).reshape(2, C, H, W)
    mean = my.mean(dim=(0, 2, 3), keepdim=True)
    var = my.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gamma = step.norm.weight.detach().reshape(1, C, 1, 1)
    beta = step.norm.bias.detach().reshape(1, C, 1, 1)
    reaction = relu((my - mean) / torch.sqrt(var + step.norm.eps) * gamma + beta)
    diffusion = torch.stack([K.T @ (K @ xi.reshape(-1)) for xi in x]).reshape(x.shape)
    with torch.no_grad():
        got = step(x)
    torch.testing.assert_close(got, x + h * (reaction - diffusion), rtol=1e-10, atol=1e-10)


def test_explicit_and_implicit_steps_discretise_the_same_pde():
    """Same parameters: eq. 9 and eq. 11 differ by O(h²) (both are first order in h)."""
    C, H, W = 3, 6, 5
    explicit = randomise(ExplicitRDStep(C, 3, h=0.1), seed=15)
    implicit = ImplicitRDStep(C, 3, h=0.1).double().eval()
    implicit.load_state_dict(explicit.state_dict())
    x = torch.randn(2, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    gaps = []
    for h in (0.02, 0.01, 0.005):
        explicit.h = implicit.h = h
        with torch.no_grad():
            gaps.append((explicit(x) - implicit(x)).norm().item())
    assert 3.5 < gaps[0] / gaps[1] < 4.5 and 3.5 < gaps[1] / gaps[2] < 4.5


# --------------------------------------------------------------------------- structure

def test_submodules_carry_the_papers_names():
    for cls in (ExplicitRDStep, ImplicitRDStep, CirculantRDStep):
        step = cls(4)
        assert step.h == DEFAULT_H == 0.1 and isinstance(step.h, float)
        assert isinstance(step.pointwise, nn.Conv2d) and step.pointwise.kernel_size == (1, 1)
        assert step.pointwise.bias is None
        assert isinstance(step.norm, nn.BatchNorm2d)
        assert step.boundary == "periodic"
        assert tuple(step.depthwise.weight.shape) == ((4, 1, 3, 3) if cls is not CirculantRDStep else (4, 3, 3))
        assert "h=0.1" in repr(step)
    step = MobileNetStep(4)
    assert {"depthwise", "pointwise", "norm1", "norm2"} <= dict(step.named_children()).keys()
    assert {"conv1", "conv2", "norm"} == dict(ResNetStep(4).named_children()).keys()
    assert {"conv1", "conv2", "norm"} == dict(LinearMixStep(4).named_children()).keys()


@pytest.mark.parametrize("cls,per_step", [
    (ResNetStep, lambda c: 18 * c * c + 2 * c),
    (MobileNetStep, lambda c: c * c + 13 * c),
    (LinearMixStep, lambda c: 2 * c * c + 20 * c),
    (ExplicitRDStep, lambda c: c * c + 11 * c),
    (ImplicitRDStep, lambda c: c * c + 11 * c),
    (CirculantRDStep, lambda c: c * c + 11 * c),
])
def test_parameter_count_per_step(cls, per_step):
    for c in (5, 32):
        assert sum(p.numel() for p in cls(c).parameters()) == per_step(c)


@pytest.mark.parametrize("cls", [ResNetStep, MobileNetStep, LinearMixStep,
                                 ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
def test_steps_keep_shape_and_backpropagate(cls):
    step = cls(4)
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    y = step(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in step.parameters())
    before = [p.detach().clone() for p in step.parameters()]
    step.reset_parameters()
    assert any(not torch.equal(a, p) for a, p in zip(before, step.parameters()))


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("cls", [ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
@pytest.mark.parametrize("h", [0, 0.0, -0.1, float("nan"), float("inf")])
def test_bad_h_is_a_value_error_naming_h(cls, h):
    with pytest.raises(ValueError, match="h"):
        cls(4, h=h)


@pytest.mark.parametrize("cls", [ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
def test_non_number_h_is_rejected(cls):
    with pytest.raises(ValueError, match="h"):
        cls(4, h="0.1")


@pytest.mark.parametrize("cls", [ResNetStep, MobileNetStep, LinearMixStep,
                                 ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
def test_bad_input_is_a_clear_value_error(cls):
    step = cls(4)
    with pytest.raises(ValueError, match="4-D"):
        step(torch.randn(4, 6, 6))
    with pytest.raises(ValueError, match="4-D"):
        step(torch.randn(1, 1, 4, 6, 6))
    with pytest.raises(ValueError, match="channels"):
        step(torch.randn(2, 3, 6, 6))


@pytest.mark.parametrize("cls", [ResNetStep, MobileNetStep, LinearMixStep,
                                 ExplicitRDStep, ImplicitRDStep, CirculantRDStep])
def test_bad_construction_arguments(cls):
    with pytest.raises(ValueError, match="channels"):
        cls(0)
    with pytest.raises(ValueError, match="kernel_size"):
        cls(4, kernel_size=4)


def test_bad_boundary():
    with pytest.raises(ValueError, match="boundary"):
        ExplicitRDStep(4, boundary="reflect")
    with pytest.raises(ValueError, match="boundary"):
        ResNetStep(4, boundary="circular")
    with pytest.raises(ValueError, match="periodic"):
        ImplicitRDStep(4, boundary="zeros")
