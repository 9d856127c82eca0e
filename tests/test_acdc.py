"""ACDC layers, the riffle, ACDC stacks and ACDCConv2d, each against an independent dense
float64 construction of its formula (SciPy's DCT matrix, a deck of cards, NumPy loops)."""

import itertools
import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from effconv_ref.acdc import (
    ACDC,
    ACDCConv2d,
    ACDCStack,
    acdc_macs,
    choose_backend,
    dct,
    dct_matrix,
    idct,
    riffle_permutation,
)

SIZES = [1, 2, 3, 5, 8, 13, 16, 31, 64, 100]


def scipy_dct(n):
    """The orthonormal DCT-II matrix, column j = SciPy's DCT of the unit vector e_j."""
    return scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)


def deck_riffle(n):
    """A perfect out-shuffle of a deck of n cards as a permutation matrix P, (P x)[j] =
    x[card at position j]: cut after ceil(n/2) cards, interleave, top card first."""
    deck = list(range(n))
    top, bottom = deck[: (n + 1) // 2], deck[(n + 1) // 2 :]
    shuffled = [c for pair in itertools.zip_longest(top, bottom) for c in pair if c is not None]
    P = np.zeros((n, n))
    for j, card in enumerate(shuffled):
        P[j, card] = 1.0
    return P


def randomize(module, seed):
    """Replace every parameter by N(0, 1) numbers, so no factor is near the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def numpy_stack(stack, riffle=True):
    """``P W_L … P W_1`` from the stack's parameters, with SciPy's DCT and a deck riffle."""
    n = stack.n
    T, W = scipy_dct(n), np.eye(n)
    P = deck_riffle(n) if riffle is True else np.eye(n)
    for layer in stack.layers:
        A, D = layer.A.detach().numpy(), layer.D.detach().numpy()
        W = P @ T.T @ np.diag(D) @ T @ np.diag(A) @ W
    return W


def numpy_conv(conv, x):
    """ACDCConv2d by loops: depth-wise filter per channel and pixel, tile, stack matrix."""
    x = x.detach().numpy()
    B, C, H, Wd = x.shape
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if conv.depthwise is None:
        w = np.ones((C, 1, 1))
    elif conv.depthwise_kind == "full":
        w = conv.depthwise.weight.detach().numpy()[:, 0]
    else:
        T = scipy_dct(k)
        A, D = conv.depthwise.A.detach().numpy(), conv.depthwise.D.detach().numpy()
        w = np.stack([T.T @ np.diag(D[c]) @ T @ np.diag(A[c]) for c in range(C)])
    M = numpy_stack(conv.acdc, riffle=conv.acdc.perm is not None)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    Ho, Wo = (H + 2 * p - k) // s + 1, (Wd + 2 * p - k) // s + 1
    out = np.zeros((B, conv.out_channels, Ho, Wo))
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                patch = xp[b, :, i * s : i * s + k, j * s : j * s + k]
                h = (patch * w).sum(axis=(1, 2))
                tiled = np.concatenate([h] * (conv.out_channels // C))
                out[b, :, i, j] = M @ tiled
    if conv.bias is not None:
        out += conv.bias.detach().numpy()[None, :, None, None]
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------
# the DCT
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_dct_matrix_is_scipys_orthonormal_dct_ii(n):
    T = dct_matrix(n)
    assert T.dtype == torch.float64
    assert np.allclose(T.numpy(), scipy_dct(n), rtol=0, atol=1e-14)
    assert torch.allclose(T @ T.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", SIZES)
def test_fast_dct_and_inverse_equal_the_matrix(n):
    x = torch.randn(3, 2, n, dtype=torch.float64)
    T = torch.from_numpy(scipy_dct(n))
    assert torch.allclose(dct(x), x @ T.T, rtol=0, atol=1e-12)
    assert torch.allclose(idct(x), x @ T, rtol=0, atol=1e-12)
    assert torch.allclose(idct(dct(x)), x, rtol=0, atol=1e-12)
    assert dct(x).dtype == idct(x).dtype == torch.float64


def test_fast_dct_keeps_half_precision_dtypes():
    x = torch.randn(4, 12)
    for dtype in (torch.bfloat16, torch.float16):
        y = dct(x.to(dtype))
        assert y.dtype == dtype
        assert torch.allclose(y.float(), dct(x), rtol=0, atol=0.05)


# --------------------------------------------------------------------------------------
# the riffle
# --------------------------------------------------------------------------------------


def test_riffle_of_eight():
    assert riffle_permutation(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert riffle_permutation(5).tolist() == [0, 3, 1, 4, 2]
    assert riffle_permutation(1).tolist() == [0]


@pytest.mark.parametrize("n", SIZES)
def test_riffle_is_the_deck_shuffle_as_a_permutation_matrix(n):
    P = np.eye(n)[riffle_permutation(n).numpy()]
    assert np.array_equal(P, deck_riffle(n))
    assert np.array_equal(P @ P.T, np.eye(n))  # a permutation
    stack = ACDCStack(n, 1).double()
    assert np.array_equal(stack.permutation_matrix().numpy(), deck_riffle(n))
    x = torch.randn(n, dtype=torch.float64)
    assert torch.equal(x[riffle_permutation(n)], torch.from_numpy(P) @ x)


# --------------------------------------------------------------------------------------
# ACDC and the stack
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 8, 17])
def test_acdc_equals_its_matrix(n):
    layer = randomize(ACDC(n).double(), seed=n)
    T = scipy_dct(n)
    A, D = layer.A.detach().numpy(), layer.D.detach().numpy()
    W = T.T @ np.diag(D) @ T @ np.diag(A)
    assert np.allclose(layer.dense_weight().detach().numpy(), W, rtol=0, atol=1e-12)
    x = torch.randn(4, n, dtype=torch.float64)
    expected = x.numpy() @ W.T + layer.bias.detach().numpy()
    assert np.allclose(layer(x).detach().numpy(), expected, rtol=0, atol=1e-12)


def test_acdc_initialisation_follows_moczulski():
    torch.manual_seed(0)
    layer = ACDC(20_000)
    for p in (layer.A, layer.D):
        assert abs(p.mean().item() - 1) < 1e-3 and abs(p.std().item() - 0.01) < 1e-3
    assert torch.equal(layer.bias, torch.zeros(20_000))
    assert ACDC(4, bias=False).bias is None
    assert sum(p.numel() for p in ACDC(7).parameters()) == 21


@pytest.mark.parametrize("n, depth", [(1, 1), (2, 3), (7, 1), (8, 2), (13, 5), (32, 12)])
def test_stack_equals_the_product_of_its_layers(n, depth):
    stack = randomize(ACDCStack(n, depth).double(), seed=depth)
    assert isinstance(stack.layers, torch.nn.ModuleList) and len(stack.layers) == depth
    W = numpy_stack(stack)
    assert np.allclose(stack.dense_weight().detach().numpy(), W, rtol=1e-10, atol=1e-10)
    x = torch.randn(3, n, dtype=torch.float64)
    for backend in ("dct", "dense"):
        stack.backend = backend
        y = stack(x).detach().numpy()
        assert np.allclose(y, x.numpy() @ W.T, rtol=1e-10, atol=1e-10), backend


def test_riffle_follows_every_layer_including_the_last():
    stack = randomize(ACDCStack(6, 2).double(), seed=3)
    P = torch.from_numpy(deck_riffle(6))
    W1, W2 = (layer.dense_weight() for layer in stack.layers)
    assert torch.allclose(stack.dense_weight(), P @ W2 @ P @ W1, rtol=0, atol=1e-12)


def test_stack_without_riffle_and_with_a_fixed_permutation():
    torch.manual_seed(0)
    plain = randomize(ACDCStack(9, 3, riffle=False).double(), seed=1)
    assert plain.perm is None
    assert np.allclose(plain.dense_weight().detach().numpy(), numpy_stack(plain, riffle=False))
    perm = torch.randperm(9)
    fixed = randomize(ACDCStack(9, 3, riffle=perm).double(), seed=1)
    P = np.eye(9)[perm.numpy()]
    W = np.eye(9)
    for layer in fixed.layers:
        W = P @ layer.dense_weight().detach().numpy() @ W
    assert np.allclose(fixed.dense_weight().detach().numpy(), W, rtol=0, atol=1e-12)
    x = torch.randn(2, 9, dtype=torch.float64)
    assert np.allclose(fixed(x).detach().numpy(), x.numpy() @ W.T, rtol=0, atol=1e-12)


def test_stack_with_biases_is_affine_on_both_paths():
    stack = randomize(ACDCStack(10, 4, bias=True).double(), seed=5)
    x = torch.randn(5, 10, dtype=torch.float64)
    stack.backend = "dct"
    reference = stack(x)
    offset = stack(torch.zeros(10, dtype=torch.float64))
    assert torch.allclose(reference, x @ stack.dense_weight().T + offset, rtol=0, atol=1e-11)
    W, c = stack.multiplied_out()
    assert torch.allclose(W, stack.dense_weight(), rtol=0, atol=1e-11)
    assert torch.allclose(c, offset, rtol=0, atol=1e-12)
    stack.backend = "dense"
    assert torch.allclose(stack(x), reference, rtol=0, atol=1e-11)


# --------------------------------------------------------------------------------------
# ACDCConv2d
# --------------------------------------------------------------------------------------

# (batch, in, out, k, stride, padding, H, W, depthwise): out = in and out = 2 in (and 3 in),
# stride 2, odd and non-square images, batch 1, k = 1, both depth-wise kinds
CONVS = [
    (2, 3, 3, 3, 1, 1, 7, 5, "full"),
    (1, 4, 8, 3, 2, 1, 6, 9, "full"),
    (2, 5, 5, 3, 2, 1, 9, 4, "acdc"),
    (1, 3, 6, 3, 1, 1, 5, 7, "acdc"),
    (1, 2, 6, 5, 2, 2, 8, 7, "full"),
    (2, 4, 8, 1, 2, 0, 5, 6, "full"),
    (1, 3, 3, 1, 1, 1, 3, 4, "acdc"),
    (1, 1, 2, 3, 1, 0, 3, 5, "full"),
]


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("backend", ["dct", "dense"])
def test_conv_equals_loops_and_its_dense_weight(case, backend):
    batch, cin, cout, k, s, p, H, W, kind = case
    conv = ACDCConv2d(cin, cout, k, s, p, depth=3, depthwise=kind, bias=True,
                      backend=backend).double()
    randomize(conv, seed=cin + cout + k)
    x = torch.randn(batch, cin, H, W, dtype=torch.float64)
    y = conv(x)
    expected = numpy_conv(conv, x)
    assert y.shape == expected.shape
    assert torch.allclose(y, expected, rtol=1e-10, atol=1e-10)
    dense = conv.dense_weight()
    assert dense.shape == (cout, cin, k, k)
    reference = F.conv2d(x, dense, conv.bias, stride=s, padding=p)
    assert torch.allclose(y, reference, rtol=1e-10, atol=1e-10)


def test_conv_parts_and_parameter_count():
    conv = ACDCConv2d(16, 32, 3, 2, 1, depth=12)
    assert isinstance(conv.depthwise, torch.nn.Conv2d)
    assert conv.depthwise.groups == 16 and conv.depthwise.bias is None
    assert conv.depthwise.weight.shape == (16, 1, 3, 3) and conv.depthwise.stride == (2, 2)
    assert isinstance(conv.acdc, ACDCStack) and conv.acdc.n == 32 and conv.acdc.depth == 12
    assert conv.bias is None
    assert sum(p.numel() for p in conv.parameters()) == 9 * 16 + 12 * 2 * 32
    low_rank = ACDCConv2d(16, 32, 3, 1, 1, depthwise="acdc")
    assert sum(p.numel() for p in low_rank.parameters()) == 2 * 3 * 16 + 12 * 2 * 32
    assert ACDCConv2d(8, 8, 1).depthwise is None


@pytest.mark.parametrize("case", CONVS[:4])
def test_fast_dct_path_equals_dense_path_forward_and_backward(case):
    batch, cin, cout, k, s, p, H, W, kind = case
    torch.manual_seed(0)
    conv = randomize(ACDCConv2d(cin, cout, k, s, p, depth=4, depthwise=kind).double(), 1)
    x = torch.randn(batch, cin, H, W, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("dct", "dense"):
        conv.acdc.backend = backend
        y = conv(x)
        g = torch.autograd.grad(y, [x, *conv.parameters()], torch.ones_like(y))
        results.append((y, g))
    (y1, g1), (y2, g2) = results
    assert torch.allclose(y1, y2, rtol=1e-10, atol=1e-10)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-9) for a, b in zip(g1, g2))


def test_fast_dct_path_passes_gradcheck_and_is_plain_autograd():
    """No custom autograd Function: the fast path is torch.fft under plain autograd."""
    torch.manual_seed(0)
    conv = ACDCConv2d(3, 6, 3, 2, 1, depth=2, backend="dct").double()
    randomize(conv, 2)
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: conv(x), (x, *conv.parameters()))
    names = set()

    def walk(fn):
        if fn is not None and fn not in names:
            names.add(fn)
            for next_fn, _ in fn.next_functions:
                walk(next_fn)

    walk(conv(x).grad_fn)
    assert not any("BackwardFunction" in type(fn).__name__ for fn in names)
    assert any("Fft" in type(fn).__name__ for fn in names)
    stack = ACDCStack(7, 3, bias=True, backend="dct").double()
    z = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stack, (z,))


def test_float64_end_to_end():
    conv = ACDCConv2d(4, 8, 3, 1, 1, depth=12, backend="dct").double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    assert conv(x).dtype == torch.float64 and conv.dense_weight().dtype == torch.float64
    # with the near-identity initialisation, float32 constants would show at 1e-7
    reference = F.conv2d(x, conv.dense_weight(), padding=1)
    assert torch.allclose(conv(x), reference, rtol=0, atol=1e-13)


def test_float32_and_bfloat16_run():
    conv = ACDCConv2d(4, 8, 3, 1, 1, depth=12)
    x = torch.randn(2, 4, 6, 6)
    for backend in ("dct", "dense"):
        conv.acdc.backend = backend
        assert conv(x).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(conv(x)).all()


# --------------------------------------------------------------------------------------
# the cost model and the choice of path
# --------------------------------------------------------------------------------------


def test_cost_model_and_crossover_near_600_for_twelve_layers():
    assert acdc_macs(8) == 4 * 8 + 5 * 8 * 3
    crossover = next(n for n in range(2, 4096) if choose_backend(n, 12) == "dct")
    assert 590 <= crossover <= 610
    assert 12 * acdc_macs(crossover - 1) >= (crossover - 1) ** 2
    assert choose_backend(128, 12) == "dense" and choose_backend(2048, 12) == "dct"
    # a tiled 256 -> 1024 layer: its dense matrix is 1024 x 256
    assert choose_backend(1024, 12) == "dct"
    assert choose_backend(1024, 12, in_features=256) == "dense"
    assert ACDCConv2d(64, 64, 3).path() == "dense"
    assert ACDCConv2d(1024, 1024, 1).path() == "dct"
    assert ACDCConv2d(64, 64, 3, backend="dct").path() == "dct"


# --------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: ACDC(0), ValueError, "n must be a positive int"),
        (lambda: ACDC(2.0), TypeError, "n must be an int"),
        (lambda: ACDC(True), TypeError, "n must be an int"),
        (lambda: ACDCStack(4, 0), ValueError, "depth must be a positive int"),
        (lambda: ACDCStack(4, 2, backend="fast"), ValueError, "backend='fast'"),
        (lambda: ACDCStack(4, 2, riffle="yes"), TypeError, "riffle must be True"),
        (lambda: ACDCStack(4, 2, riffle=torch.tensor([0, 1, 1, 3])), ValueError,
         "permutation of range(4)"),
        (lambda: ACDCConv2d(3, 5, 3), ValueError, "out_channels=5 must be a multiple"),
        (lambda: ACDCConv2d(4, 4, 3, depthwise="lowrank"), ValueError, "depthwise='lowrank'"),
        (lambda: ACDCConv2d(4, 4, 0), ValueError, "kernel_size must be a positive int"),
        (lambda: ACDCConv2d(4, 4, 3, stride=0), ValueError, "stride must be a positive int"),
        (lambda: ACDCConv2d(4, 4, 3, padding=-1), ValueError, "padding must be"),
        (lambda: ACDCConv2d(0, 4, 3), ValueError, "in_channels must be a positive int"),
    ],
)
def test_bad_arguments_are_named(build, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"last dimension must be n=4"):
        ACDC(4)(torch.randn(2, 5))
    with pytest.raises(TypeError, match="real floating"):
        ACDCStack(4, 2)(torch.ones(2, 4, dtype=torch.long))
    conv = ACDCConv2d(4, 8, 3, padding=1)
    with pytest.raises(ValueError, match="4-D"):
        conv(torch.randn(4, 6, 6))
    with pytest.raises(ValueError, match="in_channels=4"):
        conv(torch.randn(1, 3, 6, 6))


def test_reprs_name_the_arguments():
    text = repr(ACDCConv2d(4, 8, 3, 2, 1, depthwise="acdc"))
    assert "4, 8, kernel_size=3, stride=2, padding=1, depthwise='acdc'" in text
    assert "depth=12, riffle=True" in text
    assert math.isclose(acdc_macs(1), 4.0)


# --------------------------------------------------------------------------------------
# the crossover sweep
# --------------------------------------------------------------------------------------


def test_crossover_sweep_records_each_path_with_its_model(monkeypatch):
    from effconv_ref import sweeps

    assert sweeps.SWEEPS["acdc-crossover"] is sweeps.acdc_crossover
    tiny = dict(batch=1, image_size=4, depth=2, dtypes=("float32", "bfloat16"), channels=[4, 8])
    monkeypatch.setitem(sweeps.ACDC_CROSSOVER, "tiny", tiny)
    records = sweeps.acdc_crossover("tiny", repeats=1)
    assert [(r["dtype"], r["channels"], r["name"]) for r in records] == [
        (d, c, p) for d in ("float32", "bfloat16") for c in (4, 8) for p in ("dct", "dense", "auto")
    ]
    for r in records:
        c = r["channels"]
        assert r["path"] == (r["name"] if r["name"] != "auto" else choose_backend(c, 2))
        per_pixel = 2 * acdc_macs(c) if r["path"] == "dct" else c * c
        assert math.isclose(r["model_macs"], 16 * per_pixel)
        assert r["floor_s"] > 0 and r["time_s"] > 0 and r["baseline_s"] > 0
    with pytest.raises(ValueError, match="preset='huge'"):
        sweeps.acdc_crossover("huge")


def test_crossover_sweep_is_known_to_the_command_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "effconv_ref.sweeps", "acdc-crossover", "--preset", "nope"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "unknown preset 'nope'" in done.stderr and "unknown sweep" not in done.stderr
