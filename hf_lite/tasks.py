"""The task vocabulary: which transformers auto class and which PEFT task type each task name means.

Data, evaluation, the teacher cache, recipes and export import the names from here, not from the model
loader.

>>> normalize_task("text-generation"), TASKS["sequence-classification"]
('causal-lm', 'AutoModelForSequenceClassification')
"""

from __future__ import annotations

from hf_lite._utils import did_you_mean

#: Task name -> transformers auto class. ``base`` is the bare encoder/decoder (hidden states only).
TASKS: dict[str, str] = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "base": "AutoModel",
}
#: Task name -> PEFT ``TaskType`` (decides which wrapper PEFT builds and which heads it keeps trainable).
PEFT_TASK_TYPES: dict[str, str] = {
    "causal-lm": "CAUSAL_LM",
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "seq2seq-lm": "SEQ_2_SEQ_LM",
    "base": "FEATURE_EXTRACTION",
}
TASK_ALIASES = {
    "text-generation": "causal-lm",
    "clm": "causal-lm",
    "text-classification": "sequence-classification",
    "classification": "sequence-classification",
    "ner": "token-classification",
    "text2text-generation": "seq2seq-lm",
    "seq2seq": "seq2seq-lm",
    "feature-extraction": "base",
}


def normalize_task(task: str) -> str:
    """Return the canonical task name for ``task`` (accepts ``_`` for ``-`` and common pipeline names).

    >>> normalize_task("causal_lm"), normalize_task("text-classification")
    ('causal-lm', 'sequence-classification')
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a string, one of {sorted(TASKS)}; got {type(task).__name__} {task!r}.")
    key = task.strip().lower().replace("_", "-")
    key = TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"task={task!r} is not a task hf-lite knows{did_you_mean(key, [*TASKS, *TASK_ALIASES])}. "
            f"Use one of: {', '.join(TASKS)}."
        )
    return key
