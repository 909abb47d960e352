"""Row 4 of the perf benchmark: the pruning race.

No callback (twice: the A/A control), ``PruningCallback``, and the same schedule with
``torch.nn.utils.prune``.
"""

from __future__ import annotations

import copy
from typing import Any

from benchmarks.perf.lm import evaluate_lm, lm_dataset, training_args
from benchmarks.perf.stepping import SteppedTrainer, race

#: The no-callback trainer's second copy in the pruning race: the noise floor of the run.
AA_CONTROL = "no callback, again (A/A control)"


def torch_prune_callback(sparsity: float, end_step: int, frequency: int) -> Any:
    """The pruning of ``trainers.PruningCallback`` (magnitude, per layer, cubic schedule, same layers and
    steps) done with ``torch.nn.utils.prune``: ``l1_unstructured`` re-applied at each scheduled step to the
    weights still unpruned (its ``PruningContainer`` keeps earlier masks), ``prune.remove`` at the end."""
    from torch.nn.utils import prune
    from transformers import TrainerCallback

    from hf_lite.pruning import CubicSchedule, find_prunable_modules

    class TorchPruneCallback(TrainerCallback):
        def __init__(self) -> None:
            self.schedule = CubicSchedule(final_sparsity=sparsity, end_step=end_step, frequency=frequency)
            self.modules: dict[str, Any] = {}
            self.current = 0.0

        def _prune(self, step: int) -> None:
            target = self.schedule.sparsity_at(step)
            if target <= self.current:
                return
            amount = 1.0 - (1.0 - target) / (1.0 - self.current)  # fraction of the still-unpruned weights
            for module in self.modules.values():
                prune.l1_unstructured(module, "weight", amount=amount)
            self.current = target

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            self.modules = find_prunable_modules(model)
            if self.schedule.should_update(0):
                self._prune(0)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = state.global_step + 1  # the step just taken, as PruningCallback counts it
            if self.schedule.should_update(step):
                self._prune(step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for module in self.modules.values():
                if prune.is_pruned(module):
                    prune.remove(module, "weight")

    return TorchPruneCallback()


def pruning_race(
    ctx: Any, s: dict[str, Any], base_model: Any, train_blocks: list, val: Any
) -> dict[str, Any]:
    """Row 4: copies of ``base_model`` (the CE-trained student) fine-tuned side by side, pruned or not."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_lite.pruning import find_prunable_modules
    from trainers import PruningCallback

    steps, freq = s["prune_steps"], s["prune_frequency"]
    if steps % freq or steps < 2 * freq:
        raise ValueError(
            f"prune_steps={steps} must be a multiple of prune_frequency={freq} and at least two windows "
            f"(>= {2 * freq}): the first window is left out as warm-up."
        )
    bs = s["batch_size"]
    data = lm_dataset([train_blocks[i % len(train_blocks)] for i in range(steps * bs)])
    callbacks = {
        "no callback": None,
        # The same trainer twice: how far two identical participants' medians land apart in this run.
        AA_CONTROL: None,
        "PruningCallback": PruningCallback(
            target_sparsity=s["prune_sparsity"], start_step=0, end_step=steps, frequency=freq
        ),
        "torch.nn.utils.prune": torch_prune_callback(s["prune_sparsity"], steps, freq),
    }
    trainers_, participants = {}, {}
    for name, callback in callbacks.items():
        model = copy.deepcopy(base_model)
        args = training_args(
            TrainingArguments,
            ctx.work / "prune" / name.replace(" ", "-"),
            steps=steps,
            lr=s["prune_lr"],
            batch_size=bs,
            seed=ctx.seed,
        )
        trainers_[name] = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=default_data_collator,
            callbacks=[callback] if callback else None,
        )
        participants[name] = SteppedTrainer(trainers_[name], name)
    with ctx.phase("pruning race"):
        steps_log = race(participants, steps)
    result: dict[str, Any] = {"steps": steps_log, "models": {}}
    for name, trainer in trainers_.items():
        if name == AA_CONTROL:
            continue
        weights = [m.weight for m in find_prunable_modules(trainer.model).values()]
        zeros = sum(int((w == 0).sum()) for w in weights)
        result["models"][name] = {
            "sparsity": zeros / sum(w.numel() for w in weights),
            **evaluate_lm(trainer.model, val),
        }
    return result
