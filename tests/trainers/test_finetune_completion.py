"""FinetuneTrainer takes CompletionCollator's batches: the prompt keys it adds for on-policy generation never
reach the model's forward (transformers' models would take them silently as extra keyword arguments), and
training equals a stock Trainer given the same batches without them."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_lite.data import CompletionCollator, tokenize_data
from hf_lite.data.chat import CHATML_TEMPLATE
from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import FinetuneTrainer


def _setup():
    tok = build_tokenizer(style="gpt")
    tok.chat_template = CHATML_TEMPLATE
    rows = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"the cat {w}"}] for w in ("sees", "eats", "has", "is")],
            "completion": [
                [{"role": "assistant", "content": w}] for w in ("a dog", "the bird", "a big dog", "red")
            ],
        }
    )
    data = tokenize_data(rows, tok, task="causal-lm", max_length=64)
    return tok, data


@pytest.mark.integration
def test_finetune_trainer_drops_the_prompt_keys_and_trains_as_without_them(tmp_path):
    tok, data = _setup()
    collator = CompletionCollator(tok)
    assert {"prompt_input_ids", "prompt_attention_mask"} <= set(collator([data[0], data[1]]))

    def without_prompts(features):
        return {k: v for k, v in collator(features).items() if not k.startswith("prompt_")}

    models = []
    for cls, collate in ((FinetuneTrainer, collator), (Trainer, without_prompts)):
        model = build_tiny_model("llama", tokenizer=tok, seed=0)[0]
        args = TrainingArguments(
            str(tmp_path / cls.__name__), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
            report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
            remove_unused_columns=False, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=2,
        )  # fmt: skip
        trainer = cls(model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collate)
        seen: set[str] = set()
        model.register_forward_pre_hook(lambda m, a, kw, seen=seen: seen.update(kw), with_kwargs=True)
        trainer.train()
        assert not seen & {"prompt_input_ids", "prompt_attention_mask", "prompt_length"}, sorted(seen)
        models.append((trainer.model, [log for log in trainer.state.log_history if "eval_loss" in log]))
    (a, logs_a), (b, logs_b) = models
    assert [log["eval_loss"] for log in logs_a] == pytest.approx(
        [log["eval_loss"] for log in logs_b], rel=1e-6
    )
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
