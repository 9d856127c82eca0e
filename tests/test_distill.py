"""Attention transfer: the maps and the loss against a hand computation, the hooks, and
fit() with a teacher and attention_beta (runs, deterministic, changes the run)."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from effconv_ref import data
from effconv_ref.distill import (
    BETA,
    AttentionTransfer,
    GroupOutputs,
    attention_loss,
    attention_map,
    attention_points,
    attention_transfer_loss,
)
from effconv_ref.models import build
from effconv_ref.models.secl import WideResNet
from effconv_ref.train import fit, main


def test_attention_map_by_hand():
    # one sample, two channels, a 1 x 2 image: mean of squares (1 + 9) / 2 = 5, (4 + 0) / 2 = 2
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    q = attention_map(x)
    assert q.shape == (1, 2)
    assert torch.allclose(q, torch.tensor([[5.0, 2.0]]) / math.sqrt(29.0))


def test_attention_loss_by_hand():
    s = torch.tensor([[[[1.0, 0.0]]]])  # map (1, 0)
    t = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])  # map (1, 1) / sqrt 2: channels differ
    expected = ((1 - 1 / math.sqrt(2)) ** 2 + (0 - 1 / math.sqrt(2)) ** 2) / 2
    assert math.isclose(attention_loss(s, t).item(), expected, rel_tol=1e-6)
    total = attention_transfer_loss([s, s], [t, s])
    assert BETA == 1e3
    assert math.isclose(total.item(), 1e3 * expected, rel_tol=1e-6)


def test_attention_loss_is_zero_for_scaled_copies_and_checks_shapes():
    x = torch.randn(3, 4, 5, 6)
    assert attention_loss(x, 7 * x).item() < 1e-12
    with pytest.raises(ValueError, match="same batch and spatial size"):
        attention_loss(x, torch.randn(3, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        attention_map(torch.randn(3, 4))
    with pytest.raises(ValueError, match="as many student as teacher"):
        attention_transfer_loss([x], [])


def test_hooks_read_each_groups_output():
    torch.manual_seed(0)
    model = WideResNet(10, 1).eval()
    assert attention_points(model) == list(model.groups)
    outputs = GroupOutputs(model)
    x = torch.randn(2, 3, 16, 16)
    model(x)
    taken = outputs.take()
    with pytest.raises(RuntimeError, match="no forward pass"):
        outputs.take()
    h = model.conv1(x)
    for group, out in zip(model.groups, taken):
        h = group(h)
        assert torch.equal(out, h)
    outputs.remove()
    model(x)
    assert outputs.outputs == [None, None, None]
    assert len(attention_points(build("resnet/resnet8"))) == 3
    with pytest.raises(ValueError, match="no groups of blocks"):
        attention_points(torch.nn.Linear(2, 2))


def test_attention_transfer_needs_matching_groups():
    with pytest.raises(ValueError, match="as many groups"):
        AttentionTransfer(WideResNet(10, 1), _TwoGroups(), 1.0)


class _TwoGroups(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.groups = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])


def loaders():
    train = data.get_dataset("shapes", train=True, size=64)
    test = data.get_dataset("shapes", train=False, size=32)
    g = torch.Generator().manual_seed(0)
    return DataLoader(train, batch_size=16, shuffle=True, generator=g), \
        DataLoader(test, batch_size=32)


def distilled(beta, seed=0):
    torch.manual_seed(1)
    teacher = WideResNet(10, 1)
    torch.manual_seed(seed)
    student = WideResNet(10, 1, conv="secl")
    train, test = loaders()
    history = fit(student, train, test, epochs=2, lr=0.05, teacher=teacher, distill_alpha=0.0,
                  attention_beta=beta, progress=False, log=None)
    return student, history


def test_fit_with_a_teacher_and_attention_transfer_runs_and_is_deterministic():
    a, ha = distilled(BETA)
    b, hb = distilled(BETA)
    plain, hp = distilled(0.0)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert all(ha[k] == hb[k] for k in keys)
    assert ha["train_loss"] != hp["train_loss"]  # the attention term is in the loss
    assert all(h._forward_hooks == {} for h in a.groups)  # fit removes its hooks


def test_fit_rejects_attention_without_a_teacher():
    train, test = loaders()
    with pytest.raises(ValueError, match="attention_beta must be >= 0 and needs a teacher"):
        fit(WideResNet(10, 1), train, test, epochs=1, attention_beta=1.0, progress=False,
            log=None)
    with pytest.raises(ValueError, match="attention_beta"):
        fit(WideResNet(10, 1), train, test, epochs=1, teacher=WideResNet(10, 1),
            attention_beta=-1.0, progress=False, log=None)


def test_cli_distils_from_a_teacher_checkpoint(tmp_path, capsys):
    common = ["--dataset", "shapes", "--epochs", "1", "--size", "16", "--batch-size", "8",
              "--no-progress"]
    assert main(["--model", "secl/wrn-40-2", "--out", str(tmp_path / "t"), *common]) == 0
    teacher = tmp_path / "t" / "checkpoint.pt"
    args = ["--model", "secl/wrn-40-2-secl", "--teacher", str(teacher), "--teacher-model",
            "secl/wrn-40-2", "--out", str(tmp_path / "s"), *common]
    assert main(args) == 0
    assert (tmp_path / "s" / "checkpoint.pt").is_file()
    capsys.readouterr()
    assert main([*args[:3], str(tmp_path / "missing.pt"), *args[4:]]) == 2
    assert "no teacher checkpoint" in capsys.readouterr().err
    assert main([*args[:5], "secl/nope", *args[6:]]) == 2
    assert "unknown --teacher-model" in capsys.readouterr().err
