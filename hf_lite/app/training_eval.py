"""A training stage's evaluation: only when asked, and never the same split twice for one model.

transformers' convention decides "asked": ``do_eval`` (which ``TrainingArguments`` sets for any
``eval_strategy`` but ``"no"``; a script such as transformers' ``run_glue.py`` evaluates at the end when it is
set). When the Trainer already evaluated the last step (``eval_strategy: epoch``, or ``steps`` landing on the
final step) that evaluation is the stage's; otherwise the trained model is evaluated once.

>>> from types import SimpleNamespace
>>> state = SimpleNamespace(global_step=10, log_history=[{"loss": 0.7, "step": 10}, {"eval_loss": 0.5, "step": 10}])
>>> trainer = SimpleNamespace(eval_dataset=[0, 1], args=SimpleNamespace(do_eval=True), state=state)
>>> final_evaluation(trainer, print, "distill")  # reused: no second evaluation
{'eval_loss': 0.5}
>>> final_evaluation(SimpleNamespace(eval_dataset=[0, 1], args=SimpleNamespace(do_eval=False)), print, "ft")
{}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def final_evaluation(trainer: Any, log: Callable[[str], None], stage: str) -> dict[str, Any]:
    """The trained model's evaluation metrics for stage ``stage``: ``{}`` unless ``trainer.args.do_eval`` (and an
    evaluation split); the Trainer's own evaluation of the last step when its log history holds one; else one
    ``trainer.evaluate()``, announced through ``log``."""
    if getattr(trainer, "eval_dataset", None) is None or not trainer.args.do_eval:
        return {}
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key != "step"}  # as evaluate() returns it
    log(f"{stage}: evaluating the trained model on {len(trainer.eval_dataset):,} rows")
    return trainer.evaluate()
