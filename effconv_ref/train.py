"""One training loop for every chapter and for the command line.

``fit(model, train_loader, test_loader, epochs=...)`` trains with SGD (or AdamW) on a
cosine (or step, or constant) learning-rate schedule, evaluates after every epoch and
returns the history. It is seeded and bitwise deterministic on the CPU, saves a checkpoint
after every epoch that ``resume=True`` continues exactly, distils from a ``teacher`` when
given one (Hinton et al., 2015), and runs data-parallel on every GPU when started by
``torchrun``, with no change to the calling code.

Command line::

    python -m effconv_ref.train --model resnet/resnet20 --dataset cifar10 --epochs 30
    torchrun --nproc_per_node 4 -m effconv_ref.train --model resnet/resnet20 --dataset cifar10 --epochs 30
"""

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from effconv_ref.runtime import progress_bar

from effconv_ref.distill import AttentionTransfer
from effconv_ref.runtime import device as default_device
from effconv_ref.runtime import seed_everything

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant", "halve/N")
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


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


def _atomic_save(write: Callable[[str], None], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)


def _write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


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
) -> dict:
    """Train ``model`` in place for ``epochs`` epochs and return its history.

    The history is a dict of per-epoch lists: ``epoch``, ``train_loss``, ``train_acc``,
    ``test_loss``, ``test_acc`` (accuracies in [0, 1]), ``lr`` and ``seconds`` (wall time;
    the only entry that is not reproducible).

    ``seed`` seeds Python, NumPy, torch and the training loader's shuffling generator, so
    the same model weights, data and seed give bitwise the same run on the CPU. The
    learning rate is set per epoch by ``schedule`` (see ``lr_at``).

    With ``checkpoint_dir``, ``checkpoint.pt`` (weights, optimizer, schedule, epoch,
    history and every random state) and ``history.json`` are written there after every
    epoch. ``resume=True`` continues from that checkpoint: with the same arguments, an
    interrupted run resumed gives bitwise the run that was never interrupted. Resuming with
    a larger ``epochs`` trains the extra epochs on the schedule of the new total.

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
    checkpoint_path = None
    if checkpoint_dir is not None:
        checkpoint_path = Path(checkpoint_dir) / CHECKPOINT
    if resume:
        if checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {checkpoint_path}")

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

    if resume:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = state["history"]
        start = state["epoch"]
        _set_rng_state(state["rng"], generator)
        say(f"resumed from {checkpoint_path} after epoch {start}")
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
        for images, targets in train_loader:
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = targets.numel()
            loss_sum += loss.item() * n
            correct += (logits.detach().argmax(1) == targets).sum().item()
            count += n
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
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
            }
            _atomic_save(lambda tmp: torch.save(state, tmp), checkpoint_path)
            _atomic_save(lambda tmp: _write_json(history, tmp), checkpoint_path.with_name(HISTORY))
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
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--optimizer", default="sgd", help=", ".join(OPTIMIZERS))
    parser.add_argument("--schedule", default="cosine", help=", ".join(SCHEDULES))
    parser.add_argument("--size", type=int, default=None, help="use only the first SIZE samples of each split")
    parser.add_argument("--out", default=None, help="checkpoint folder (default runs/<model>-<dataset>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
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


def main(argv=None) -> int:
    from effconv_ref import data, models

    parser = _parser()
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2

    if args.model not in models.list_models():
        return fail(f"unknown model {args.model!r}; choose one of: {', '.join(models.list_models())}")
    if args.dataset not in data.DATASETS:
        return fail(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(data.DATASETS)}")
    if args.optimizer not in OPTIMIZERS:
        return fail(f"unknown optimizer {args.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    try:
        check_schedule(args.schedule)
    except ValueError as error:
        return fail(str(error))
    for name in ("epochs", "batch_size", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return fail(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    out = Path(args.out or f"runs/{args.model.replace('/', '_')}-{args.dataset}")
    if args.resume and not (out / CHECKPOINT).is_file():
        return fail(f"no checkpoint to resume from at {out / CHECKPOINT}")
    if args.teacher is not None and not Path(args.teacher).is_file():
        return fail(f"no teacher checkpoint at {args.teacher}")
    if (args.teacher_model or args.model) not in models.list_models():
        return fail(f"unknown --teacher-model {args.teacher_model!r}")

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
        state = torch.load(args.teacher, map_location="cpu", weights_only=True)
        teacher.load_state_dict(state["model"])
    seed_everything(args.seed)  # the initial weights
    model = models.build(args.model, num_classes=num_classes)
    history = fit(
        model,
        train_loader,
        test_loader,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        seed=args.seed,
        checkpoint_dir=out,
        resume=args.resume,
        progress=not args.no_progress,
        **(dict(teacher=teacher, attention_beta=args.attention_beta,
                distill_alpha=args.distill_alpha) if teacher is not None else {}),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final test accuracy {history['test_acc'][-1]:.4f} after {len(history['epoch'])} epochs")
        print(f"checkpoint: {out / CHECKPOINT}")
        print(f"history: {out / HISTORY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
