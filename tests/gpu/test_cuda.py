"""Checks that need a CUDA GPU (skipped elsewhere, CI included): the accelerator branch of the fused losses
(one block, masks applied without host syncs), the DistillationTrainer and a teacher cache on the GPU, and
QLoRA with bitsandbytes' CUDA kernels. Each compares with the same computation on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from hf_lite import losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(seed: int, vocab: int = 257):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(4, 9, vocab, generator=g) * 3
    teacher = torch.randn(4, 9, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (4, 9), generator=g)
    labels[0, :3] = -100
    labels[3, 6:] = -100
    student[3, 8] = float("nan")  # a padded position: left out, whatever it holds
    teacher[:, :, :5] = float("-inf")  # tokens the teacher rules out
    return student, teacher, losses.shift_labels(labels)


def _value_and_grad(fn, student, *args, device):
    x = student.detach().to(device, copy=True).requires_grad_()
    out = fn(x, *[a.to(device) if isinstance(a, torch.Tensor) else a for a in args])
    loss = out.loss if isinstance(out, tuple) else out
    loss.backward()
    return loss.detach().cpu(), x.grad.cpu()


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_losses_on_cuda_equal_the_cpu(loss_type, temperature):
    student, teacher, labels = _inputs(0)
    if loss_type == "reverse_kl":  # KL(p_s || p_t) is infinite where the teacher rules a token out
        teacher = teacher.nan_to_num(neginf=-30.0)

    def mixed(s, t, y):
        return losses.distillation_and_ce_loss(
            s, t, y, alpha=0.3, loss_type=loss_type, temperature=temperature
        )

    def plain(s, t, y):
        return losses.distillation_loss(s, t, labels=y, loss_type=loss_type, temperature=temperature)

    def chunked(s, t, y):
        return losses.chunked_distillation_loss(
            s, t, labels=y, loss_type=loss_type, temperature=temperature, chunk_size=5
        )

    for fn in (mixed, plain, chunked):
        cpu_value, cpu_grad = _value_and_grad(fn, student, teacher, labels, device="cpu")
        gpu_value, gpu_grad = _value_and_grad(fn, student, teacher, labels, device="cuda")
        assert torch.isfinite(gpu_value) and torch.isfinite(gpu_grad).all()
        torch.testing.assert_close(gpu_value, cpu_value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-4, atol=1e-7)
        assert gpu_grad[labels == -100].eq(0).all()


def test_topk_loss_on_cuda_equals_the_cpu():
    student, teacher, labels = _inputs(1)
    logprobs, indices = losses.teacher_topk(teacher.nan_to_num(neginf=-1e4), k=8, temperature=2.0)

    def mixed(s, lp, ix, y):
        return losses.topk_distillation_and_ce_loss(s, lp, ix, y, alpha=0.6, temperature=2.0)

    cpu_value, cpu_grad = _value_and_grad(mixed, student, logprobs, indices, labels, device="cpu")
    gpu_value, gpu_grad = _value_and_grad(mixed, student, logprobs, indices, labels, device="cuda")
    torch.testing.assert_close(gpu_value, cpu_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-4, atol=1e-7)


def _train_distillation(tmp_path, use_cpu: bool, from_cache: bool = False):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    from hf_lite.teacher_cache import TeacherCacheCollator, precompute_teacher_cache
    from hf_lite.testing import build_tiny_model, build_tokenizer
    from trainers import DistillationConfig, DistillationTrainer

    tok = build_tokenizer(style="gpt")
    tok.pad_token = tok.eos_token
    teacher = build_tiny_model("llama", tokenizer=tok, seed=1)[0].eval()
    student = build_tiny_model("llama", tokenizer=tok, seed=2)[0]
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(3, len(tok), (16, 12), generator=g).tolist()})
    args = DistillationConfig(
        output_dir=str(tmp_path / f"out-{use_cpu}-{from_cache}"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=use_cpu,
        save_strategy="no",
        seed=0,
        alpha=0.5,
        temperature=2.0,
        disable_tqdm=True,
    )
    if from_cache:
        device = "cpu" if use_cpu else "cuda"
        cache = precompute_teacher_cache(
            teacher.to(device), data, tmp_path / f"cache-{device}", tokenizer=tok, k=len(tok), temperature=2.0
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=None,
            args=args,
            train_dataset=cache,
            data_collator=TeacherCacheCollator(tok, labels_from_input_ids=True),
        )
    else:
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        )
    before = None if from_cache else {n: p.detach().cpu().clone() for n, p in teacher.named_parameters()}
    trainer.train()
    return trainer, before


@pytest.mark.parametrize("from_cache", [False, True])
def test_distillation_trainer_on_cuda_matches_the_cpu(tmp_path, from_cache):
    gpu, before = _train_distillation(tmp_path, use_cpu=False, from_cache=from_cache)
    cpu, _ = _train_distillation(tmp_path, use_cpu=True, from_cache=from_cache)
    assert next(gpu.model.parameters()).device.type == "cuda"
    if not from_cache:
        teacher = gpu.teachers[0]
        assert next(teacher.parameters()).device.type == "cuda" and not teacher.training
        for name, param in teacher.named_parameters():  # evaluation mode, no gradient, never stepped
            assert param.grad is None and torch.equal(param.detach().cpu(), before[name])
    gpu_logs = [h for h in gpu.state.log_history if "loss_kd" in h]
    cpu_logs = [h for h in cpu.state.log_history if "loss_kd" in h]
    assert len(gpu_logs) == len(cpu_logs) == 4
    for g, c in zip(gpu_logs, cpu_logs, strict=True):
        for key in ("loss", "loss_kd", "loss_ce"):
            assert math.isfinite(g[key]) and g[key] == pytest.approx(c[key], rel=2e-3), (key, g, c)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_forward_backward_on_cuda(tiny_checkpoints, bits):
    bnb = pytest.importorskip("bitsandbytes")
    from hf_lite import load_model

    model = load_model(tiny_checkpoints["llama"], quantization=bits, peft="lora")
    cls = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, cls)]
    assert quantized and all(m.weight.device.type == "cuda" for m in quantized)
    ids = torch.randint(3, model.config.vocab_size, (2, 10), device="cuda")
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert (
        math.isfinite(out.loss.item())
        and grads
        and all(g is not None and torch.isfinite(g).all() for g in grads)
    )
    full = load_model(tiny_checkpoints["llama"], dtype="float32").cuda()
    with torch.no_grad():
        reference = full(input_ids=ids, labels=ids).loss.item()
    assert out.loss.item() == pytest.approx(
        reference, rel=0.05
    )  # LoRA starts as the identity; quantization error
