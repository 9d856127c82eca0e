"""Attention transfer (Zagoruyko & Komodakis, 2017), as Crowley et al. (2018) use it to
distil a WRN-40-2 into a cheap student, and as the SECL paper trains its students.

For an activation ``x`` of shape ``(B, C, H, W)`` the attention map is the channel mean
of the squares, flattened and normalised per sample:

    Q(x) = normalize(mean_c(x²)),  a ``(B, H·W)`` tensor of unit rows.

The loss between a student and a teacher read at the same ``J`` points (the output of
each group of blocks) is

    L_AT = β Σ_j mean_{b, p} (Q(s_j) − Q(t_j))²,   β = 1e3,

added to the student's cross-entropy (Crowley et al.'s code: ``β`` per point, scaled by
``3 / J``, which is 1 for the three groups of a WRN). ``fit(teacher=...,
attention_beta=1e3)`` in :mod:`effconv_ref.train` uses :class:`AttentionTransfer`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BETA",
    "attention_map",
    "attention_loss",
    "attention_transfer_loss",
    "attention_points",
    "GroupOutputs",
    "AttentionTransfer",
]

BETA = 1e3


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """``Q(x) = normalize(mean_c(x²))``: ``(B, C, H, W) -> (B, H·W)``, each row of unit
    Euclidean norm (a row of zeros stays zero)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"an attention map needs a 4-D (B, C, H, W) activation; got {shape}")
    return F.normalize(x.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_{b, p} (Q(s) − Q(t))²`` for one pair of activations with the same batch and
    spatial size (the channels may differ)."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            "student and teacher activations must have the same batch and spatial size; "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    return (attention_map(student) - attention_map(teacher)).pow(2).mean()


def attention_transfer_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor],
                            beta: float = BETA) -> torch.Tensor:
    """``β Σ_j attention_loss(s_j, t_j)`` over the points ``j``."""
    if len(students) != len(teachers) or not students:
        raise ValueError(
            f"need as many student as teacher activations, at least one; got "
            f"{len(students)} and {len(teachers)}"
        )
    return beta * sum(attention_loss(s, t) for s, t in zip(students, teachers))


def attention_points(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs attention transfer reads: the groups of blocks,
    ``model.groups`` (the WRNs of :mod:`effconv_ref.models.secl`) or ``model.stages``
    (the CIFAR ResNets)."""
    for name in ("groups", "stages"):
        points = getattr(model, name, None)
        if isinstance(points, (nn.ModuleList, nn.Sequential)) and len(points):
            return list(points)
    raise ValueError(
        f"{type(model).__name__} has no groups of blocks to read attention maps from: "
        "attention transfer needs a model.groups or model.stages (nn.ModuleList or "
        "nn.Sequential)"
    )


class GroupOutputs:
    """Forward hooks that keep the latest output of each of ``model``'s attention points."""

    def __init__(self, model: nn.Module):
        self.points = attention_points(model)
        self.outputs: list = [None] * len(self.points)
        self.handles = [
            point.register_forward_hook(self._keeper(i)) for i, point in enumerate(self.points)
        ]

    def _keeper(self, i: int):
        def keep(module, inputs, output):
            self.outputs[i] = output
        return keep

    def take(self) -> list[torch.Tensor]:
        """The outputs of the last forward pass (and forget them)."""
        if any(o is None for o in self.outputs):
            raise RuntimeError("no forward pass has been recorded since the last take()")
        outputs, self.outputs = self.outputs, [None] * len(self.points)
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.outputs = [None] * len(self.points)


class AttentionTransfer:
    """Reads the group outputs of a student and a teacher on every forward pass;
    :meth:`loss` is ``β Σ_j mean (Q(s_j) − Q(t_j))²`` for the latest pair of passes."""

    def __init__(self, student: nn.Module, teacher: nn.Module, beta: float = BETA):
        if beta < 0:
            raise ValueError(f"beta must be >= 0; got {beta}")
        self.beta = beta
        self.student = GroupOutputs(student)
        self.teacher = GroupOutputs(teacher)
        if len(self.student.points) != len(self.teacher.points):
            self.remove()
            raise ValueError(
                f"student and teacher must have as many groups: "
                f"{len(self.student.points)} and {len(self.teacher.points)}"
            )

    def loss(self) -> torch.Tensor:
        return attention_transfer_loss(self.student.take(), self.teacher.take(), self.beta)

    def remove(self) -> None:
        self.student.remove()
        self.teacher.remove()
