"""Trainer-level push_to_hub=True from DistillationTrainer writes the hf-lite model card (local Hub server)."""

from __future__ import annotations

import pytest
import yaml
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling

from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import DistillationConfig, DistillationTrainer, PruningCallback

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.mark.integration
def test_trainer_push_to_hub_writes_the_hf_lite_card(hub_server, tmp_path):
    from datasets import Dataset

    tok = build_tokenizer(style="gpt")
    tok.pad_token = tok.eos_token
    teacher = build_tiny_model("llama", tokenizer=tok, seed=1)[0]
    student = build_tiny_model("llama", tokenizer=tok, seed=2)[0]
    data = Dataset.from_dict({"input_ids": [[5, 6, 7, 8, 9, 10] for _ in range(8)]})
    args = DistillationConfig(
        str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        push_to_hub=True,
        hub_model_id="test-user/distilled",
        temperature=2.0,
        alpha=0.5,
    )
    pruning = PruningCallback(target_sparsity=0.5, start_step=0, end_step=1, frequency=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        callbacks=[pruning],
    )
    trainer.train()
    trainer.push_to_hub(blocking=True)

    files = hub_server.files("test-user/distilled")
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert "hf-lite" in meta["tags"] and "distillation" in meta["tags"] and "pruning" in meta["tags"]
    assert "forward_kl on logits, T=2.0, alpha=0.5" in card
    assert "gradual magnitude" in card and str(tmp_path) not in card  # no local paths
    assert hub_server.token not in card
    # The pushed student loads back through the client as an ordinary checkpoint, its sparsity intact.
    model = AutoModelForCausalLM.from_pretrained("test-user/distilled")
    weight = model.model.layers[0].mlp.up_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)
