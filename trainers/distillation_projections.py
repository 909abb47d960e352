"""The hidden-state projections of a distillation run: built, synchronised over processes, saved beside
the student (``distillation_projections.safetensors``) so that the student stays a plain checkpoint.

When the student's and the teacher's hidden sizes differ, hidden states are compared through one trainable
``nn.Linear(student_width, teacher_width)`` per matched layer pair (TinyBERT's :math:`W_h`).

>>> import tempfile, torch
>>> projections = torch.nn.ModuleDict({"1_2": torch.nn.Linear(4, 8)})
>>> folder = tempfile.mkdtemp()
>>> save_projections(projections, [(1, 2)], folder)
>>> load_projections(projections, folder, "cpu")
True
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from trainers.distillation_config import DistillationConfig, resolve_layer_map
from trainers.distillation_models import text_config

__all__ = ["PROJECTIONS_FILE", "ProjectionSync", "build_projections", "load_projections", "save_projections"]

PROJECTIONS_FILE = "distillation_projections.safetensors"


def build_projections(
    student: nn.Module, teacher: nn.Module, args: DistillationConfig
) -> tuple[list[tuple[int, int]], nn.ModuleDict | None]:
    """``(layer pairs, projections)`` for ``args.layer_map``; the projections are ``None`` when the widths
    match, one ``nn.Linear`` per pair (seeded with ``args.seed``, on ``args.device``) when they differ.

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> student = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> teacher = transformers.LlamaForCausalLM(tiny_config("llama", 100, hidden_size=96, num_hidden_layers=4))
    >>> args = DistillationConfig("out", hidden_weight=1.0, report_to="none", use_cpu=True)
    >>> pairs, projections = build_projections(student, teacher, args)
    >>> pairs, projections["1_2"]
    ([(1, 2), (2, 4)], Linear(in_features=64, out_features=96, bias=True))
    """
    s_cfg, t_cfg = text_config(student), text_config(teacher)
    pairs = resolve_layer_map(args.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
    if s_cfg.hidden_size == t_cfg.hidden_size:
        return pairs, None
    if not args.hidden_projection:
        raise ValueError(
            f"Hidden widths differ (student {s_cfg.hidden_size}, teacher {t_cfg.hidden_size}) and "
            "hidden_projection=False: set hidden_projection=True to learn a linear map, or hidden_weight=0."
        )
    torch.manual_seed(args.seed)  # the projections' initialisation is part of the run's seed
    projections = nn.ModuleDict(
        {f"{s}_{t}": nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size) for s, t in pairs}
    )
    return pairs, projections.to(args.device)


def save_projections(projections: nn.ModuleDict, layer_pairs: list[tuple[int, int]], folder: str) -> None:
    """Write ``projections`` to ``folder/distillation_projections.safetensors`` (the pairs in its metadata).

    >>> import os, tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> save_projections(torch.nn.ModuleDict({"1_2": torch.nn.Linear(4, 8)}), [(1, 2)], folder)
    >>> os.listdir(folder)
    ['distillation_projections.safetensors']
    """
    state = {k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()}
    save_file(state, os.path.join(folder, PROJECTIONS_FILE), metadata={"layer_pairs": repr(layer_pairs)})


def load_projections(projections: nn.ModuleDict, folder: str, device: Any) -> bool:
    """Load the projections saved in ``folder`` into ``projections``; ``False`` when the folder has none.

    >>> import tempfile, torch
    >>> projections = torch.nn.ModuleDict({"1_2": torch.nn.Linear(4, 8)})
    >>> load_projections(projections, tempfile.mkdtemp(), "cpu")
    False
    """
    path = os.path.join(folder, PROJECTIONS_FILE)
    if not os.path.isfile(path):
        return False
    projections.load_state_dict(load_file(path, device=str(device)))
    return True


class ProjectionSync(TrainerCallback):
    """The projections live outside the (DDP-wrapped) student, so the Trainer neither averages their
    gradients over processes nor zeroes them (it calls ``model.zero_grad()``): do both here.

    >>> import types, torch
    >>> holder = types.SimpleNamespace(projections=torch.nn.ModuleDict({"1_2": torch.nn.Linear(2, 3)}))
    >>> holder.projections["1_2"](torch.ones(1, 2)).sum().backward()
    >>> ProjectionSync(holder).on_optimizer_step(None, None, None)
    >>> holder.projections["1_2"].weight.grad is None
    True
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        projections = self.trainer.projections
        if projections is None or args.world_size <= 1 or not torch.distributed.is_initialized():
            return
        for param in projections.parameters():
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
                param.grad /= args.world_size

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.projections is not None:
            self.trainer.projections.zero_grad(set_to_none=True)
