"""The factorized convolutions (Wang, Liu & Foroosh): UnravelledConv2d (eqs. 3-6), SICConv2d
(section 2.2) and TpSConv2d (eq. 8), each against a dense matrix built entry by entry from the
paper's formula (float64, odd and non-square images, batch 1), both TpS paths, gradcheck, the
cost formulas against FlopCounterMode, and the argument checks."""

import itertools
import math

import pytest
import torch

from effconv_ref.cost import count_cost
from effconv_ref.matrix import conv2d_matrix
from effconv_ref.sic import (
    SICConv2d,
    TpSConv2d,
    UnravelledConv2d,
    neighborhood_indices,
    sic_macs,
    standard_macs,
    tps_macs,
    unravelled_macs,
)


def rand(*shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g)


def randomise(module, seed):
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(rand(*p.shape, seed=seed + i))
    return module


def apply_matrix(weight, x):
    """Each sample of ``x`` through the block matrix of eq. (4) of chapter 1 (zero boundary)."""
    height, width = x.shape[2:]
    K = conv2d_matrix(weight, height, width)
    return (x.reshape(x.shape[0], -1) @ K.T).reshape(x.shape[0], weight.shape[0], height, width)


# ----------------------------------------------------------------------------- oracles, entry by entry
def unravelled_by_loops(intra_weight, proj_weight, c, n, b, k):
    """Eq. (3): K(u, v, i, j) = Σ_t B(u, v, t, i) P(t, i, j), with B(:, :, t, i) the filter of intra
    channel i·b + t and P(t, i, j) the projection weight from that channel to output j."""
    K = torch.zeros(n, c, k, k, dtype=intra_weight.dtype)
    for j in range(n):
        for i in range(c):
            for t in range(b):
                K[j, i] += intra_weight[i * b + t, 0] * proj_weight[j, i * b + t, 0, 0]
    return K


def tps_by_loops(weight, grid, neighborhood):
    """Eq. (8): output (j_1..j_s) takes weight[j, m] from input ((j_r + i_r) mod d_r)_r, where m
    numbers the offsets (i_1..i_s) row-major. Multi-indices are raveled row-major."""
    n, _, k, _ = weight.shape
    K = torch.zeros(n, n, k, k, dtype=weight.dtype)
    for j, j_multi in enumerate(itertools.product(*[range(d) for d in grid])):
        for m, i_multi in enumerate(itertools.product(*[range(t) for t in neighborhood])):
            read = [(jr + ir) % d for jr, ir, d in zip(j_multi, i_multi, grid)]
            source = 0
            for r, d in zip(read, grid):
                source = source * d + r
            K[j, source] += weight[j, m]
    return K


# ----------------------------------------------------------------------------- eqs. (3)-(6)
# (batch, c, n, k, b, H, W): odd and non-square images, c < n, c > n, batch 1, b = 1 and b = k²
UNRAVELLED = [(2, 3, 4, 3, 2, 5, 7), (1, 4, 2, 3, 9, 6, 5), (1, 2, 3, 5, 3, 7, 4), (3, 1, 1, 1, 1, 3, 3)]


@pytest.mark.parametrize("shape", UNRAVELLED)
def test_unravelled_is_eq3_and_its_forward_the_dense_matrix(shape):
    batch, c, n, k, b, h, w = shape
    layer = randomise(UnravelledConv2d(c, n, k, b, bias=False).double(), seed=1)
    K = unravelled_by_loops(layer.intra.weight, layer.proj.weight, c, n, b, k)
    assert torch.allclose(layer.dense_weight(), K, rtol=0, atol=1e-13)
    x = rand(batch, c, h, w, seed=2)
    assert torch.allclose(layer(x), apply_matrix(K, x), rtol=0, atol=1e-12)


def test_unravelled_bias_is_the_projections():
    layer = randomise(UnravelledConv2d(3, 5, 3, 2, bias=True).double(), seed=3)
    x = rand(1, 3, 5, 6, seed=4)
    expected = apply_matrix(layer.dense_weight(), x) + layer.proj.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_with_k_squared_bases_every_filter_is_reachable(k):
    """Section 2.2.1: b = k² bases span every k x k filter, so eq. (3) is exact for any K: with
    random bases, the projection that reproduces a random K solves a square system exactly;
    with b = k² - 1 bases it cannot."""
    c, n = 3, 4
    K = rand(n, c, k, k, seed=5)
    for b, exact in [(k * k, True), (k * k - 1, False)]:
        if b == 0:
            continue
        layer = randomise(UnravelledConv2d(c, n, k, b).double(), seed=6)
        bases = layer.intra.weight.reshape(c, b, k * k)  # bases[i, t] = B(:, :, t, i) flattened
        with torch.no_grad():
            for i in range(c):
                # K[j, i] = Σ_t P[j, i, t] B[i, t]  ->  least squares for P[:, i, :]
                solution = torch.linalg.lstsq(bases[i].T, K[:, i].reshape(n, k * k).T).solution
                layer.proj.weight[:, i * b:(i + 1) * b, 0, 0] = solution.T
        error = (layer.dense_weight() - K).abs().max().item()
        assert (error < 1e-10) == exact, (b, error)


def test_unravelled_gradcheck():
    layer = randomise(UnravelledConv2d(2, 3, 3, 2, bias=True).double(), seed=7)
    x = rand(1, 2, 4, 5, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


# ----------------------------------------------------------------------------- eq. (8)
def test_neighborhood_indices_read_forward_and_wrap_around():
    assert neighborhood_indices((4,), (2,)).tolist() == [[0, 1], [1, 2], [2, 3], [3, 0]]
    # 2 x 3 grid, 2 x 2 window: output (1, 2) = channel 5 reads (1,2), (1,0), (0,2), (0,0)
    assert neighborhood_indices((2, 3), (2, 2))[5].tolist() == [5, 3, 2, 0]


# (batch, grid, neighborhood, k, H, W): 1-D, 2-D and 3-D grids, full and partial windows
TPS = [
    (2, (6,), (3,), 3, 5, 7),
    (1, (4, 3), (2, 2), 3, 6, 5),
    (1, (2, 3, 2), (2, 2, 1), 1, 4, 3),
    (2, (3, 4), (3, 1), 5, 7, 6),
    (1, (5,), (5,), 1, 3, 4),
    (1, (2, 2, 2), (1, 2, 2), 3, 5, 5),
]


@pytest.mark.parametrize("shape", TPS)
def test_tps_dense_weight_is_eq8(shape):
    _, grid, t, k, _, _ = shape
    layer = randomise(TpSConv2d(math.prod(grid), k, grid, t).double(), seed=9)
    assert torch.equal(layer.dense_weight(), tps_by_loops(layer.weight, grid, t))


@pytest.mark.parametrize("backend", ["reference", "gather"])
@pytest.mark.parametrize("shape", TPS)
def test_tps_forward_is_the_dense_matrix(shape, backend):
    batch, grid, t, k, h, w = shape
    n = math.prod(grid)
    layer = randomise(TpSConv2d(n, k, grid, t, bias=True, backend=backend).double(), seed=10)
    x = rand(batch, n, h, w, seed=11)
    expected = apply_matrix(tps_by_loops(layer.weight, grid, t), x) + layer.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)


def test_tps_density_and_parameter_count():
    layer = TpSConv2d(128, 3, (8, 16), (4, 8))  # Table 4, stage 2, 2-D
    assert layer.density == 0.25
    assert sum(p.numel() for p in layer.parameters()) == 128 * 32 * 9
    # the dense weight is zero outside the neighbourhoods: exactly ∏t nonzero blocks per output
    nonzero_blocks = layer.dense_weight().abs().sum(dim=(2, 3)) > 0
    assert nonzero_blocks.sum(dim=1).tolist() == [32] * 128


@pytest.mark.parametrize("backend", ["reference", "gather"])
def test_tps_gradcheck(backend):
    layer = randomise(TpSConv2d(6, 3, (3, 2), (2, 2), bias=True, backend=backend).double(), seed=12)
    x = rand(1, 6, 4, 3, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


# ----------------------------------------------------------------------------- section 2.2
# (batch, c, n, k, H, W, grid, t)
SIC = [
    (2, 4, 4, 3, 5, 7, None, None),
    (1, 3, 5, 3, 6, 5, None, None),
    (1, 6, 3, 5, 7, 4, None, None),
    (1, 6, 6, 3, 5, 6, (2, 3), (1, 2)),
    (2, 8, 8, 5, 4, 5, (2, 2, 2), (2, 1, 2)),
]


def sic_by_loops(layer):
    """K(u, v, i, j) = P(i, j) B(u, v, i) (eq. 3, b = 1), plus the residual's identity at the centre."""
    c, n, k = layer.in_channels, layer.out_channels, layer.kernel_size
    if isinstance(layer.proj, TpSConv2d):
        P = tps_by_loops(layer.proj.weight, layer.proj.grid, layer.proj.neighborhood)
    else:
        P = layer.proj.weight
    K = torch.zeros(n, c, k, k, dtype=P.dtype)
    for j in range(n):
        for i in range(c):
            K[j, i] = P[j, i, 0, 0] * layer.intra.weight[i, 0]
            if layer.residual and i == j:
                K[j, i, k // 2, k // 2] += 1
    return K


@pytest.mark.parametrize("shape", SIC)
def test_sic_is_its_dense_matrix_with_the_residual(shape):
    batch, c, n, k, h, w, grid, t = shape
    layer = randomise(SICConv2d(c, k, out_channels=n, grid=grid, neighborhood=t).double(), seed=14)
    assert layer.residual == (c == n)
    K = sic_by_loops(layer)
    assert torch.allclose(layer.dense_weight(), K, rtol=0, atol=1e-13)
    x = rand(batch, c, h, w, seed=15)
    assert torch.allclose(layer(x), apply_matrix(K, x), rtol=0, atol=1e-12)


def test_sic_without_residual_is_the_unravelled_layer_with_one_basis():
    sic = randomise(SICConv2d(4, 3, residual=False).double(), seed=16)
    unravelled = UnravelledConv2d(4, 4, 3, 1).double()
    unravelled.load_state_dict(sic.state_dict())
    x = rand(1, 4, 5, 6, seed=17)
    assert torch.allclose(sic(x), unravelled(x), rtol=0, atol=1e-13)


def test_sic_gradcheck():
    layer = randomise(SICConv2d(4, 3, grid=(2, 2), neighborhood=(2, 1), bias=True).double(), seed=18)
    x = rand(1, 4, 3, 5, seed=19).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()))


# ----------------------------------------------------------------------------- costs
def test_cost_formulas_match_flop_counter():
    h, w = 9, 7
    x = torch.zeros(1, 8, h, w)
    assert count_cost(torch.nn.Conv2d(8, 6, 3, padding=1, bias=False), x).macs == standard_macs(8, 6, 3, h, w)
    assert count_cost(UnravelledConv2d(8, 6, 3, 4), x).macs == unravelled_macs(8, 6, 3, 4, h, w)
    assert count_cost(SICConv2d(8, 5), x).macs == sic_macs(8, 8, 5, h, w)
    assert count_cost(TpSConv2d(8, 3, (2, 4), (1, 2)), x).macs == tps_macs(8, 3, 2, h, w)
    tps_sic = SICConv2d(8, 3, grid=(2, 4), neighborhood=(2, 2))
    assert count_cost(tps_sic, x).macs == 8 * 9 * h * w + tps_macs(8, 1, 4, h, w)


def test_section_2_2_4_cost_ratio():
    """Section 2.2.4: a SIC layer's cost grows as 1 + k²/n with the kernel size, a standard
    layer's as k²: at n = 256, 5x5 instead of 3x3 costs 6 % more in a SIC layer, 178 % more
    in a standard one."""
    n, hw = 256, 18 * 18
    assert sic_macs(n, n, 5, 18, 18) / sic_macs(n, n, 3, 18, 18) == pytest.approx((1 + 25 / n) / (1 + 9 / n))
    assert standard_macs(n, n, 5, 18, 18) / standard_macs(n, n, 3, 18, 18) == pytest.approx(25 / 9)
    assert round(sic_macs(n, n, 5, 18, 18) / sic_macs(n, n, 3, 18, 18) - 1, 2) == 0.06
    assert round(standard_macs(n, n, 5, 18, 18) / standard_macs(n, n, 3, 18, 18) - 1, 2) == 1.78
    assert sic_macs(n, n, 3, 18, 18) == n * hw * (9 + n)


# ----------------------------------------------------------------------------- misuse
@pytest.mark.parametrize("make, match", [
    (lambda: TpSConv2d(12, 3, (3, 5), (1, 1)), "product of the grid"),
    (lambda: TpSConv2d(12, 3, (3, 4), (4, 1)), r"neighborhood\[0\]=4 is larger than grid\[0\]=3"),
    (lambda: TpSConv2d(12, 3, (3, 4), (2,)), "one neighbourhood size per grid dimension"),
    (lambda: TpSConv2d(12, 3, (3, 4), (0, 1)), "neighborhood must be a positive int"),
    (lambda: TpSConv2d(12, 3, (), ()), "grid must be a non-empty sequence"),
    (lambda: TpSConv2d(12, 3, (3, 4), (1, 1), backend="cuda"), "backend='cuda' is not a backend"),
    (lambda: TpSConv2d(12, 2, (3, 4), (1, 1)), "only odd kernel sizes"),
    (lambda: SICConv2d(12, 3, grid=(3, 4)), "grid and neighborhood go together"),
    (lambda: SICConv2d(12, 3, out_channels=6, grid=(3, 4), neighborhood=(1, 2)), "must equal channels=12"),
    (lambda: SICConv2d(0, 3), "channels must be a positive int"),
    (lambda: UnravelledConv2d(4, 4, 3, 0), "bases must be a positive int"),
    (lambda: UnravelledConv2d(4, 4.0, 3, 2), "out_channels must be a positive int"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("layer", [UnravelledConv2d(4, 2, 3, 2), SICConv2d(4, 3), TpSConv2d(4, 3, (2, 2), (1, 2))])
def test_bad_input_is_named_and_an_empty_batch_is_empty(layer):
    with pytest.raises(ValueError, match="has 3 channels but"):
        layer(torch.zeros(1, 3, 5, 5))
    with pytest.raises(TypeError, match="one dtype"):
        layer(torch.zeros(1, 4, 5, 5, dtype=torch.float64))
    assert layer(torch.zeros(0, 4, 5, 5)).shape == (0, layer.out_channels, 5, 5)
