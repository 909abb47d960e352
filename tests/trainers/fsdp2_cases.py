"""The runs test_fsdp2_cpu.py makes twice: sharded on two processes (fsdp2_cpu_worker.py) and on one process.

Not a test module itself (no ``test_`` prefix): the same functions build the models, batches and pruning runs
for both sides, so the comparison is of the engine alone.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers.pruning_callback import PruningCallback

#: name -> (PruningCallback fields, optimizer steps, weights rounded to a coarse grid so that many scores tie).
CASES = {
    "global_ties": ({"scope": "global", "target_sparsity": 0.6, "initial_sparsity": 0.37}, 0, True),
    "layer_ties": ({"scope": "layer", "target_sparsity": 0.6, "initial_sparsity": 0.37}, 0, True),
    "nm_ties": ({"pattern": "2:4", "initial_sparsity": 0.3}, 0, True),
    # Movement scores, updated with the gradients of 3 Adam steps (masks at steps 1, 2 and 3).
    "movement": ({"method": "movement", "scope": "global", "target_sparsity": 0.5, "initial_sparsity": 0.2,
                  "start_step": 1, "frequency": 1}, 3, False),
    "magnitude_trained": ({"scope": "layer", "target_sparsity": 0.5}, 3, False),
}  # fmt: skip
PRUNING_CASES = list(CASES)


def pruning_model(case: str) -> torch.nn.Module:
    model = build_tiny_model("llama", seed=0)[0]
    if CASES[case][2]:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p / p.abs().max() * 4).round() / 4)  # 9 distinct values: ties everywhere
    return model


def run_pruning(model: torch.nn.Module, case: str, *, rank: int, world: int, folder: Path) -> PruningCallback:
    """The callback's events around ``steps`` optimizer steps on this rank's part of a fixed batch, then
    ``on_save`` into ``folder/checkpoint-<step>``."""
    fields, steps, _ = CASES[case]
    callback = PruningCallback(**{"start_step": 0, "end_step": 3, "frequency": 2, **fields})
    args = SimpleNamespace(
        output_dir=str(folder),
        resume_from_checkpoint=None,
        should_save=rank == 0,
        load_best_model_at_end=False,
    )
    state = SimpleNamespace(global_step=0, max_steps=steps, best_model_checkpoint=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    callback.on_init_end(args, state, None, model=model)
    callback.on_train_begin(args, state, None, model=model, optimizer=optimizer)
    ids = torch.randint(
        5, model.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0)
    ).chunk(world)[rank]
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()  # equal token counts per rank: the mean is exact
        callback.on_pre_optimizer_step(args, state, None)
        optimizer.step()
        callback.on_optimizer_step(args, state, None, optimizer=optimizer)
        optimizer.zero_grad()
        state.global_step += 1
    (folder / f"checkpoint-{state.global_step}").mkdir(parents=True, exist_ok=True)
    callback.on_save(args, state, None)
    return callback


def distillation_models():
    tokenizer = build_tokenizer(style="gpt")
    tokenizer.pad_token = tokenizer.eos_token
    teacher = build_tiny_model("llama", tokenizer=tokenizer, seed=1)[0]
    student = build_tiny_model("llama", tokenizer=tokenizer, seed=2)[0]
    return student, teacher, tokenizer


def distillation_batch() -> dict[str, torch.Tensor]:
    """4 rows of 10 tokens; 4 labels of row 0 masked, so the two halves hold different label counts."""
    ids = torch.randint(3, 60, (4, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def distillation_config(output_dir: Path):
    from trainers import DistillationConfig

    return DistillationConfig(
        output_dir=str(output_dir),
        alpha=0.5,
        temperature=2.0,
        per_device_train_batch_size=2,
        average_tokens_across_devices=True,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )


def one_process_distillation_step(output_dir: Path, lr: float = 0.5):
    """The reference: ``DistillationTrainer.compute_loss`` on the whole batch, backward, one SGD step.
    Returns ``(loss, updated student)``."""
    from trainers import DistillationTrainer

    student, teacher, tokenizer = distillation_models()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=distillation_config(output_dir), processing_class=tokenizer
    )
    batch = distillation_batch()
    student.train()
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(student, batch, num_items_in_batch=num_items)
    loss.backward()
    torch.optim.SGD(student.parameters(), lr=lr).step()
    return loss.item(), student
