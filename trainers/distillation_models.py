"""What the distillation trainer reads off a student or teacher model: its task, text config, output size
and hidden states; and switching it to eager attention so that it returns attention maps.

>>> import torch
>>> model_task(torch.nn.Linear(2, 2)) is None  # not a transformers model
True
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import transformers
from torch import nn

from hf_lite._utils import unwrap_model
from hf_lite.tasks import TASKS
from trainers.distillation_sharding import unsharded_class

logger = logging.getLogger(__name__)

__all__ = [
    "common_vocabulary",
    "hidden_states",
    "model_task",
    "output_size",
    "text_config",
    "use_eager_attention",
]


def model_task(model: nn.Module) -> str | None:
    """The hf-lite task of a transformers model (``causal-lm``, ``sequence-classification``, ...), or None.

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> model = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> model_task(model), model_task(transformers.LlamaModel(model.config))
    ('causal-lm', 'base')
    """
    base = unwrap_model(model, peft_base=True)
    for task, auto_name in TASKS.items():
        mapping = getattr(transformers, auto_name)._model_mapping
        config_cls = type(getattr(base, "config", None))
        if config_cls in mapping and mapping[config_cls] is unsharded_class(base):
            return task
    return None


def text_config(model: nn.Module) -> Any:
    """The config with the text model's sizes (``num_hidden_layers``, ``hidden_size``), multimodal ones too.

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> model = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> text_config(model).num_hidden_layers
    2
    """
    base = unwrap_model(model, peft_base=True)
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def output_size(model: nn.Module) -> int | None:
    """The number of logits of the model's head (vocabulary rows, or labels of a classifier), None if unknown.

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> model = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> output_size(model)
    100
    """
    base = unwrap_model(model, peft_base=True)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and hasattr(head, "out_features"):
        return head.out_features
    if head is not None and hasattr(head, "weight"):
        return head.weight.shape[0]
    num_labels = getattr(base.config, "num_labels", None)
    return num_labels if model_task(base) in ("sequence-classification", "token-classification") else None


def hidden_states(outputs: Any) -> tuple[torch.Tensor, ...]:
    """``outputs.hidden_states`` (the decoder's for encoder-decoder models); raises when absent.

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> model = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> import torch
    >>> outputs = model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    >>> len(hidden_states(outputs)), tuple(hidden_states(outputs)[0].shape)
    (3, (1, 3, 64))
    """
    hidden = getattr(outputs, "hidden_states", None)
    if hidden is None:
        hidden = getattr(outputs, "decoder_hidden_states", None)
    if hidden is None:
        raise ValueError(
            "hidden_weight > 0 but the model returned no hidden states (output_hidden_states=True)."
        )
    return hidden


def use_eager_attention(model: nn.Module) -> None:
    """Attention maps are only returned by the eager implementation (SDPA/flash never build them).

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> model = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> use_eager_attention(model)
    >>> model.config._attn_implementation
    'eager'
    """
    base = unwrap_model(model, peft_base=True)
    if getattr(base.config, "_attn_implementation", "eager") != "eager":
        logger.info("switching %s to eager attention to return attention maps", type(base).__name__)
        base.set_attn_implementation("eager")


def common_vocabulary(
    student: nn.Module, teachers: list[nn.Module], task: str | None, tokenizer_len: int | None
) -> int | None:
    """The number of logits both models are compared on: the student's, or fewer where a teacher's head is
    only padded beyond the tokenizer's ``tokenizer_len`` tokens; any other mismatch raises ``ValueError``.

    >>> import transformers
    >>> from hf_lite.testing import tiny_config
    >>> model = transformers.LlamaForCausalLM(tiny_config("llama", 100))
    >>> padded = transformers.LlamaForCausalLM(tiny_config("llama", 128))  # embedding rows padded to 128
    >>> common_vocabulary(model, [padded], "causal-lm", tokenizer_len=100)
    100
    """
    student_n = output_size(student)
    common = student_n
    for teacher in teachers:
        teacher_n = output_size(teacher)
        if student_n is None or teacher_n is None or teacher_n == student_n:
            continue
        if task in ("causal-lm", "seq2seq-lm"):
            real = tokenizer_len if tokenizer_len is not None else min(student_n, teacher_n)
            if min(student_n, teacher_n) >= real:
                common = min(common, teacher_n)
                continue
            raise ValueError(
                f"Vocabulary mismatch: the student's head has {student_n} outputs and the teacher's {teacher_n}, "
                f"and the tokenizer has {real} tokens, so they are not the same vocabulary padded differently. "
                "If the teacher has a tokenizer of its own, pass it as teacher_tokenizer= (DistillationTrainer or "
                "DistillationConfig) to distil across tokenizers (aligned spans, ULD or the hybrid loss, on text "
                "data); if the extra rows are only padding, pass the tokenizer as processing_class."
            )
        raise ValueError(
            f"The teacher has {teacher_n} outputs and the student {student_n}: the heads are incompatible. "
            "Give the student the teacher's number of labels (num_labels) and label order."
        )
    return common
