"""``FinetuneTrainer``: a ``transformers.Trainer`` whose loss, and so whose gradient, is the mean over the whole
global batch under DDP and gradient accumulation, whether or not the model's own loss reads
``num_items_in_batch``.

Why the stock ``Trainer`` is wrong for some models: it decides that a model normalizes its loss by
``num_items_in_batch`` (the label count of the global batch: all accumulation steps, all processes) when the
model's ``forward`` takes ``**kwargs`` -- which every transformers 5 model does. It then (a) multiplies the loss by
the number of processes (``average_tokens_across_devices``, to undo DDP's gradient averaging) and (b) skips the
division by the gradient accumulation steps. A model whose loss is a plain per-micro-batch mean and ignores the
keyword (``BertForSequenceClassification``'s ``CrossEntropyLoss()``, its MSE/BCE heads, ...) therefore logs and
backpropagates ``world_size x gradient_accumulation_steps`` times its loss.

The fix here measures instead of guessing: once, on the first labelled batch, the model's loss is computed with
``num_items_in_batch=1`` and ``=2`` (same inputs, same random state, no gradient); a loss that halves reads the count,
a loss that stays is a mean. A mean is then rescaled to what a loss that reads the count returns
(:func:`mean_loss_as_global_share`): ``mean x local_items / num_items_in_batch``, where ``local_items`` is counted by
the Trainer's own rule (labels ``!= -100``, shifted for causal LMs). Both kinds of model then follow the one
convention the Trainer's distributed and accumulation scaling was written for, which is exact for uneven label
counts across processes and accumulation steps.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from hf_lite.quantization import keep_bnb_layout_trainable_
from trainers.distillation_onpolicy import NOT_MODEL_INPUTS


def check_distributed_launch(args: TrainingArguments) -> None:
    """Refuse a multi-process launch whose ``Trainer`` would not join the process group.

    ``accelerate launch --multi_gpu --num_processes 2 script.py`` on a machine without GPUs starts two processes
    (``WORLD_SIZE=2`` in their environment), but ``TrainingArguments`` without ``use_cpu`` sets up no process group:
    each process trains alone (``world_size=1``) and both write the same ``output_dir``.

    Args:
        args: the ``TrainingArguments`` (or subclass) of the run.

    Raises:
        ValueError: when the launcher started several processes and ``args.world_size`` is 1.

    >>> from transformers import TrainingArguments
    >>> check_distributed_launch(TrainingArguments("out", use_cpu=True, report_to=[]))  # one process: fine
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and args.world_size == 1:
        raise ValueError(
            f"launched as WORLD_SIZE={launched} processes, but the Trainer runs with world_size=1: each process "
            f"would train alone and write the same output_dir={args.output_dir!r}. Without GPUs add --use_cpu "
            "(TrainingArguments(use_cpu=True)) so the processes join one gloo process group; with GPUs check "
            "that torch sees them (torch.cuda.is_available())."
        )


def count_loss_items(labels: torch.Tensor, *, shift: bool) -> torch.Tensor:
    """Labelled items a mean loss divides by: entries ``!= -100``, over ``labels[..., 1:]`` when the loss shifts
    labels (causal LMs) -- the Trainer's own rule for ``num_items_in_batch``, applied to one micro-batch.

    >>> count_loss_items(torch.tensor([[5, 6, 7], [8, 9, -100]]), shift=True)  # targets 6, 7 and 9
    tensor(3)
    >>> count_loss_items(torch.tensor([1, 0, -100]), shift=False)
    tensor(2)
    """
    return (labels[..., 1:] if shift else labels).ne(-100).sum()


def mean_loss_as_global_share(
    mean_loss: torch.Tensor, local_items: torch.Tensor | int, num_items_in_batch: torch.Tensor | int
) -> torch.Tensor:
    """A micro-batch's mean loss rescaled to this micro-batch's share of the global-batch mean.

    ``mean_loss = S / n`` (``S`` the summed loss over the ``n = local_items`` labelled items of the micro-batch);
    the result is ``S / N`` with ``N = num_items_in_batch``, the labelled items of the global batch (every
    accumulation step, every process when ``average_tokens_across_devices``). Summed over the accumulation steps and
    processes, the shares give ``sum(S) / N``: the mean over the global batch, however unevenly the items fall.

    >>> mean_loss_as_global_share(torch.tensor(0.5), 3, 12)  # 1.5 summed over 3 of 12 items
    tensor(0.1250)
    """
    return mean_loss * (local_items / num_items_in_batch)


@torch.no_grad()
def loss_reads_num_items(model: torch.nn.Module, inputs: dict[str, Any]) -> bool | None:
    """Whether ``model(**inputs).loss`` is normalized by a ``num_items_in_batch`` keyword, measured.

    The loss is computed with ``num_items_in_batch=1`` and ``=2`` under the same random state (dropout masks
    identical; the caller's random stream is left untouched) without gradients: halved -> ``True``; unchanged ->
    ``False``. A ``forward`` with neither ``**kwargs`` nor ``num_items_in_batch`` -> ``False`` without a forward.
    ``None`` when the loss is 0 or not finite (undecidable on this batch).

    Raises:
        ValueError: when the loss changes with the count but is not divided by it.

    >>> from hf_lite.testing import build_tiny_model
    >>> model = build_tiny_model("llama")[0]
    >>> ids = torch.tensor([[5, 6, 7, 8]])
    >>> loss_reads_num_items(model, {"input_ids": ids, "labels": ids})
    True
    """
    params = inspect.signature(model.forward).parameters
    if "num_items_in_batch" not in params and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    ):
        return False
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    losses = []
    for count in (1.0, 2.0):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            outputs = model(**inputs, num_items_in_batch=torch.tensor(count, device=inputs["labels"].device))
        losses.append((outputs["loss"] if isinstance(outputs, dict) else outputs[0]).float())
    one, two = losses
    if not torch.isfinite(one) or one == 0:
        return None
    if torch.isclose(one, 2 * two, rtol=1e-4):
        return True
    if torch.isclose(one, two, rtol=1e-4):
        return False
    raise ValueError(
        f"the loss of {type(model).__name__} changes with num_items_in_batch but is not divided by it "
        f"(num_items_in_batch=1 -> {one.item():.6g}, =2 -> {two.item():.6g}); pass "
        "FinetuneTrainer(loss_reads_num_items=True) if it normalizes by the count, False if it is a mean."
    )


class FinetuneTrainer(Trainer):
    """A ``transformers.Trainer`` whose training and evaluation loss is the mean over the global batch under DDP and
    gradient accumulation, for models whose loss reads ``num_items_in_batch`` (causal LMs) and for models whose
    loss is a per-batch mean (sequence classifiers): 2 processes x batch ``b`` give the loss and weights of 1
    process x batch ``2b`` (see the module docstring for the cause in the stock ``Trainer``).

    Args:
        loss_reads_num_items: whether the model's loss divides by ``num_items_in_batch``; ``None`` (default)
            measures it on the first labelled batch (:func:`loss_reads_num_items`).
        *args, **kwargs: as for ``transformers.Trainer``. With ``label_smoothing_factor`` or ``compute_loss_func``
            the loss is the stock Trainer's (both already divide by ``num_items_in_batch``).

    Raises:
        ValueError: from :func:`check_distributed_launch` when several processes were launched but the arguments
            set up none (CPU without ``use_cpu``).

    >>> from transformers import TrainingArguments
    >>> from hf_lite.testing import build_tiny_model
    >>> model = build_tiny_model("bert", "sequence-classification", num_labels=2)[0]
    >>> args = TrainingArguments("out", use_cpu=True, report_to=[])
    >>> trainer = FinetuneTrainer(model=model, args=args, loss_reads_num_items=False)
    >>> trainer.loss_is_scaled_for_ga
    True
    """

    def __init__(self, *args: Any, loss_reads_num_items: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_distributed_launch(self.args)
        keep_bnb_layout_trainable_(self.model)  # a 4-bit model: evaluation must not break its training (CPU)
        self.loss_reads_num_items = loss_reads_num_items
        # The stock loss path is right with a label smoother or a compute_loss_func (both divide by the count),
        # and DataParallel (n_gpu > 1) keeps its own scaling.
        self._owns_loss = (
            self.label_smoother is None and self.compute_loss_func is None and self.args.n_gpu <= 1
        )
        if self._owns_loss:
            self.model_accepts_loss_kwargs = (
                True  # the Trainer then counts num_items_in_batch for every model
            )
            self.loss_is_scaled_for_ga = True  # every loss below is a share of the accumulated global batch

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Without the batch keys that describe the data (``CompletionCollator``'s left-padded prompts, used by
        on-policy generation): the model's forward does not take them."""
        return super()._prepare_inputs({k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS})

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The model's loss as this micro-batch's share of the global-batch mean, times the processes that DDP
        averages over (as the stock Trainer does for losses normalized by ``num_items_in_batch``)."""
        if not self._owns_loss or num_items_in_batch is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.loss_reads_num_items is None:
            self.loss_reads_num_items = loss_reads_num_items(self.accelerator.unwrap_model(model), inputs)
        reads = bool(self.loss_reads_num_items)
        outputs = model(**inputs, **({"num_items_in_batch": num_items_in_batch} if reads else {}))
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if not reads:
            # the Trainer's own counting rule (older transformers count unshifted labels: no attribute)
            local = count_loss_items(inputs["labels"], shift=getattr(self, "_loss_shifts_labels", False))
            loss = mean_loss_as_global_share(loss, local, num_items_in_batch)
        if self.args.average_tokens_across_devices:
            # num_items_in_batch counted every process's items; DDP averages gradients over the processes.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss
