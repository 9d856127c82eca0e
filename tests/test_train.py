"""The training loop: it learns, it is deterministic, it resumes exactly, it distils, and
the command line works end to end. CPU only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from effconv_ref import data, models
from effconv_ref.models import list_models
from effconv_ref.train import distillation_loss, fit, lr_at, main

ROOT = Path(__file__).resolve().parents[1]
REPRODUCIBLE = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def loaders(train_size, test_size, batch_size):
    train = data.get_dataset("shapes", train=True, size=train_size)
    test = data.get_dataset("shapes", train=False, size=test_size)
    generator = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(test, batch_size=128),
    )


def resnet8(seed=0):
    torch.manual_seed(seed)
    return models.build("resnet/resnet8")


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def same_history(a, b):
    return all(a[k] == b[k] for k in REPRODUCIBLE)


def quiet(**kwargs):
    return dict(progress=False, log=None, **kwargs)


def test_fit_learns_shapes():
    """1024 training images, 4 epochs of ResNet-8: well above the 10% of chance (it reaches
    about 50-60%; the spatial patterns are what it has to learn, colour tells nothing)."""
    train_loader, test_loader = loaders(1024, 256, 32)
    history = fit(resnet8(), train_loader, test_loader, epochs=4, lr=0.05, **quiet())
    assert history["epoch"] == [1, 2, 3, 4]
    assert set(history) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    assert history["test_acc"][-1] > 0.3
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["lr"] == [lr_at(e, 4, 0.05) for e in range(4)]


def test_fit_is_deterministic():
    train_loader, test_loader = loaders(128, 64, 32)
    a, b = resnet8(), resnet8()
    ha = fit(a, train_loader, test_loader, epochs=2, seed=3, **quiet())
    hb = fit(b, train_loader, test_loader, epochs=2, seed=3, **quiet())
    assert same_history(ha, hb)
    assert same_weights(a, b)
    c = resnet8()
    fit(c, train_loader, test_loader, epochs=2, seed=4, **quiet())
    assert not same_weights(a, c)


def test_fit_is_deterministic_with_worker_processes():
    train_loader, test_loader, _ = data.get_loaders("shapes", batch_size=32, size=64, num_workers=1)
    a, b = resnet8(), resnet8()
    ha = fit(a, train_loader, test_loader, epochs=1, **quiet())
    hb = fit(b, train_loader, test_loader, epochs=1, **quiet())
    assert same_history(ha, hb) and same_weights(a, b)


class Interrupted(Exception):
    pass


class InterruptedLoader(DataLoader):
    """A training loader that stops the run when epoch ``stop_at`` begins."""

    def __init__(self, *args, stop_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at, self.epochs_started = stop_at, 0

    def __iter__(self):
        self.epochs_started += 1
        if self.epochs_started == self.stop_at:
            raise Interrupted
        return super().__iter__()


def test_interrupted_run_resumes_bitwise(tmp_path):
    """A 3-epoch cosine run stopped after epoch 2 and resumed equals the run never stopped."""
    train_loader, test_loader = loaders(128, 64, 32)
    whole = resnet8()
    h_whole = fit(whole, train_loader, test_loader, epochs=3, **quiet())

    train = train_loader.dataset
    flaky = InterruptedLoader(train, batch_size=32, shuffle=True, generator=torch.Generator(), stop_at=3)
    with pytest.raises(Interrupted):
        fit(resnet8(), flaky, test_loader, epochs=3, checkpoint_dir=tmp_path, **quiet())
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["epoch"] == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))

    resumed = resnet8(seed=123)  # the checkpoint replaces these weights
    fresh_loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator())
    h_resumed = fit(resumed, fresh_loader, test_loader, epochs=3, checkpoint_dir=tmp_path, resume=True, **quiet())
    assert same_history(h_resumed, h_whole)
    assert same_weights(resumed, whole)


def test_two_epochs_then_resume_to_three_equals_three(tmp_path):
    """On a schedule that does not depend on the total, extending a run is exact too."""
    train_loader, test_loader = loaders(128, 64, 32)
    whole = resnet8()
    h_whole = fit(whole, train_loader, test_loader, epochs=3, schedule="constant", **quiet())

    fit(resnet8(), train_loader, test_loader, epochs=2, schedule="constant", checkpoint_dir=tmp_path, **quiet())
    resumed = resnet8(seed=7)
    h = fit(resumed, train_loader, test_loader, epochs=3, schedule="constant", checkpoint_dir=tmp_path, resume=True, **quiet())
    assert same_history(h, h_whole)
    assert same_weights(resumed, whole)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and set(state) >= {"model", "optimizer", "scheduler", "history", "rng"}


def test_resume_without_checkpoint_names_the_path(tmp_path):
    train_loader, test_loader = loaders(32, 32, 32)
    with pytest.raises(FileNotFoundError) as info:
        fit(resnet8(), train_loader, test_loader, epochs=1, checkpoint_dir=tmp_path, resume=True, **quiet())
    assert str(tmp_path / "checkpoint.pt") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(resnet8(), train_loader, test_loader, epochs=1, resume=True, **quiet())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=1, schedule="linear"), "schedule"),
        (dict(epochs=1, optimizer="lbfgs"), "optimizer"),
        (dict(epochs=1, distill_alpha=2.0), "distill_alpha"),
        (dict(epochs=1, lr=float("nan")), "lr must be a finite number > 0, got nan"),
        (dict(epochs=1, lr=float("inf")), "lr must be a finite number > 0, got inf"),
        (dict(epochs=1, lr=0.0), "lr must be a finite number > 0, got 0.0"),
        (dict(epochs=1, weight_decay=-1.0), "weight_decay must be a finite number >= 0, got -1.0"),
        (dict(epochs=1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (dict(epochs=1, seed=-1), r"seed must be a whole number in \[0, 4294967295\], got -1"),
    ],
)
def test_bad_arguments(kwargs, match):
    train_loader, test_loader = loaders(32, 32, 32)
    with pytest.raises(ValueError, match=match):
        fit(resnet8(), train_loader, test_loader, **quiet(**kwargs))


def test_schedules():
    assert lr_at(0, 10, 0.1) == 0.1
    assert lr_at(5, 10, 0.1) == pytest.approx(0.05)
    assert [lr_at(e, 4, 1.0, "step") for e in range(4)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.01)]
    assert lr_at(9, 10, 0.1, "constant") == 0.1
    # the papers' recipes: halve every 60 (Treister et al.) or 75 (Ephrath et al.) epochs
    assert [lr_at(e, 300, 0.01, "halve/60") for e in (0, 59, 60, 119, 120, 299)] == \
        [0.01, 0.01, 0.005, 0.005, 0.0025, 0.01 / 16]
    assert lr_at(75, 300, 0.1, "halve/75") == 0.05
    for bad in ("halve/", "halve/0", "halve/x", "linear"):
        with pytest.raises(ValueError, match="unknown schedule"):
            lr_at(0, 10, 0.1, bad)


def test_distillation_loss_matches_hand_computation():
    torch.manual_seed(0)
    student = torch.randn(3, 5, dtype=torch.float64)
    teacher = torch.randn(3, 5, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2])
    alpha, T = 0.3, 2.5
    kl = 0.0
    ce = 0.0
    for i in range(3):
        p_t = torch.exp(teacher[i] / T) / torch.exp(teacher[i] / T).sum()
        p_s = torch.exp(student[i] / T) / torch.exp(student[i] / T).sum()
        kl += (p_t * (p_t.log() - p_s.log())).sum() / 3
        q = torch.exp(student[i]) / torch.exp(student[i]).sum()
        ce += -q[targets[i]].log() / 3
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = distillation_loss(student, teacher, targets, alpha=alpha, temperature=T)
    torch.testing.assert_close(got, expected)
    # alpha = 0 is plain cross-entropy; a student equal to its teacher has no soft loss
    torch.testing.assert_close(distillation_loss(student, teacher, targets, 0.0), F.cross_entropy(student, targets))
    torch.testing.assert_close(distillation_loss(teacher, teacher, targets, 1.0), torch.zeros((), dtype=torch.float64))


def test_fit_with_teacher():
    train_loader, test_loader = loaders(128, 64, 32)
    teacher = resnet8(seed=1)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    plain = fit(resnet8(), train_loader, test_loader, epochs=1, **quiet())
    distilled = fit(resnet8(), train_loader, test_loader, epochs=1, teacher=teacher, distill_alpha=0.9, **quiet())
    assert not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # BN stats too
    assert distilled["train_loss"] != plain["train_loss"]
    assert all(map(lambda x: x == x, distilled["train_loss"]))  # finite, not NaN


def test_progress_bar_and_log(capsys):
    train_loader, test_loader = loaders(64, 32, 32)
    lines = []
    fit(resnet8(), train_loader, test_loader, epochs=1, progress=False, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1  train loss ")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    fit(resnet8(), train_loader, test_loader, epochs=1, progress=True, log=lines.append)
    assert "epoch 1/1" in capsys.readouterr().err  # tqdm writes to stderr


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "effconv_ref.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_trains_and_resumes(tmp_path):
    common = ["--model", "resnet/resnet8", "--dataset", "shapes", "--size", "256", "--no-progress"]
    run = cli(*common, "--epochs", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "runs" / "resnet_resnet8-shapes"
    assert (out / "checkpoint.pt").is_file()
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2]
    assert "final test accuracy" in run.stdout
    assert str(Path("runs/resnet_resnet8-shapes/checkpoint.pt")) in run.stdout
    assert str(Path("runs/resnet_resnet8-shapes/history.json")) in run.stdout

    run = cli(*common, "--epochs", "3", "--resume", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "lean/leanresnet-a", "--dataset", "shapes"], f"unknown model 'lean/leanresnet-a'; did you mean 'lean/leanresnet-A'? choose one of: {', '.join(list_models())}"),
        (["--model", "resnet/resnet8", "--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: cifar10, cifar100, stl10, shapes"),
        (["--model", "resnet/resnet8", "--dataset", "shapes", "--resume", "--out", "nowhere"], f"no checkpoint to resume from at {Path('nowhere/checkpoint.pt')}"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"python -m effconv_ref.train: error: {expected}\n"


def test_cli_error_exit_code_without_traceback(tmp_path):
    run = cli("--model", "lean/leanresnet-a", "--dataset", "shapes", "--epochs", "1", cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "python -m effconv_ref.train: error: unknown model 'lean/leanresnet-a'; did you mean 'lean/leanresnet-A'? "
        f"choose one of: {', '.join(list_models())}"
    ]
    assert "resnet/resnet8" in run.stderr


def test_torchrun_two_processes_on_cpu(tmp_path):
    """Data-parallel through torchrun (gloo on the CPU): each process reads its share,
    only rank 0 prints and writes, and the checkpoint holds the plain (unwrapped) model."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "effconv_ref.train", "--model", "resnet/resnet8", "--dataset", "shapes",
         "--epochs", "2", "--size", "99", "--batch-size", "16", "--no-progress", "--out", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("final test accuracy") == 1
    assert run.stdout.count("epoch 1/2") == 1
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    # evaluation counts each of the 99 test images once, over both processes' shares
    assert all(abs(a * 99 - round(a * 99)) < 1e-9 for a in history["test_acc"])
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    models.build("resnet/resnet8").load_state_dict(state["model"])


# --------------------------------------------------------------------------------------
# checkpoints that cannot be resumed, and runs that go wrong
# --------------------------------------------------------------------------------------


@pytest.fixture
def one_epoch(tmp_path):
    """A checkpoint folder after one epoch of SGD at lr 0.1 on 64 images."""
    train_loader, test_loader = loaders(64, 32, 32)
    fit(resnet8(), train_loader, test_loader, epochs=1, checkpoint_dir=tmp_path, **quiet())
    return tmp_path


def resume(folder, model=None, **kwargs):
    train_loader, test_loader = loaders(64, 32, 32)
    model = model if model is not None else resnet8()
    return fit(model, train_loader, test_loader, epochs=2, checkpoint_dir=folder, resume=True, **quiet(**kwargs))


@pytest.mark.parametrize(
    "write",
    [
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(bytes(range(256)) * 4),
        lambda path: path.write_text("epoch 3\n"),
        lambda path: torch.save(torch.zeros(3), path),
        lambda path: torch.save({"weights": torch.zeros(3)}, path),
    ],
    ids=["empty", "random bytes", "text", "a tensor", "a dict of something else"],
)
def test_corrupt_checkpoint_named(one_epoch, write):
    write(one_epoch / "checkpoint.pt")
    with pytest.raises(ValueError) as info:
        resume(one_epoch)
    message = str(info.value)
    assert message.startswith(f"{one_epoch / 'checkpoint.pt'} is not a valid effconv_ref checkpoint (")
    assert "\n" not in message


def test_resume_with_another_model_is_refused(one_epoch):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="holds the weights of a different model"):
        resume(one_epoch, model=models.build("resnet/resnet20"))


@pytest.mark.parametrize(
    "kwargs, difference",
    [
        (dict(optimizer="adamw"), "optimizer: checkpoint 'sgd', requested 'adamw'"),
        (dict(lr=0.05), "lr: checkpoint 0.1, requested 0.05"),
        (dict(lr=0.05, seed=2), "lr: checkpoint 0.1, requested 0.05; seed: checkpoint 0, requested 2"),
    ],
)
def test_resume_with_other_settings_is_refused(one_epoch, kwargs, difference):
    with pytest.raises(ValueError) as info:
        resume(one_epoch, **kwargs)
    assert str(info.value) == (
        f"cannot resume from {one_epoch / 'checkpoint.pt'}: the run's settings differ ({difference})"
    )


def test_resume_old_checkpoint_with_another_optimizer_is_refused(one_epoch):
    """A checkpoint without stored settings: the optimizer's state tells which it was."""
    state = torch.load(one_epoch / "checkpoint.pt", weights_only=True)
    del state["settings"]
    torch.save(state, one_epoch / "checkpoint.pt")
    with pytest.raises(ValueError, match="it holds the state of an sgd optimizer, not of adamw"):
        resume(one_epoch, optimizer="adamw")
    lines = []
    train_loader, test_loader = loaders(64, 32, 32)
    fit(resnet8(), train_loader, test_loader, epochs=2, checkpoint_dir=one_epoch, resume=True,
        progress=False, log=lines.append)
    assert any("was written before checkpoints kept their settings" in line for line in lines)


def test_failed_checkpoint_write_keeps_the_last_one(tmp_path, monkeypatch):
    """A crash while writing epoch 2's checkpoint leaves epoch 1's whole, and no temporary file."""
    real_save = torch.save
    calls = []

    def crash_on_second(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint") if hasattr(f, "write") else Path(f).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second)
    train_loader, test_loader = loaders(64, 32, 32)
    with pytest.raises(OSError, match="No space left"):
        fit(resnet8(), train_loader, test_loader, epochs=2, checkpoint_dir=tmp_path, **quiet())
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert json.loads((tmp_path / "history.json").read_text())["epoch"] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.json"]


def test_diverging_loss_stops_training(tmp_path):
    train_loader, test_loader = loaders(64, 32, 16)
    with pytest.raises(FloatingPointError) as info:
        fit(resnet8(), train_loader, test_loader, epochs=2, lr=1e30, checkpoint_dir=tmp_path, **quiet())
    message = str(info.value)
    assert message.startswith("the training diverged: the loss is ")
    assert "at epoch 1 of 2, step " in message and message.endswith("try a lower learning rate than lr=1e+30")
    assert not (tmp_path / "checkpoint.pt").exists()
