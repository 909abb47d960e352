"""``FinetuneTrainer``: the loss is the mean over the global batch whatever the processes and accumulation steps.

Multi-process: 2 processes x batch 2 under ``accelerate launch`` (gloo on CPU) log the same loss and reach the same
weights as 1 process x batch 4, for a sequence classifier whose loss is a plain mean (tiny BERT, some labels -100 so
the processes hold uneven label counts) and for a causal LM whose loss reads ``num_items_in_batch`` (tiny Llama,
rows of different lengths). Tolerances: logged losses ``rtol=1e-5``; weights ``rtol=1e-4, atol=1e-6`` (gloo's
all-reduce sums in another order than one process). The stock ``Trainer`` fails the same comparison (doubled loss).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from hf_lite.testing import build_tiny_model
from tests.launch import launch_two
from trainers import FinetuneTrainer
from trainers.finetune_trainer import (
    check_distributed_launch,
    count_loss_items,
    loss_reads_num_items,
    mean_loss_as_global_share,
)

SCRIPT = Path(__file__).parent / "scripts" / "finetune_run.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TASKS = ["sequence-classification", "causal-lm"]


def _losses(stdout: str) -> list[float]:
    line = next(line for line in stdout.splitlines() if line.startswith("losses="))
    return json.loads(line.removeprefix("losses="))


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a = load_file(a_dir / "model.safetensors")
    b = load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)


def _run_in_process(out: Path, task: str, batch: int, accum: int, which: str, capsys) -> list[float]:
    spec = importlib.util.spec_from_file_location("finetune_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(out), task, batch, accum, which)
    return _losses(capsys.readouterr().out)


# ---- the scaling rule ----


def test_shares_of_uneven_micro_batches_sum_to_the_global_mean():
    g = torch.Generator().manual_seed(0)
    per_item = [torch.rand(int(n), generator=g) for n in (3, 1, 5, 2)]  # 4 micro-batches (2 procs x 2 accum)
    total = sum(len(x) for x in per_item)
    shares = [mean_loss_as_global_share(x.mean(), len(x), total) for x in per_item]
    torch.testing.assert_close(sum(shares), torch.cat(per_item).mean())
    # the mean of per-micro-batch means (what DDP + a mean loss gives) is not the global mean here
    assert not torch.isclose(torch.stack([x.mean() for x in per_item]).mean(), torch.cat(per_item).mean())


def test_count_loss_items_follows_the_trainers_rule():
    labels = torch.tensor([[-100, 4, 5, -100], [7, 8, -100, -100]])
    assert count_loss_items(labels, shift=False) == 4
    assert count_loss_items(labels, shift=True) == 3  # position 0 is never a target of a shifted loss
    assert count_loss_items(torch.tensor([2, -100, 0]), shift=False) == 2


def test_probe_tells_a_count_normalized_loss_from_a_mean():
    llama = build_tiny_model("llama")[0]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert loss_reads_num_items(llama, {"input_ids": ids, "labels": ids}) is True
    bert = build_tiny_model("bert", "sequence-classification", num_labels=2)[0].train()  # dropout on
    state = torch.get_rng_state()
    assert loss_reads_num_items(bert, {"input_ids": ids, "labels": torch.tensor([1])}) is False
    assert torch.equal(torch.get_rng_state(), state)  # the training's random stream is left as it was


class _Weird(torch.nn.Module):
    """A loss that adds the count instead of dividing by it."""

    def forward(self, x, labels, num_items_in_batch=None):
        return {"loss": x.sum() + (0.0 if num_items_in_batch is None else num_items_in_batch)}


class _Constant(torch.nn.Module):
    def forward(self, x, labels, **kwargs):
        return {"loss": x.sum() * 0.0}


class _NoKwargs(torch.nn.Module):
    def forward(self, x, labels):
        return {"loss": x.sum()}


def test_probe_refuses_a_loss_that_moves_with_the_count_without_dividing_by_it():
    inputs = {"x": torch.ones(2), "labels": torch.zeros(2)}
    with pytest.raises(
        ValueError,
        match=r"changes with num_items_in_batch but is not divided by it.*"
        r"loss_reads_num_items=True",
    ):
        loss_reads_num_items(_Weird(), inputs)
    assert loss_reads_num_items(_NoKwargs(), inputs) is False  # no keyword to pass: a mean by construction


def test_probe_is_undecided_on_a_zero_loss():
    assert loss_reads_num_items(_Constant(), {"x": torch.ones(2), "labels": torch.zeros(2)}) is None
    bert = build_tiny_model("bert", "sequence-classification", num_labels=2)[0]
    ids = torch.tensor([[5, 6, 7]])
    assert loss_reads_num_items(bert, {"input_ids": ids, "labels": torch.tensor([-100])}) is None  # NaN mean


def test_a_multi_process_launch_without_a_process_group_is_refused(monkeypatch, tmp_path):
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    check_distributed_launch(args)  # one process: nothing to say
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 .* world_size=1.*add --use_cpu"):
        check_distributed_launch(args)
    model = build_tiny_model("bert", "sequence-classification", num_labels=2)[0]
    with pytest.raises(ValueError, match=r"add --use_cpu"):
        FinetuneTrainer(model=model, args=args)


# ---- gradient accumulation, one process ----


@pytest.mark.integration
def test_accumulation_gives_the_loss_and_weights_of_the_full_batch(tmp_path, capsys):
    task = "sequence-classification"
    full = _run_in_process(tmp_path / "full", task, 4, 1, "finetune", capsys)
    accum = _run_in_process(tmp_path / "accum", task, 2, 2, "finetune", capsys)
    torch.testing.assert_close(accum, full, rtol=1e-5, atol=0)
    _assert_same_weights(tmp_path / "full", tmp_path / "accum")
    # the stock Trainer takes BERT's mean loss for a count-normalized one: accumulation doubles it
    stock = _run_in_process(tmp_path / "stock", task, 2, 2, "stock", capsys)
    torch.testing.assert_close(stock, [2 * x for x in full], rtol=1e-5, atol=0)


# ---- two processes ----


@pytest.mark.multiprocess
@pytest.mark.parametrize("task", TASKS)
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, task):
    one = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "one"), task, "4"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch_two([str(SCRIPT), str(tmp_path / "two"), task, "2"], env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world_size=1" in one.stdout and "world_size=2" in two.stdout
    assert len(_losses(one.stdout)) == 3
    torch.testing.assert_close(_losses(two.stdout), _losses(one.stdout), rtol=1e-5, atol=0)
    _assert_same_weights(tmp_path / "one", tmp_path / "two")


@pytest.mark.integration
def test_a_4bit_model_is_kept_trainable_after_evaluation(tmp_path, tiny_checkpoints):
    """Like load_model and DistillationTrainer, FinetuneTrainer hooks 4-bit layers (bitsandbytes' CPU repacking)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_lite.quantization import keep_bnb_layout_trainable_

    base = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoints["llama"], quantization_config=BitsAndBytesConfig(load_in_4bit=True)
    )
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    FinetuneTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    assert keep_bnb_layout_trainable_(model) == 0  # every Linear4bit already carries the hook
