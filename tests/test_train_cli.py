"""The training command line answers every misuse clearly and never loses a run: each
bad argument is refused in one line (exit 2) before any data is loaded, an existing run is
not overwritten by accident, ``--resume`` insists on the checkpoint's settings, a corrupt
checkpoint is named, a diverging run stops, Ctrl-C says how to resume, and a failed
download says what to fetch by hand. CPU only, no network."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from effconv_ref import data
from effconv_ref.train import CHECKPOINT, HISTORY, main

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m effconv_ref.train"
SMALL = ["--model", "resnet/resnet8", "--dataset", "shapes", "--size", "64", "--batch-size", "32", "--no-progress"]


def train(*args):
    """Run the command line in this process; its exit code."""
    return main([*SMALL, *args])


def error_line(capsys):
    """The one line a refused command prints (nothing on stdout)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), captured.err
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the command gets as far as loading data."""

    def refuse(*args, **kwargs):
        raise AssertionError("data loaded before the arguments were checked")

    monkeypatch.setattr(data, "get_loaders", refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run of SMALL: its folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run") / "r1"
    assert train("--epochs", "1", "--out", str(out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "r1"
    shutil.copytree(finished_run, out)
    return out


# --------------------------------------------------------------------------------------
# every argument checked before any work
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
        (["--weight-decay", "-5"], "--weight-decay must be a finite number >= 0, got -5.0"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
        (["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
        (["--momentum", "-0.5"], "--momentum must be in [0, 1), got -0.5"),
        (["--seed", "-1"], "--seed must be a whole number in [0, 4294967295], got -1"),
        (["--seed", str(2**32)], "--seed must be a whole number in [0, 4294967295], got 4294967296"),
        (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--size", "0"], "--size must be >= 1, got 0"),
        (["--out", ""], "--out must name a folder, got ''"),
        (["--out", "  "], "--out must name a folder, got '  '"),
        (["--data-root", ""], "--data-root must name a folder, got ''"),
    ],
)
def test_bad_values_refused_before_any_work(tmp_path, monkeypatch, capsys, no_data, args, expected):
    monkeypatch.chdir(tmp_path)
    base = [a for a in ["--epochs", "1"] if "--epochs" not in args]
    assert train(*base, *args) == 2
    assert error_line(capsys) == f"{PROG}: error: {expected}"
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_out_under_a_file_refused_before_any_work(tmp_path, capsys, no_data):
    (tmp_path / "notes.txt").write_text("a file\n")
    out = tmp_path / "notes.txt" / "run"
    assert train("--epochs", "1", "--out", str(out)) == 2
    assert error_line(capsys) == (
        f"{PROG}: error: --out {out}: cannot create this folder, {tmp_path / 'notes.txt'} is a file, not a folder"
    )


def test_out_that_is_a_file_refused_before_any_work(tmp_path, capsys, no_data):
    out = tmp_path / "run"
    out.write_text("a file\n")
    assert train("--epochs", "1", "--out", str(out)) == 2
    assert error_line(capsys) == f"{PROG}: error: --out {out}: cannot create this folder, {out} is a file, not a folder"


def test_out_not_writable_refused_before_any_work(tmp_path, capsys, no_data, monkeypatch):
    """A folder the user may not write to (simulated: root may write anywhere)."""
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(dir) / "probe"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "run"
    assert train("--epochs", "1", "--out", str(out)) == 2
    assert error_line(capsys) == f"{PROG}: error: --out {out}: cannot write a file there (Permission denied)"


def test_out_that_cannot_be_created_refused_before_any_work(tmp_path, capsys, no_data, monkeypatch):
    """A parent folder the user may not write to (simulated: root may create folders anywhere)."""

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    out = tmp_path / "run"
    assert train("--epochs", "1", "--out", str(out)) == 2
    assert error_line(capsys) == f"{PROG}: error: --out {out}: cannot create this folder (Permission denied)"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to a read-only folder")
def test_read_only_out_refused_before_any_work(tmp_path, capsys, no_data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert train("--epochs", "1", "--out", str(locked / "run")) == 2
        line = error_line(capsys)
        assert line.startswith(f"{PROG}: error: --out {locked / 'run'}: cannot ") and "Permission denied" in line
    finally:
        locked.chmod(0o700)


def test_resume_and_overwrite_together_refused(tmp_path, capsys, no_data):
    with pytest.raises(SystemExit) as info:
        train("--epochs", "1", "--out", str(tmp_path / "r"), "--resume", "--overwrite")
    assert info.value.code == 2
    assert "--overwrite: not allowed with argument --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# an existing run is never overwritten by accident
# --------------------------------------------------------------------------------------


def test_existing_run_not_overwritten(run_copy, capsys, no_data):
    before = (run_copy / CHECKPOINT).read_bytes(), (run_copy / HISTORY).read_bytes()
    assert train("--epochs", "1", "--out", str(run_copy)) == 2
    assert error_line(capsys) == (
        f"{PROG}: error: {run_copy} already holds a run ({CHECKPOINT}, {HISTORY}); "
        "pass --resume to continue it, or --overwrite to delete it and start afresh"
    )
    assert ((run_copy / CHECKPOINT).read_bytes(), (run_copy / HISTORY).read_bytes()) == before


def test_history_alone_is_a_run_too(tmp_path, capsys, no_data):
    (tmp_path / HISTORY).write_text("{}\n")
    assert train("--epochs", "1", "--out", str(tmp_path)) == 2
    assert f"already holds a run ({HISTORY})" in error_line(capsys)


def test_overwrite_starts_afresh(run_copy, capsys):
    (run_copy / HISTORY).write_text('{"epoch": [1, 2, 3]}\n')
    assert train("--epochs", "1", "--out", str(run_copy), "--overwrite") == 0
    assert "resumed" not in capsys.readouterr().out
    assert torch.load(run_copy / CHECKPOINT, weights_only=True)["history"]["epoch"] == [1]
    assert (run_copy / HISTORY).read_text().count('"epoch"') == 1
    assert '"epoch": [\n  1\n ]' in (run_copy / HISTORY).read_text()


# --------------------------------------------------------------------------------------
# --resume continues only the same run
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, difference",
    [
        (["--lr", "0.05"], "lr: checkpoint 0.1, requested 0.05"),
        (["--schedule", "step"], "schedule: checkpoint 'cosine', requested 'step'"),
        (["--seed", "1"], "seed: checkpoint 0, requested 1"),
        (["--optimizer", "adamw"], "optimizer: checkpoint 'sgd', requested 'adamw'"),
        (["--weight-decay", "0"], "weight_decay: checkpoint 0.0005, requested 0.0"),
        (["--momentum", "0.5"], "momentum: checkpoint 0.9, requested 0.5"),
        (["--model", "resnet/resnet20"], "model: checkpoint 'resnet/resnet8', requested 'resnet/resnet20'"),
        (["--dataset", "cifar10"], "dataset: checkpoint 'shapes', requested 'cifar10'"),
    ],
)
def test_resume_with_other_settings_refused(run_copy, capsys, no_data, args, difference):
    before = (run_copy / CHECKPOINT).read_bytes()
    assert train("--epochs", "2", "--out", str(run_copy), "--resume", *args) == 2
    assert error_line(capsys) == (
        f"{PROG}: error: cannot resume from {run_copy / CHECKPOINT}: the run's settings differ "
        f"({difference}); resume with the checkpoint's settings, or pass --overwrite to start afresh"
    )
    assert (run_copy / CHECKPOINT).read_bytes() == before


def test_resume_lists_every_difference(run_copy, capsys, no_data):
    assert main(["--model", "resnet/resnet8", "--dataset", "shapes", "--size", "128", "--batch-size", "16",
                 "--epochs", "2", "--out", str(run_copy), "--resume"]) == 2
    assert "(batch_size: checkpoint 32, requested 16; size: checkpoint 64, requested 128)" in error_line(capsys)


def test_resume_with_same_settings_and_more_epochs(run_copy, capsys):
    assert train("--epochs", "2", "--out", str(run_copy), "--resume") == 0
    assert f"resumed from {run_copy / CHECKPOINT} after epoch 1" in capsys.readouterr().out
    assert torch.load(run_copy / CHECKPOINT, weights_only=True)["history"]["epoch"] == [1, 2]


def _strip_settings(out):
    """Make the run in ``out`` look like one written before checkpoints kept their settings."""
    state = torch.load(out / CHECKPOINT, weights_only=True)
    del state["settings"]
    torch.save(state, out / CHECKPOINT)


def test_resume_old_checkpoint_without_settings(run_copy, capsys):
    _strip_settings(run_copy)
    assert train("--epochs", "2", "--out", str(run_copy), "--resume") == 0
    out = capsys.readouterr().out
    assert (
        f"note: {run_copy / CHECKPOINT} was written before checkpoints kept their settings; "
        "only lr and schedule were compared" in out
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--lr", "0.05"], "the run's settings differ (lr: checkpoint 0.1, requested 0.05)"),
        (["--optimizer", "adamw"], "it holds the state of an sgd optimizer, not of adamw"),
        (["--model", "resnet/resnet20"], "it holds the weights of a different model"),
    ],
)
def test_resume_old_checkpoint_with_other_settings(run_copy, capsys, args, expected):
    _strip_settings(run_copy)
    assert train("--epochs", "2", "--out", str(run_copy), "--resume", *args) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: cannot resume from {run_copy / CHECKPOINT}: ")
    assert expected in lines[0]


# --------------------------------------------------------------------------------------
# a corrupt checkpoint is named
# --------------------------------------------------------------------------------------

CORRUPT = {
    "empty": lambda path: path.write_bytes(b""),
    "random bytes": lambda path: path.write_bytes(bytes(range(256)) * 4),
    "text": lambda path: path.write_text("epoch 3\n"),
    "a tensor": lambda path: torch.save(torch.zeros(3), path),
    "a dict of something else": lambda path: torch.save({"weights": torch.zeros(3)}, path),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_checkpoint_named(run_copy, capsys, no_data, kind):
    CORRUPT[kind](run_copy / CHECKPOINT)
    assert train("--epochs", "2", "--out", str(run_copy), "--resume") == 2
    line = error_line(capsys)
    assert line.startswith(f"{PROG}: error: {run_copy / CHECKPOINT} is not a valid effconv_ref checkpoint (")
    assert line.endswith("); pass --overwrite instead of --resume to start afresh")


# --------------------------------------------------------------------------------------
# a diverging run stops
# --------------------------------------------------------------------------------------


def test_diverging_run_stops_with_a_clear_error(tmp_path, capsys):
    assert train("--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "r")) == 1
    captured = capsys.readouterr()
    assert "final test accuracy" not in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{PROG}: error: the training diverged: the loss is ")
    assert "at epoch 1 of 2, step " in lines[0] and "try a lower --lr than 1e+30" in lines[0]


# --------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------


def interrupt(tmp_path, wait_for, *args):
    """Start the CLI, send SIGINT once ``wait_for`` is printed; (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "effconv_ref.train", "--model", "resnet/resnet8", "--dataset", "shapes",
               "--batch-size", "32", "--no-progress", "--out", "r", *args]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in process.stdout:
        lines.append(line)
        if line.startswith(wait_for) or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, "".join(lines) + out, err


def test_ctrl_c_after_an_epoch_says_how_to_resume(tmp_path):
    code, out, err = interrupt(tmp_path, "epoch 1/3", "--epochs", "3", "--size", "1000")
    assert code == 130, err
    checkpoint = Path("r") / CHECKPOINT
    assert err.splitlines() == [
        f"interrupted: the last checkpoint is {checkpoint} (epoch 1 of 3); continue with: "
        f"{PROG} --model resnet/resnet8 --dataset shapes --batch-size 32 --no-progress --out r "
        "--epochs 3 --size 1000 --resume"
    ]
    assert torch.load(tmp_path / checkpoint, weights_only=True)["epoch"] == 1


def test_ctrl_c_before_a_checkpoint_says_so(tmp_path):
    code, out, err = interrupt(tmp_path, "training", "--epochs", "3", "--size", "3000")
    assert code == 130, err
    assert err.splitlines() == [
        f"interrupted before the first epoch ended: no checkpoint was written to {Path('r')}"
    ]
    assert not (tmp_path / "r" / CHECKPOINT).exists()


# --------------------------------------------------------------------------------------
# a failed download says what to fetch by hand
# --------------------------------------------------------------------------------------

DOWNLOADS = [
    ("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz", "cifar-100-python"),
    ("stl10", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz", "stl10_binary"),
]


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def expected_download_help(name, url, archive, folder, root):
    return (
        f"could not download {name} from {url} (Temporary failure in name resolution); "
        f"place it by hand: mkdir -p {root} && curl -L {url} -o {root / archive} "
        f"and run again (torchvision checks the archive and extracts it to {root / folder})"
    )


@pytest.mark.parametrize("name, url, archive, folder", DOWNLOADS)
def test_failed_download_says_what_to_fetch(tmp_path, offline, name, url, archive, folder):
    root = tmp_path / "datasets"
    with pytest.raises(data.DownloadError) as info:
        data.get_dataset(name, train=True, root=root)
    assert str(info.value) == expected_download_help(name, url, archive, folder, root)


@pytest.mark.parametrize("name, url, archive, folder", DOWNLOADS)
def test_cli_failed_download(tmp_path, offline, capsys, name, url, archive, folder):
    root = tmp_path / "datasets"
    code = main(["--model", "resnet/resnet8", "--dataset", name, "--epochs", "1",
                 "--data-root", str(root), "--out", str(tmp_path / "r")])
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines == [f"{PROG}: error: {expected_download_help(name, url, archive, folder, root)}"], captured.err
    assert not (tmp_path / "r" / CHECKPOINT).exists()


def test_download_help_quotes_paths(tmp_path):
    root = tmp_path / "my data"
    text = data.download_help("cifar10", root)
    assert f"mkdir -p '{root}'" in text and f"-o '{root / 'cifar-10-python.tar.gz'}'" in text
