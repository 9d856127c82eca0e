"""One training loop for every chapter and for the command line.

``fit(model, train_loader, test_loader, epochs=...)`` trains with SGD (or AdamW) on a
cosine (or step, or constant) learning-rate schedule, evaluates after every epoch and
returns the history. It is seeded and bitwise deterministic on the CPU, saves a checkpoint
after every epoch that ``resume=True`` continues exactly, distils from a ``teacher`` when
given one (Hinton et al., 2015), and runs data-parallel on every GPU when started by
``torchrun``, with no change to the calling code. A checkpoint keeps every setting of its
run; resuming with other settings, another model or a file that is not a checkpoint raises
``CheckpointError``, and a loss that turns NaN or infinite stops the run (``DivergedError``).

Command line::

    python -m effconv_ref.train --model resnet/resnet20 --dataset cifar10 --epochs 30
    torchrun --nproc_per_node 4 -m effconv_ref.train --model resnet/resnet20 --dataset cifar10 --epochs 30

The command line checks every argument and the output folder before any work, refuses to
overwrite a run unless told to (``--resume`` or ``--overwrite``), and ends Ctrl-C with the
command that continues the run.
"""

import argparse
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from effconv_ref.models.registry import unknown_model_message
from effconv_ref.runtime import progress_bar

from effconv_ref.distill import AttentionTransfer
from effconv_ref.runtime import device as default_device
from effconv_ref.runtime import seed_everything

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant", "halve/N")
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "rng")
MAX_SEED = 2**32 - 1  # NumPy takes 32-bit seeds


# --------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015):
    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``,
    the KL divergence summed over classes and averaged over the batch. The ``T^2`` keeps
    the soft term's gradients on the scale of the hard term's as ``T`` changes."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * soft + (1.0 - alpha) * F.cross_entropy(student_logits, targets)


def check_schedule(schedule: str) -> str:
    """Validate a schedule name: one of :data:`SCHEDULES`, ``halve/N`` with a whole ``N >= 1``."""
    if schedule in SCHEDULES[:3]:
        return schedule
    if schedule.startswith("halve/") and schedule[6:].isdigit() and int(schedule[6:]) >= 1:
        return schedule
    raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)} (e.g. halve/60)")


def lr_at(epoch: int, epochs: int, lr: float, schedule: str = "cosine") -> float:
    """Learning rate of epoch ``epoch`` (0-based) out of ``epochs``: ``cosine`` decays
    ``lr * (1 + cos(pi * epoch / epochs)) / 2``; ``step`` divides by 10 at 50% and 75% of
    the epochs (He et al., 2016); ``constant`` keeps ``lr``; ``halve/N`` halves it every
    ``N`` epochs (the recipes of Treister et al., N = 60, and Ephrath et al., N = 75)."""
    check_schedule(schedule)
    if schedule.startswith("halve/"):
        return lr * 0.5 ** (epoch // int(schedule[6:]))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return lr * 0.1 ** ((epoch >= epochs // 2) + (epoch >= (3 * epochs) // 4))
    if schedule == "constant":
        return lr


def _make_optimizer(name, parameters, lr, momentum, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _setup_distributed(device):
    """Join the process group ``torchrun`` describes; return (rank, world, device, owned)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, owned


def _sharded_loaders(train_loader, test_loader, rank, world, seed):
    """The same loaders, each process reading its own share of the data."""
    from torch.utils.data.distributed import DistributedSampler

    def like(loader, dataset, sampler):
        return DataLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
        )

    train_sampler = DistributedSampler(train_loader.dataset, world, rank, shuffle=True, seed=seed)
    # evaluation: every sample exactly once over all processes (no padding)
    test_share = Subset(test_loader.dataset, range(rank, len(test_loader.dataset), world))
    return like(train_loader, train_loader.dataset, train_sampler), like(test_loader, test_share, None), train_sampler


def _all_sum(values, device, distributed):
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(totals)
    return totals.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device=None, distributed: bool = False):
    """``(mean cross-entropy, accuracy)`` of ``model`` over ``loader``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
        count += targets.numel()
    model.train(was_training)
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], device, distributed)
    return loss_sum / max(count, 1), correct / max(count, 1)


def _rng_state(generator):
    """Every random state a training run draws from, in a form ``torch.load`` accepts
    with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
        "loader": generator.get_state() if generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(write: Callable, path: Path, mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same folder, flushed to disk, then
    renamed over ``path`` (``os.replace`` is atomic): a crash, a full disk or Ctrl-C in the
    middle leaves the previous file whole and no temporary file behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(obj, f) -> None:
    json.dump(obj, f, indent=1)
    f.write("\n")


# --------------------------------------------------------------------------------------
# checkpoints: what a run stores, and what may resume it
# --------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: not a file ``fit`` wrote, or one of another run."""


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite; ``where`` names the epoch and the step."""

    def __init__(self, where: str, lr: float) -> None:
        self.where, self.lr = where, lr
        super().__init__(f"the training diverged: {where}; try a lower learning rate than lr={lr:g}")


def training_settings(
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    optimizer: str,
    schedule: str,
    seed: int,
    batch_size,
    teacher: bool = False,
    distill_alpha: float = 0.5,
    distill_temperature: float = 4.0,
    attention_beta: float = 0.0,
) -> dict:
    """Every setting of ``fit`` that changes the run, as its checkpoint stores them and
    ``resume`` compares them. ``epochs`` is not one: a resumed run may train longer."""
    return {
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "seed": seed,
        "batch_size": batch_size,
        "teacher": teacher,
        "distill_alpha": distill_alpha,
        "distill_temperature": distill_temperature,
        "attention_beta": attention_beta,
    }


def load_checkpoint(path) -> dict:
    """The state ``fit`` saved in ``path``; ``CheckpointError`` naming the file when it is
    not such a checkpoint (empty, not a ``torch.save`` file, or other content)."""
    path = Path(path)

    def invalid(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid effconv_ref checkpoint ({reason})")

    if path.stat().st_size == 0:
        raise invalid("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # whatever the unpickler makes of a file that is not one
        raise invalid(f"torch.load cannot read it: {type(error).__name__}") from None
    if not isinstance(state, dict):
        raise invalid(f"it holds a {type(state).__name__}, not the dict fit saves")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise invalid(f"it has no {', '.join(missing)}")
    epoch = state["epoch"]
    if not (isinstance(state["model"], dict) and isinstance(state["optimizer"], dict)
            and isinstance(state["history"], dict) and isinstance(epoch, int) and epoch >= 1):
        raise invalid("its model, optimizer, history or epoch is malformed")
    return state


def _optimizer_of(state: dict) -> Optional[str]:
    """Which optimizer wrote the optimizer state of a checkpoint (for checkpoints that do
    not store their settings): AdamW keeps ``betas``, SGD ``momentum``."""
    groups = state["optimizer"].get("param_groups") or [{}]
    if "betas" in groups[0]:
        return "adamw"
    if "momentum" in groups[0]:
        return "sgd"
    return None


def check_resume(state: dict, path, settings: dict) -> list:
    """Check that the checkpoint ``state`` (read from ``path``) was written by a run with
    ``settings``: ``CheckpointError`` listing every setting that differs. Settings the
    checkpoint does not store are not compared; returns notes on what was not checked."""
    notes = []
    saved = state.get("settings")
    if not isinstance(saved, dict):  # written before checkpoints kept their settings
        scheduler = state.get("scheduler") if isinstance(state.get("scheduler"), dict) else {}
        saved = {key: scheduler[key] for key in ("lr", "schedule") if key in scheduler}
        notes.append(
            f"note: {path} was written before checkpoints kept their settings; only lr and schedule were compared"
        )
    differ = [
        f"{key}: checkpoint {saved[key]!r}, requested {settings[key]!r}"
        for key in sorted(settings)
        if key in saved and saved[key] != settings[key]
    ]
    if differ:
        raise CheckpointError(f"cannot resume from {path}: the run's settings differ ({'; '.join(differ)})")
    kind = _optimizer_of(state)
    if "optimizer" in settings and kind is not None and kind != settings["optimizer"]:
        raise CheckpointError(
            f"cannot resume from {path}: it holds the state of an {kind} optimizer, not of {settings['optimizer']}"
        )
    return notes


def _check_model(state: dict, path, model: nn.Module) -> None:
    """``CheckpointError`` unless the checkpoint holds weights of ``model``'s architecture."""
    own, saved = model.state_dict(), state["model"]
    missing = [key for key in own if key not in saved]
    unknown = [key for key in saved if key not in own]
    reshaped = [key for key in own if key in saved and getattr(saved[key], "shape", None) != own[key].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of this model's tensors are missing, e.g. {missing[0]}")
    if unknown:
        parts.append(f"{len(unknown)} tensors this model does not have, e.g. {unknown[0]}")
    if reshaped:
        key = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensors of another shape, e.g. {key} "
            f"{tuple(getattr(saved[key], 'shape', ()))} instead of {tuple(own[key].shape)}"
        )
    if parts:
        raise CheckpointError(f"cannot resume from {path}: it holds the weights of a different model ({'; '.join(parts)})")


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_loader,
    test_loader,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    schedule: str = "cosine",
    device=None,
    seed: int = 0,
    checkpoint_dir=None,
    resume: bool = False,
    teacher: Optional[nn.Module] = None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 4.0,
    attention_beta: float = 0.0,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
    settings: Optional[dict] = None,
) -> dict:
    """Train ``model`` in place for ``epochs`` epochs and return its history.

    The history is a dict of per-epoch lists: ``epoch``, ``train_loss``, ``train_acc``,
    ``test_loss``, ``test_acc`` (accuracies in [0, 1]), ``lr`` and ``seconds`` (wall time;
    the only entry that is not reproducible).

    ``seed`` seeds Python, NumPy, torch and the training loader's shuffling generator, so
    the same model weights, data and seed give bitwise the same run on the CPU. The
    learning rate is set per epoch by ``schedule`` (see ``lr_at``).

    With ``checkpoint_dir``, ``checkpoint.pt`` (weights, optimizer, schedule, epoch,
    history, every random state and the run's settings, see ``training_settings``, plus
    the caller's ``settings`` such as a model's name) and ``history.json`` are written there
    atomically after every epoch. ``resume=True`` continues from that checkpoint: with the
    same arguments, an interrupted run resumed gives bitwise the run that was never
    interrupted. Resuming with a larger ``epochs`` trains the extra epochs on the schedule
    of the new total. Resuming with other settings, another model or from a file that is
    not a checkpoint raises ``CheckpointError`` (a ``ValueError``) before any work.

    A training loss that becomes NaN or infinite stops the run with ``DivergedError``
    naming the epoch and the step; the last checkpoint is the last good epoch.

    With a ``teacher``, the loss is ``distillation_loss`` with ``distill_alpha`` and
    ``distill_temperature``; the teacher stays in eval mode and gets no gradients.
    ``attention_beta > 0`` adds attention transfer at each group's output,
    ``attention_beta * Σ_j mean (Q(s_j) - Q(t_j))²`` (:mod:`effconv_ref.distill`; Crowley
    et al. use ``distill_alpha=0`` and ``attention_beta=1e3``).

    Started by ``torchrun`` (``WORLD_SIZE > 1``), each process trains a
    ``DistributedDataParallel`` copy on its share of every batch (``batch_size`` samples
    per process), and only rank 0 shows progress, logs and writes files.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    check_schedule(schedule)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if not 0.0 <= distill_alpha <= 1.0:
        raise ValueError(f"distill_alpha must be in [0, 1], got {distill_alpha}")
    if distill_temperature <= 0:
        raise ValueError(f"distill_temperature must be > 0, got {distill_temperature}")
    if attention_beta < 0 or (attention_beta > 0 and teacher is None):
        raise ValueError(f"attention_beta must be >= 0 and needs a teacher; got {attention_beta}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be a whole number in [0, {MAX_SEED}], got {seed}")
    run_settings = {
        **training_settings(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            optimizer=optimizer,
            schedule=schedule,
            seed=seed,
            batch_size=getattr(train_loader, "batch_size", None),
            teacher=teacher is not None,
            distill_alpha=distill_alpha,
            distill_temperature=distill_temperature,
            attention_beta=attention_beta,
        ),
        **(settings or {}),
    }
    checkpoint_path = None
    if checkpoint_dir is not None:
        checkpoint_path = Path(checkpoint_dir) / CHECKPOINT
    state, notes = None, []
    if resume:
        if checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {checkpoint_path}")
        state = load_checkpoint(checkpoint_path)
        notes = check_resume(state, checkpoint_path, run_settings)
        _check_model(state, checkpoint_path, model)

    distributed = _distributed()
    owned_group = False
    rank, world = 0, 1
    if distributed:
        rank, world, device, owned_group = _setup_distributed(device)
    else:
        device = torch.device(device) if device is not None else default_device()
    main_process = rank == 0
    say = log if (log is not None and main_process) else (lambda message: None)

    seed_everything(seed)
    generator = getattr(train_loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)

    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    attention = AttentionTransfer(model, teacher, attention_beta) if attention_beta > 0 else None
    opt = _make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    history = {key: [] for key in HISTORY_KEYS}
    start = 0

    if state is not None:
        model.load_state_dict(state["model"])
        try:
            opt.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], generator)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"cannot resume from {checkpoint_path}: its optimizer or random state does not fit this run ({error})"
            ) from None
        history = state["history"]
        start = state["epoch"]
        say(f"resumed from {checkpoint_path} after epoch {start}")
        for note in notes:
            say(note)
        if start >= epochs:
            say(f"already trained {start} epochs (asked for {epochs}); nothing to do")

    net = model
    sampler = None
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
        train_loader, test_loader, sampler = _sharded_loaders(train_loader, test_loader, rank, world, seed)

    for epoch in range(start, epochs):
        tic = time.perf_counter()
        rate = lr_at(epoch, epochs, lr, schedule)
        for group in opt.param_groups:
            group["lr"] = rate
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        loss_sum, correct, count = 0.0, 0, 0
        bar = progress_bar(  # updated by hand: wrapping the loader would start it twice
            total=len(train_loader),
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not (progress and main_process),
        )
        for step, (images, targets) in enumerate(train_loader, 1):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = net(images)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images)
                loss = distillation_loss(logits, teacher_logits, targets, distill_alpha, distill_temperature)
                if attention is not None:
                    loss = loss + attention.loss()
            else:
                loss = F.cross_entropy(logits, targets)
            value = loss.item()
            if not math.isfinite(value):
                bar.close()
                where = f"the loss is {value} at epoch {epoch + 1} of {epochs}, step {step} of {len(train_loader)}"
                raise DivergedError(where, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = targets.numel()
            loss_sum += value * n
            correct += (logits.detach().argmax(1) == targets).sum().item()
            count += n
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            bar.update()
        bar.close()
        loss_sum, correct, count = _all_sum([loss_sum, correct, count], device, distributed)
        test_loss, test_acc = evaluate(model, test_loader, device, distributed)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": rate,
            "seconds": time.perf_counter() - tic,
        }
        for key in HISTORY_KEYS:
            history[key].append(row[key])
        if checkpoint_path is not None and main_process:
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": {"schedule": schedule, "lr": lr, "epochs": epochs},
                "epoch": epoch + 1,
                "history": history,
                "rng": _rng_state(generator),
                "settings": run_settings,
            }
            _atomic_save(lambda f: torch.save(state, f), checkpoint_path)
            _atomic_save(lambda f: _write_json(history, f), checkpoint_path.with_name(HISTORY), "w")
        say(
            f"epoch {epoch + 1}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
            f"  test loss {test_loss:.4f} acc {test_acc:.4f}  lr {rate:.4g}"
        )

    if attention is not None:
        attention.remove()
    if distributed:
        dist.barrier()
        if owned_group:
            dist.destroy_process_group()
    return history


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m effconv_ref.train",
        description="Train a model of the effconv_ref registry on a dataset.",
    )
    parser.add_argument("--model", required=True, help="registered model name, e.g. resnet/resnet20")
    parser.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, stl10 or shapes")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--optimizer", default="sgd", help=", ".join(OPTIMIZERS))
    parser.add_argument("--schedule", default="cosine", help=", ".join(SCHEDULES))
    parser.add_argument("--size", type=int, default=None, help="use only the first SIZE samples of each split")
    parser.add_argument("--out", default=None, help="checkpoint folder (default runs/<model>-<dataset>)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out, with the same settings")
    again.add_argument("--overwrite", action="store_true", help="delete the run in --out and start afresh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="dataset folder (default $EFFCONV_DATA or ~/.cache/effconv_ref/datasets)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # distillation (Crowley et al.: attention transfer, beta 1e3, no soft targets)
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (a checkpoint.pt of this CLI)")
    parser.add_argument("--teacher-model", default=None, help="the teacher's registered name (default --model)")
    parser.add_argument("--attention-beta", type=float, default=1e3, help="attention transfer weight")
    parser.add_argument("--distill-alpha", type=float, default=0.0, help="weight of Hinton et al.'s soft targets")
    return parser


# Each check below raises ValueError with the one line the command prints; main runs them
# all, in this order, before it loads any data.

RESUME_HINT = "resume with the checkpoint's settings, or pass --overwrite to start afresh"


def check_arguments(args, model_names, dataset_names) -> None:
    """Every value of the command line: names that exist, numbers in range and finite."""
    if args.model not in model_names:
        raise ValueError(unknown_model_message(args.model))
    if args.teacher is not None:
        if args.teacher_model is not None and args.teacher_model not in model_names:
            raise ValueError(f"unknown --teacher-model {args.teacher_model!r}; {unknown_model_message(args.teacher_model).split('; ', 1)[1]}")
        if not Path(args.teacher).is_file():
            raise ValueError(f"no teacher checkpoint at {args.teacher} (--teacher)")
        if not (math.isfinite(args.attention_beta) and args.attention_beta >= 0):
            raise ValueError(f"--attention-beta must be a finite number >= 0, got {args.attention_beta}")
        if not 0.0 <= args.distill_alpha <= 1.0:
            raise ValueError(f"--distill-alpha must be in [0, 1], got {args.distill_alpha}")
    if args.dataset not in dataset_names:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(dataset_names)}")
    if args.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {args.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    check_schedule(args.schedule)
    for name in ("epochs", "batch_size", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if not 0.0 <= args.momentum < 1.0:
        raise ValueError(f"--momentum must be in [0, 1), got {args.momentum}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be a whole number in [0, {MAX_SEED}], got {args.seed}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    for name in ("out", "data_root"):
        value = getattr(args, name)
        if value is not None and not value.strip():
            raise ValueError(f"--{name.replace('_', '-')} must name a folder, got {value!r}")


def check_existing_run(out: Path, resume: bool, overwrite: bool) -> None:
    """A run in ``out`` is continued only with ``--resume`` and replaced only with
    ``--overwrite``; ``--resume`` needs a checkpoint."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ValueError(f"no checkpoint to resume from at {out / CHECKPOINT}")
        return
    found = [name for name in (CHECKPOINT, HISTORY) if (out / name).exists()]
    if found and not overwrite:
        raise ValueError(
            f"{out} already holds a run ({', '.join(found)}); "
            "pass --resume to continue it, or --overwrite to delete it and start afresh"
        )


def check_out_folder(out: Path) -> None:
    """Create ``out`` and a temporary file in it, so that a folder that cannot hold the
    run is refused now rather than after the first epoch."""
    try:
        for folder in reversed((out, *out.parents)):
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"--out {out}: cannot create this folder, {folder} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create this folder ({error.strerror or error})") from None
    try:
        handle, probe = tempfile.mkstemp(dir=out, prefix=".write-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write a file there ({error.strerror or error})") from None


def check_checkpoint(path: Path, requested: dict) -> None:
    """``--resume``: the checkpoint is one, of a run with the ``requested`` settings."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; pass --overwrite instead of --resume to start afresh") from None
    try:
        check_resume(state, path, requested)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; {RESUME_HINT}") from None


def _resume_command(prog: str, argv: list, resumed: bool) -> str:
    """The command that continues this run: the same arguments, ``--resume`` instead of
    ``--overwrite`` (or an abbreviation of it)."""
    kept = [a for a in argv if not (len(a) > 3 and a.startswith("--o") and "--overwrite".startswith(a))]
    if _distributed():
        prog = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '1')} -m effconv_ref.train"
    return shlex.join([*shlex.split(prog), *kept, *([] if resumed else ["--resume"])])


def _interrupted(out: Path, epochs: int, command: str) -> str:
    """The line Ctrl-C ends with: where the last checkpoint is and how to continue."""
    path = out / CHECKPOINT
    if not path.is_file():
        return f"interrupted before the first epoch ended: no checkpoint was written to {out}"
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
        where = f" (epoch {epoch} of {epochs})"
    except Exception:  # the line must come out whatever the file holds
        where = ""
    return f"interrupted: the last checkpoint is {path}{where}; continue with: {command}"


def main(argv=None) -> int:
    from effconv_ref import data, models

    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    main_process = int(os.environ.get("RANK", "0")) == 0

    def fail(message: str, code: int = 2) -> int:
        if main_process:
            print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return code

    # everything is checked before any work
    out = Path(args.out or f"runs/{args.model.replace('/', '_')}-{args.dataset}")
    hyper = dict(
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        seed=args.seed,
    )
    if args.teacher is not None:  # attention transfer (Crowley et al.: beta 1e3, no soft targets)
        hyper.update(attention_beta=args.attention_beta, distill_alpha=args.distill_alpha)
    extra = {"model": args.model, "dataset": args.dataset, "size": args.size}
    try:
        check_arguments(args, models.list_models(), data.DATASETS)
        check_existing_run(out, args.resume, args.overwrite)
        check_out_folder(out)
        if args.resume:
            distilled = dict(teacher=args.teacher is not None)
            check_checkpoint(
                out / CHECKPOINT,
                {**training_settings(**hyper, **distilled, batch_size=args.batch_size), **extra},
            )
    except ValueError as error:  # CheckpointError included
        return fail(str(error))

    try:
        train_loader, test_loader, num_classes = data.get_loaders(
            args.dataset,
            batch_size=args.batch_size,
            root=args.data_root,
            size=args.size,
            num_workers=args.num_workers,
            seed=args.seed,
        )
        teacher = None
        if args.teacher is not None:
            teacher = models.build(args.teacher_model or args.model, num_classes=num_classes)
            try:
                teacher.load_state_dict(load_checkpoint(args.teacher)["model"])
            except RuntimeError as error:  # the checkpoint holds another architecture
                first = str(error).splitlines()[0]
                return fail(f"--teacher {args.teacher} does not fit {args.teacher_model or args.model}: {first}")
        seed_everything(args.seed)  # the initial weights
        model = models.build(args.model, num_classes=num_classes)
        if main_process:
            if args.overwrite:
                for name in (CHECKPOINT, HISTORY):
                    (out / name).unlink(missing_ok=True)
            print(f"training {args.model} on {args.dataset} for {args.epochs} epochs, checkpoints in {out}")
        history = fit(
            model,
            train_loader,
            test_loader,
            epochs=args.epochs,
            **hyper,
            checkpoint_dir=out,
            resume=args.resume,
            progress=not args.no_progress,
            settings=extra,
            teacher=teacher,
        )
    except data.DownloadError as error:
        return fail(str(error))
    except CheckpointError as error:
        return fail(f"{error}; {RESUME_HINT}")
    except DivergedError as error:
        advice = f"try a lower --lr than {args.lr:g}"
        if (out / CHECKPOINT).is_file():
            advice += f", with --overwrite to replace the run in {out}"
        return fail(f"the training diverged: {error.where}; {advice}", code=1)
    except KeyboardInterrupt:
        if main_process:
            if not args.no_progress:
                print(file=sys.stderr)  # end the progress bar's line
            print(_interrupted(out, args.epochs, _resume_command(parser.prog, argv, args.resume)), file=sys.stderr)
        return 130
    if main_process:
        print(f"final test accuracy {history['test_acc'][-1]:.4f} after {len(history['epoch'])} epochs")
        print(f"checkpoint: {out / CHECKPOINT}")
        print(f"history: {out / HISTORY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
