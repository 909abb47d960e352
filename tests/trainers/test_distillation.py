"""DistillationTrainer on tiny models: loss arithmetic, gradient accumulation, resume, learning, errors."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_lite.testing import build_tiny_model, build_tokenizer
from trainers import DistillationConfig, DistillationTrainer, resolve_layer_map
from trainers.distillation_config import parse_layer_map
from trainers.distillation_projections import PROJECTIONS_FILE


@pytest.fixture(scope="module")
def tok():
    tokenizer = build_tokenizer(style="gpt")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _llama(tok, seed: int, **overrides):
    return build_tiny_model("llama", tokenizer=tok, seed=seed, **overrides)[0]


def _token_data(tok, n: int = 16, seed: int = 0, variable: bool = False) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 13, (1,), generator=g)) if variable else 12
        rows.append(torch.randint(3, len(tok), (length,), generator=g).tolist())
    return Dataset.from_dict({"input_ids": rows})


def _args(tmp_path, **kw) -> DistillationConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    return DistillationConfig(**{**base, **kw})


def _collator(tok):
    return DataCollatorForLanguageModeling(tok, mlm=False)


# ----------------------------------------------------------------------------------------- layer maps


def test_layer_maps():
    assert resolve_layer_map("uniform", 2, 4) == [(1, 2), (2, 4)]
    assert resolve_layer_map("uniform", 3, 12) == [(1, 4), (2, 8), (3, 12)]
    assert resolve_layer_map("last", 2, 6) == [(2, 6)]
    assert resolve_layer_map("0:0, 2:5", 2, 6) == [(0, 0), (2, 5)]
    assert parse_layer_map([[1, 2]]) == [(1, 2)]
    with pytest.raises(ValueError, match=r"layer_map pair 3:1 is out of range: the student has layers 0..2"):
        resolve_layer_map("3:1", 2, 4)
    with pytest.raises(ValueError, match=r"layer_map='every other' is not understood"):
        parse_layer_map("every other")


# ------------------------------------------------------------------------------------- the loss itself


@pytest.mark.integration
def test_logged_loss_is_the_weighted_sum_of_its_components(tmp_path, tok):
    teacher = _llama(tok, 1, hidden_size=96, num_hidden_layers=4)
    args = _args(tmp_path, alpha=0.3, hidden_weight=0.7, temperature=3.0)
    trainer = DistillationTrainer(
        model=_llama(tok, 2),
        teacher_model=teacher,
        args=args,
        train_dataset=_token_data(tok),
        data_collator=_collator(tok),
        processing_class=tok,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss_kd" in log]
    assert len(logs) == 4
    for log in logs:
        expected = 0.3 * log["loss_kd"] + 0.7 * log["loss_ce"] + 0.7 * log["loss_hidden"]
        assert log["loss"] == pytest.approx(expected, rel=1e-4)
    # Widths differ (64 vs 96): one projection per pair of the uniform map, trained with the student.
    assert set(trainer.projections.keys()) == {"1_2", "2_4"}
    assert trainer.projections["1_2"].weight.shape == (96, 64)


@pytest.mark.integration
def test_first_step_loss_matches_a_hand_computation(tmp_path, tok):
    from hf_lite import losses

    teacher, student = _llama(tok, 1), _llama(tok, 2)
    data = _token_data(tok, n=4)
    args = _args(tmp_path, max_steps=1, alpha=0.25, temperature=2.0, learning_rate=0.0)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        data_collator=_collator(tok),
        processing_class=tok,
    )
    trainer.train()
    ids = torch.tensor(data["input_ids"])
    with torch.no_grad():
        s, t = student(input_ids=ids).logits[:, :-1], teacher(input_ids=ids).logits[:, :-1]
    target = ids[:, 1:]
    kd = (
        torch.nn.functional.kl_div(
            torch.log_softmax(s / 2, -1).flatten(0, 1),
            torch.log_softmax(t / 2, -1).flatten(0, 1),
            log_target=True,
            reduction="batchmean",
        )
        * 4
    )
    ce = torch.nn.functional.cross_entropy(s.flatten(0, 1), target.flatten())
    log = trainer.state.log_history[0]
    assert log["loss_kd"] == pytest.approx(kd.item(), rel=1e-4)
    assert log["loss_ce"] == pytest.approx(ce.item(), rel=1e-4)
    assert log["loss"] == pytest.approx(0.25 * kd.item() + 0.75 * ce.item(), rel=1e-4)
    del losses


@pytest.mark.integration
def test_chunked_loss_gives_the_same_training(tmp_path, tok):
    def run(chunk_size):
        args = _args(
            tmp_path / str(chunk_size), chunk_size=chunk_size, alpha=1.0, loss_type="jsd", max_steps=2
        )
        trainer = DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=_llama(tok, 1),
            args=args,
            train_dataset=_token_data(tok),
            data_collator=_collator(tok),
        )
        trainer.train()
        return trainer.model, [log["loss_kd"] for log in trainer.state.log_history if "loss_kd" in log]

    plain, plain_logs = run(None)
    chunked, chunked_logs = run(7)
    assert chunked_logs == pytest.approx(plain_logs, rel=1e-5)
    for (name, a), (_, b) in zip(plain.named_parameters(), chunked.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow  # torch.compile
@pytest.mark.integration
def test_compiled_loss_gives_the_same_training(tmp_path, tok):
    def run(compiled):
        args = _args(
            tmp_path / str(compiled),
            compile_loss=compiled,
            alpha=0.5,
            temperature=2.0,
            max_steps=2,
            optim="sgd",
            learning_rate=0.5,
        )  # SGD: Adam would magnify float-rounding differences of ~0 gradients
        trainer = DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=_llama(tok, 1),
            args=args,
            train_dataset=_token_data(tok),
            data_collator=_collator(tok),
        )
        trainer.train()
        return trainer.model, [log["loss_kd"] for log in trainer.state.log_history if "loss_kd" in log]

    eager, eager_logs = run(False)
    compiled, compiled_logs = run(True)
    assert compiled_logs == pytest.approx(eager_logs, rel=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _sgd_step_weights(tmp_path, tok, batch: int, accumulation: int):
    args = _args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        alpha=0.5,
        temperature=2.0,
        lr_scheduler_type="constant",
        hidden_weight=0.5,
    )
    trainer = DistillationTrainer(
        model=_llama(tok, 2),
        teacher_model=_llama(tok, 1, hidden_size=96),
        args=args,
        train_dataset=_token_data(tok, n=8, variable=True),
        data_collator=_collator(tok),
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.integration
def test_one_batch_of_8_equals_8_accumulated_batches_of_1(tmp_path, tok):
    # Sequences of different lengths: a per-micro-batch mean would weigh short sequences' tokens more.
    # KD, CE and hidden-state matching (through a learned projection) are all token-normalized.
    full = _sgd_step_weights(tmp_path / "a", tok, batch=8, accumulation=1)
    accumulated = _sgd_step_weights(tmp_path / "b", tok, batch=1, accumulation=8)
    initial = {n: p for n, p in _llama(tok, 2).named_parameters()}
    moved = max((full[n] - initial[n]).abs().max().item() for n in full)
    assert moved > 1e-3  # the step did something
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------- resume


@pytest.mark.integration
def test_resume_gives_the_same_weights_projections_and_logs(tmp_path, tok):
    teacher = _llama(tok, 1, hidden_size=96)
    data = _token_data(tok, n=32)

    def make(out):
        args = _args(
            tmp_path,
            output_dir=str(out),
            max_steps=8,
            save_strategy="steps",
            save_steps=4,
            hidden_weight=0.5,
            alpha=0.5,
        )
        return DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            data_collator=_collator(tok),
            processing_class=tok,
        )

    straight = make(tmp_path / "straight")
    straight.train()
    # The checkpoint holds the student (a plain checkpoint) and, beside it, the projections; no teacher.
    ckpt = tmp_path / "straight" / "checkpoint-4"
    assert (ckpt / PROJECTIONS_FILE).is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in _llama(tok, 2).parameters()
    )

    resumed = make(tmp_path / "straight")  # same output_dir: resume from its checkpoint-4
    resumed.train(resume_from_checkpoint=str(ckpt))
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    for key in straight.projections.state_dict():
        torch.testing.assert_close(
            resumed.projections.state_dict()[key], straight.projections.state_dict()[key]
        )
    late = [
        {k: v for k, v in log.items() if k.startswith("loss")}
        for log in straight.state.log_history
        if log.get("step", 0) > 4 and "loss" in log
    ]
    again = [
        {k: v for k, v in log.items() if k.startswith("loss")}
        for log in resumed.state.log_history
        if log.get("step", 0) > 4 and "loss" in log
    ]
    assert len(late) == len(again) == 4
    for a, b in zip(late, again, strict=True):
        assert b == pytest.approx(a, rel=1e-4)


# --------------------------------------------------------------------------------------- learning test


def _lm_data(tok, texts):
    enc = tok(texts, padding="max_length", max_length=12, truncation=True)
    labels = [
        [t if m else -100 for t, m in zip(ids, am, strict=True)]
        for ids, am in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    )


@pytest.mark.integration
@pytest.mark.slow
def test_distilled_student_agrees_with_the_teacher_more_than_plain_cross_entropy(tmp_path):
    from hf_lite.app.demo import make_corpus

    texts = make_corpus(2560, seed=0)
    tok = build_tokenizer(texts, style="gpt")
    tok.pad_token = tok.eos_token
    held_out = _lm_data(tok, make_corpus(200, seed=99))
    # A teacher trained on plenty of data...
    teacher = build_tiny_model("llama", tokenizer=tok, seed=0, hidden_size=64, num_hidden_layers=2)[0]
    t_args = TrainingArguments(
        str(tmp_path / "teacher"),
        max_steps=80,
        per_device_train_batch_size=32,
        learning_rate=5e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=teacher, args=t_args, train_dataset=_lm_data(tok, texts)).train()
    # ...and a student that sees only 48 sentences, for the same steps and seed, with and without the teacher.
    small = _lm_data(tok, texts[:48])

    def student_after(alpha):
        student = build_tiny_model(
            "llama",
            tokenizer=tok,
            seed=1,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=24,
        )[0]
        args = DistillationConfig(
            str(tmp_path / f"s{alpha}"),
            max_steps=40,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            alpha=alpha,
            temperature=2.0,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=small).train()
        return student.eval()

    def evaluate(student):
        ids = torch.tensor(held_out["input_ids"])
        labels = torch.tensor(held_out["labels"])
        with torch.no_grad():
            s = student(input_ids=ids, attention_mask=torch.tensor(held_out["attention_mask"])).logits[:, :-1]
            t = teacher.eval()(input_ids=ids, attention_mask=torch.tensor(held_out["attention_mask"])).logits[
                :, :-1
            ]
        valid = labels[:, 1:] != -100
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(s, -1)[valid],
            torch.log_softmax(t, -1)[valid],
            log_target=True,
            reduction="batchmean",
        ).item()
        ce = torch.nn.functional.cross_entropy(s[valid], labels[:, 1:][valid]).item()
        top1 = (s.argmax(-1) == t.argmax(-1))[valid].float().mean().item()
        return kl, math.exp(ce), top1

    kd_kl, kd_ppl, kd_agree = evaluate(student_after(alpha=0.9))
    ce_kl, ce_ppl, ce_agree = evaluate(student_after(alpha=0.0))
    print(
        f"KD: kl={kd_kl:.3f} ppl={kd_ppl:.3f} agree={kd_agree:.3f}; CE: kl={ce_kl:.3f} ppl={ce_ppl:.3f} agree={ce_agree:.3f}"
    )
    # Agreement with the teacher: the KL from the teacher's next-token distributions on held-out text.
    assert kd_kl < 0.8 * ce_kl, (kd_kl, ce_kl)
    assert kd_ppl <= ce_ppl, (kd_ppl, ce_ppl)  # the task metric: held-out perplexity


# ------------------------------------------------------------------------------------ other students


@pytest.mark.integration
def test_qlora_student_and_classifier_teacher(tmp_path, tiny_checkpoints):
    from hf_lite import load_model, load_tokenizer

    student = load_model(tiny_checkpoints["llama"], quantization="4bit", peft="lora")
    tok = load_tokenizer(tiny_checkpoints["llama"])
    args = _args(tmp_path, max_steps=2, alpha=0.5)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_checkpoints["llama"],
        args=args,
        train_dataset=_token_data(tok),
        data_collator=_collator(tok),
        processing_class=tok,
    )
    trainer.train()
    assert all(math.isfinite(log["loss_kd"]) for log in trainer.state.log_history if "loss_kd" in log)
    assert all(not p.requires_grad for p in trainer.teachers[0].parameters())

    bert_tok = load_tokenizer(tiny_checkpoints["bert"])
    enc = bert_tok(["the cat runs", "a dog sees the bird", "the red fish", "one big tree"], padding=True)
    data = Dataset.from_dict({**enc, "labels": [0, 1, 1, 0]})
    student = build_tiny_model(
        "bert", "sequence-classification", tokenizer=bert_tok, seed=5, num_hidden_layers=1
    )[0]
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_checkpoints["bert"],
        args=_args(tmp_path / "bert", max_steps=2, hidden_weight=1.0, layer_map="last"),
        train_dataset=data,
        processing_class=bert_tok,
    )
    trainer.train()
    assert trainer.layer_pairs == [(1, 2)] and trainer.projections is None  # same width: no projection


@pytest.mark.integration
def test_two_identical_teachers_equal_one(tmp_path, tok):
    teacher = _llama(tok, 1)

    def first_loss(teachers, weights):
        args = _args(tmp_path, max_steps=1, alpha=1.0, teacher_weights=weights, learning_rate=0.0)
        trainer = DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=teachers,
            args=args,
            train_dataset=_token_data(tok, n=4),
            data_collator=_collator(tok),
        )
        trainer.train()
        return trainer.state.log_history[0]["loss_kd"]

    assert first_loss([teacher, teacher], [0.3, 0.7]) == pytest.approx(first_loss(teacher, None), rel=1e-5)


def test_teacher_mixture_is_the_weighted_average_of_distributions(tmp_path, tok):
    args = _args(tmp_path, teacher_weights=[0.25, 0.75], temperature=2.0)
    trainer = DistillationTrainer(
        model=_llama(tok, 2),
        teacher_model=[_llama(tok, 1), _llama(tok, 3)],
        args=args,
        train_dataset=_token_data(tok, n=4),
    )
    z1, z2 = torch.randn(2, 3, len(tok)), torch.randn(2, 3, len(tok))
    outs = [type("O", (), {"logits": z1})(), type("O", (), {"logits": z2})()]
    _, mixed = trainer._aligned_logits(torch.zeros_like(z1), outs)
    expected = 0.25 * torch.softmax(z1 / 2, -1) + 0.75 * torch.softmax(z2 / 2, -1)
    torch.testing.assert_close(torch.softmax(mixed / 2, -1), expected)


def test_padded_teacher_vocabulary_is_aligned(tmp_path, tok):
    teacher = _llama(tok, 1)
    teacher.resize_token_embeddings(len(tok) + 13)  # e.g. padded to a multiple of 64 for GPU kernels
    trainer = DistillationTrainer(
        model=_llama(tok, 2),
        teacher_model=teacher,
        args=_args(tmp_path, max_steps=1),
        train_dataset=_token_data(tok, n=4),
        data_collator=_collator(tok),
        processing_class=tok,
    )
    trainer.train()
    assert trainer._vocab_size == len(tok)


# ----------------------------------------------------------------------------------------- bad input


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"temperature=0.0 must be > 0"):
        DistillationConfig(str(tmp_path), temperature=0.0)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        DistillationConfig(str(tmp_path), alpha=1.5)
    with pytest.raises(ValueError, match=r"beta=-0.1 must be in \[0, 1\]"):
        DistillationConfig(str(tmp_path), beta=-0.1)
    with pytest.raises(
        ValueError, match=r"teacher_weights=\[0.5, 0.7\] must each be in \[0, 1\] and sum to 1"
    ):
        DistillationConfig(str(tmp_path), teacher_weights=[0.5, 0.7])
    with pytest.raises(ValueError, match=r"hidden_weight=-1.0 must be >= 0"):
        DistillationConfig(str(tmp_path), hidden_weight=-1.0)
    with pytest.raises(ValueError, match=r"chunk_size=0 must be a positive number"):
        DistillationConfig(str(tmp_path), chunk_size=0)
    with pytest.raises(ValueError, match=r"compile_loss='yes' must be True or False"):
        DistillationConfig(str(tmp_path), compile_loss="yes")


def test_trainer_errors(tmp_path, tok):
    student = _llama(tok, 2)
    with pytest.raises(TypeError, match="args must be a DistillationConfig"):
        DistillationTrainer(
            model=student, teacher_model=_llama(tok, 1), args=TrainingArguments(str(tmp_path))
        )
    with pytest.raises(ValueError, match="teacher_model is required"):
        DistillationTrainer(model=student, args=_args(tmp_path))
    with pytest.raises(ValueError, match=r"teacher_weights has 1 entries for 2 teacher\(s\)"):
        DistillationTrainer(
            model=student,
            teacher_model=[_llama(tok, 1), _llama(tok, 3)],
            args=_args(tmp_path, teacher_weights=[1.0]),
        )
    with pytest.raises(ValueError, match=r"layer_map pair 5:1 is out of range"):
        DistillationTrainer(
            model=student,
            teacher_model=_llama(tok, 1),
            args=_args(tmp_path, hidden_weight=1.0, layer_map="5:1"),
        )
    with pytest.raises(
        ValueError, match=r"Hidden widths differ \(student 64, teacher 96\) and hidden_projection=False"
    ):
        DistillationTrainer(
            model=student,
            teacher_model=_llama(tok, 1, hidden_size=96),
            args=_args(tmp_path, hidden_weight=1.0, hidden_projection=False),
        )


def test_vocabulary_mismatch_is_an_error_before_training(tmp_path, tok):
    other = build_tokenizer(["completely different words here and there"] * 3, style="gpt")
    teacher = build_tiny_model("llama", tokenizer=other, seed=1)[0]
    with pytest.raises(
        ValueError, match=r"Vocabulary mismatch: the student's head has \d+ outputs and the teacher's \d+"
    ):
        DistillationTrainer(
            model=_llama(tok, 2), teacher_model=teacher, args=_args(tmp_path), processing_class=tok
        )


def test_incompatible_teacher_head(tmp_path, tok, tiny_checkpoints):
    from hf_lite import load_teacher

    with pytest.raises(ValueError, match=r"different heads.*Load the teacher for task 'causal-lm'"):
        DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=load_teacher(tiny_checkpoints["bert"], "sequence-classification"),
            args=_args(tmp_path),
        )
    student = build_tiny_model("bert", "sequence-classification", seed=0, num_labels=3)[0]
    with pytest.raises(ValueError, match=r"The teacher has 2 outputs and the student 3"):
        DistillationTrainer(model=student, teacher_model=tiny_checkpoints["bert"], args=_args(tmp_path))


def test_no_labels_where_cross_entropy_is_asked_for(tmp_path, tok):
    data = _token_data(tok, n=4)  # no collator: no labels column
    trainer = DistillationTrainer(
        model=_llama(tok, 2),
        teacher_model=_llama(tok, 1),
        args=_args(tmp_path, alpha=0.5, max_steps=1),
        train_dataset=data,
    )
    with pytest.raises(
        ValueError, match=r"alpha=0.5 mixes in cross-entropy on the labels, but the batch has no 'labels'"
    ):
        trainer.train()
    # Pure distillation on unlabeled text works: the attention mask decides which positions count.
    trainer = DistillationTrainer(
        model=_llama(tok, 2),
        teacher_model=_llama(tok, 1),
        args=_args(tmp_path, alpha=1.0, max_steps=1),
        train_dataset=data,
    )
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss_kd"])


# ------------------------------------------------------------------------------------ teacher cache


@pytest.mark.integration
def test_training_from_a_full_teacher_cache_equals_online_distillation(tmp_path, tok):
    from hf_lite.teacher_cache import TeacherCacheCollator, precompute_teacher_cache

    teacher = _llama(tok, 1).eval()
    data = _token_data(tok, n=8, variable=True)
    cache = precompute_teacher_cache(
        teacher, data, tmp_path / "cache", tokenizer=tok, k=len(tok), temperature=2.0
    )

    def first_step(**kw):
        args = _args(
            tmp_path / str(len(kw)),
            max_steps=1,
            alpha=1.0,
            temperature=2.0,
            learning_rate=0.0,
            per_device_train_batch_size=8,
        )
        trainer = DistillationTrainer(model=_llama(tok, 2), args=args, processing_class=tok, **kw)
        trainer.train()
        return trainer.state.log_history[0]["loss_kd"]

    online = first_step(teacher_model=teacher, train_dataset=data, data_collator=_collator(tok))
    from_cache = first_step(
        teacher_model=None,
        train_dataset=cache,
        data_collator=TeacherCacheCollator(tok, labels_from_input_ids=True),
    )
    assert from_cache == pytest.approx(online, rel=2e-3)  # fp16 cache of log-probs


@pytest.mark.integration
def test_training_from_a_cache_reads_it_a_batch_at_a_time_with_the_same_result(tmp_path, tok, monkeypatch):
    """The cache loader (TeacherCacheRows) changes how rows are read, not what the student learns."""
    from transformers import Trainer

    from hf_lite.teacher_cache import TeacherCacheCollator, TeacherCacheRows, precompute_teacher_cache

    cache = precompute_teacher_cache(
        _llama(tok, 1).eval(),
        _token_data(tok, n=12, variable=True),
        tmp_path / "cache",
        tokenizer=tok,
        k=4,
        temperature=1.0,
    )

    def train(name):
        args = _args(tmp_path / name, max_steps=3, alpha=0.5, temperature=1.0, per_device_train_batch_size=4)
        trainer = DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=None,
            args=args,
            train_dataset=cache,
            data_collator=TeacherCacheCollator(tok, labels_from_input_ids=True),
        )
        datasets_seen = []
        original = Trainer._get_dataloader

        def spy(self, dataset, *a, **kw):
            datasets_seen.append(type(dataset).__name__)
            return original(self, dataset, *a, **kw)

        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "_get_dataloader", spy)
            trainer.train()
        return trainer, datasets_seen

    fast, seen = train("fast")
    assert seen == [TeacherCacheRows.__name__] and fast.train_dataset is cache
    monkeypatch.setattr(DistillationTrainer, "get_train_dataloader", Trainer.get_train_dataloader)
    plain, seen = train("plain")
    assert seen == ["Dataset"]
    for a, b in zip(fast.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h.get("loss") for h in fast.state.log_history] == [h.get("loss") for h in plain.state.log_history]


def test_teacher_cache_errors(tmp_path, tok):
    from hf_lite.teacher_cache import precompute_teacher_cache

    cache = precompute_teacher_cache(
        _llama(tok, 1), _token_data(tok, n=4), tmp_path / "cache", tokenizer=tok, k=4, temperature=2.0
    )
    with pytest.raises(ValueError, match=r"cache was computed at temperature=2.0 but args.temperature=1.0"):
        DistillationTrainer(model=_llama(tok, 2), args=_args(tmp_path, temperature=1.0), train_dataset=cache)
    with pytest.raises(
        ValueError, match=r"top-k forward KL \(plus cross-entropy\) only; unset \['hidden_weight'\]"
    ):
        DistillationTrainer(
            model=_llama(tok, 2),
            args=_args(tmp_path, temperature=2.0, hidden_weight=1.0),
            train_dataset=cache,
        )
    with pytest.raises(
        ValueError, match="Both teacher_model and a train_dataset with cached teacher outputs"
    ):
        DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=_llama(tok, 1),
            args=_args(tmp_path, temperature=2.0),
            train_dataset=cache,
        )


@pytest.mark.integration
def test_attention_map_matching_switches_to_eager_attention_and_trains(tmp_path, tiny_checkpoints):
    from hf_lite import load_tokenizer

    bert_tok = load_tokenizer(tiny_checkpoints["bert"])
    enc = bert_tok(["the cat runs", "a dog sees the bird", "the red fish", "one big tree"], padding=True)
    data = Dataset.from_dict({**enc, "labels": [0, 1, 1, 0]})
    student = build_tiny_model(
        "bert", "sequence-classification", tokenizer=bert_tok, seed=5, num_hidden_layers=1
    )[0]
    args = _args(
        tmp_path, max_steps=2, alpha=1.0, attention_weight=1.0, layer_map="1:2", per_device_train_batch_size=4
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_checkpoints["bert"],
        args=args,
        train_dataset=data,
        processing_class=bert_tok,
    )
    assert student.config._attn_implementation == "eager"
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss_attention" in log]
    assert logs and all(math.isfinite(log["loss_attention"]) and log["loss_attention"] > 0 for log in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["loss_kd"] + logs[0]["loss_attention"], rel=1e-4)


@pytest.mark.integration
def test_a_4bit_student_loaded_without_hf_lite_is_kept_trainable_after_evaluation(tmp_path, tiny_checkpoints):
    """The trainer hooks the student's 4-bit layers (bitsandbytes' CPU repacking at evaluation) like load_model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_lite import load_tokenizer
    from hf_lite.quantization import keep_bnb_layout_trainable_

    base = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoints["llama"], quantization_config=BitsAndBytesConfig(load_in_4bit=True)
    )
    student = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    tok = load_tokenizer(tiny_checkpoints["llama"])
    DistillationTrainer(
        model=student,
        teacher_model=tiny_checkpoints["llama"],
        args=_args(tmp_path, max_steps=1),
        train_dataset=_token_data(tok),
        data_collator=_collator(tok),
        processing_class=tok,
    )
    assert keep_bnb_layout_trainable_(student) == 0  # every Linear4bit already carries the hook


# ------------------------------------------------------------- evaluation: the mixed loss and its parts


@pytest.mark.integration
@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_eval_loss_comes_with_a_ce_part_equal_to_a_plain_trainers_eval_loss(tmp_path, tok, alpha):
    """``eval_loss`` stays what the trainer minimises (alpha * KD + (1 - alpha) * CE, as the training ``loss``);
    ``eval_loss_ce`` equals a stock Trainer's ``eval_loss`` of the same student on the same batches (also with
    alpha=1, where no CE is trained on); uneven batches (4, 4, 2) check the row weighting."""
    teacher, student = _llama(tok, 1), _llama(tok, 2)
    data = _token_data(tok, n=10, seed=3, variable=True)
    args = _args(tmp_path, alpha=alpha, temperature=2.0, per_device_eval_batch_size=4)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=data, data_collator=_collator(tok)
    )
    metrics = trainer.evaluate()
    plain_args = TrainingArguments(
        str(tmp_path / "plain"), per_device_eval_batch_size=4, use_cpu=True, report_to=[], disable_tqdm=True
    )
    plain = Trainer(model=student, args=plain_args, eval_dataset=data, data_collator=_collator(tok))
    reference = plain.evaluate()["eval_loss"]
    assert metrics["eval_loss_ce"] == pytest.approx(reference, rel=1e-5)
    mixed = alpha * metrics["eval_loss_kd"] + (1 - alpha) * metrics["eval_loss_ce"]
    assert metrics["eval_loss"] == pytest.approx(mixed, rel=1e-5)
    assert metrics["eval_loss"] != pytest.approx(metrics["eval_loss_ce"], rel=1e-3)  # they do differ
    # predict() uses its own prefix, and a second evaluation starts its sums afresh
    assert trainer.predict(data).metrics["test_loss_ce"] == pytest.approx(reference, rel=1e-5)
    assert trainer.evaluate()["eval_loss_ce"] == pytest.approx(reference, rel=1e-5)
