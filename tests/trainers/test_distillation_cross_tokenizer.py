"""DistillationTrainer across tokenizers (teacher_tokenizer=): the collator, the loss against a hand computation,
exactness under gradient accumulation, a permuted vocabulary that must train exactly like the shared one, the
vocabulary preflight, the errors, and a learning test against plain cross-entropy."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from hf_lite.data import align_texts, shared_vocabulary
from hf_lite.data.collate import CROSS_TOKENIZER_KEYS, CrossTokenizerCollator
from hf_lite.losses import cross_entropy_loss, hybrid_uld_loss, shift_labels, uld_loss
from hf_lite.testing import build_tiny_model, build_tokenizer
from tests import tokenizer_kinds as kinds
from trainers import DistillationConfig, DistillationTrainer


@pytest.fixture(scope="module")
def toks():
    return {
        "byte_level": kinds.byte_level_bpe(),
        "metaspace": kinds.metaspace_bpe(),
        "wordpiece": kinds.lowercase_wordpiece(),
    }


def _llama(tok, seed: int, **overrides):
    return build_tiny_model("llama", tokenizer=tok, seed=seed, **overrides)[0]


def _args(tmp_path, **kw) -> DistillationConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
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


def _texts(n: int = 4) -> list[str]:
    return kinds.corpus(n, seed=3)


def _slow_tokenizer():
    from transformers.tokenization_python import PythonBackend

    class CharTokenizer(PythonBackend):  # a slow (pure Python) tokenizer: no offset mapping
        def __init__(self, **kwargs):
            self.vocab = {c: i for i, c in enumerate("<>abcdefghijklmnopqrstuvwxyz ")}
            super().__init__(**kwargs)

        def get_vocab(self):
            return dict(self.vocab)

        @property
        def vocab_size(self):
            return len(self.vocab)

        def _tokenize(self, text):
            return list(text)

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index):
            return list(self.vocab)[index]

    return CharTokenizer()


# ------------------------------------------------------------------------------------------------ collator


def test_collator_pads_both_tokenizations_and_counts_spans_of_targets(toks):
    s_tok, t_tok = toks["metaspace"], toks["wordpiece"]
    texts = kinds.TEXTS
    batch = CrossTokenizerCollator(s_tok, t_tok)([{"text": t} for t in texts])
    s = s_tok(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    t = t_tok(texts, padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "labels", *CROSS_TOKENIZER_KEYS}
    assert torch.equal(batch["input_ids"], s["input_ids"]) and torch.equal(
        batch["attention_mask"], s["attention_mask"]
    )
    assert torch.equal(batch["teacher_input_ids"], t["input_ids"])
    # targets: every token that covers a character (not <s>, not padding)
    covers = (s["offset_mapping"][..., 1] > s["offset_mapping"][..., 0]) & (s["attention_mask"] == 1)
    assert torch.equal(batch["labels"], torch.where(covers, s["input_ids"], -100))
    # a span counts when both sides have a token before it ([CLS] / <s> give one to every span here)
    for row, alignment in enumerate(align_texts(texts, s_tok, t_tok)):
        counted = sum(span.student[0] > 0 and span.teacher[0] > 0 for span in alignment.spans)
        assert counted == len(alignment.spans) and int(batch["span_mask"][row].sum()) == counted


def test_prompt_completion_rows_count_only_completion_spans(toks):
    collator = CrossTokenizerCollator(toks["byte_level"], toks["metaspace"])
    batch = collator([{"prompt": "the quick", "completion": " brown fox jumps"}])
    row = collator.encode({"prompt": "the quick", "completion": " brown fox jumps"})
    spans = [s for s in row["alignment"]["spans"] if s[4] >= len("the quick")]
    assert [("the quick brown fox jumps")[s[4] : s[5]] for s in spans] == [" brown", " fox", " jumps"]
    assert int(batch["span_mask"].sum()) == 3
    student_targets = [i for i, label in enumerate(row["labels"]) if label != -100]
    assert [collator.student.tokenizer.decode(row["input_ids"][i]) for i in student_targets] == [
        " brown",
        " fox",
        " jumps",
    ]


def test_chat_rows_are_rendered_once_with_the_students_template(toks):
    s_tok, t_tok = toks["byte_level"], toks["metaspace"]  # the ChatML template is the student's
    messages = [
        {"role": "user", "content": "Wie viel ist 12 × 7?"},
        {"role": "assistant", "content": "print(12 * 7)  # 84"},
    ]
    collator = CrossTokenizerCollator(s_tok, t_tok)
    prompt = s_tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    text = s_tok.apply_chat_template(messages, tokenize=False)
    for row in ({"messages": messages}, {"prompt": messages[:1], "completion": messages[1:]}):
        encoded = collator.encode(row)
        assert encoded["prompt_text"] == prompt
        targets = [
            i for i, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100
        ]
        assert s_tok.decode(targets) == text[len(prompt) :]  # the answer and its end-of-turn markup
        assert encoded["teacher_input_ids"] == t_tok(text)["input_ids"]
    assert int(collator([{"messages": messages}])["span_mask"].sum()) > 0
    with pytest.raises(ValueError, match=r"the last message of a chat row must be the assistant's"):
        collator.encode({"messages": messages[:1]})
    with pytest.raises(
        ValueError, match=r"rendered with the student tokenizer's chat template, and it has none"
    ):
        CrossTokenizerCollator(t_tok, s_tok).encode({"messages": messages})


def test_rows_encoded_once_in_the_dataset_give_the_same_batch(toks):
    collator = CrossTokenizerCollator(toks["byte_level"], toks["wordpiece"], max_length=12)
    raw = Dataset.from_dict({"text": _texts(6)})
    encoded = raw.map(collator.encode, remove_columns=["text"])
    a, b = collator(list(raw)), collator(list(encoded))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["input_ids"].shape[1] <= 12 and a["teacher_input_ids"].shape[1] <= 12


def test_collator_errors(toks):
    with pytest.raises(
        TypeError, match=r"teacher_tokenizer \(CharTokenizer\) is not a fast tokenizer.*use_fast=True"
    ):
        CrossTokenizerCollator(toks["byte_level"], _slow_tokenizer())
    collator = CrossTokenizerCollator(toks["byte_level"], toks["wordpiece"])
    with pytest.raises(
        ValueError,
        match=r"got a row with columns \['input_ids'\]: it needs 'text' \(a string\), 'prompt' and",
    ):
        collator([{"input_ids": [1, 2]}])
    with pytest.raises(
        ValueError,
        match=r"text='   ': no span of student and teacher tokens.*Drop empty or whitespace-only rows",
    ):
        collator([{"text": "   "}])
    with pytest.raises(ValueError, match=r"CrossTokenizerCollator got no rows"):
        collator([])
    with pytest.raises(ValueError, match=r"max_length=0 must be a positive number of tokens or None"):
        CrossTokenizerCollator(toks["byte_level"], toks["wordpiece"], max_length=0)


# --------------------------------------------------------------------------------------- loss arithmetic


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["hybrid", "uld"])
def test_evaluation_and_first_step_losses_match_a_hand_computation(tmp_path, toks, kind):
    s_tok, t_tok = toks["metaspace"], toks["byte_level"]
    student, teacher = _llama(s_tok, 2), _llama(t_tok, 1, hidden_size=96)
    texts = _texts(4)
    batch = CrossTokenizerCollator(s_tok, t_tok)([{"text": t} for t in texts])
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).logits
    alignment = {k: batch[k] for k in CROSS_TOKENIZER_KEYS[2:]}
    if kind == "hybrid":
        shared = shared_vocabulary(s_tok, t_tok)
        kd = hybrid_uld_loss(
            s_logits, t_logits, alignment, shared, loss_type="jsd", beta=0.3, temperature=2.0,
            matched_weight=0.7, unmatched_weight=0.4,
        )  # fmt: skip
    else:
        kd = uld_loss(s_logits, t_logits, alignment, temperature=2.0)
    ce = cross_entropy_loss(s_logits, shift_labels(batch["labels"]))
    args = _args(
        tmp_path, alpha=0.6, temperature=2.0, loss_type="jsd", beta=0.3, cross_tokenizer_loss=kind,
        hybrid_matched_weight=0.7, hybrid_unmatched_weight=0.4,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=t_tok,
        args=args,
        processing_class=s_tok,
        train_dataset=Dataset.from_dict({"text": texts}),
    )
    # evaluation first (same weights): eval_loss is the mixed loss, with its two parts beside it
    metrics = trainer.evaluate(Dataset.from_dict({"text": texts}))
    assert metrics["eval_loss_kd"] == pytest.approx(kd.item(), rel=1e-5)
    assert metrics["eval_loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(0.6 * kd.item() + 0.4 * ce.item(), rel=1e-5)
    trainer.train()
    log = trainer.state.log_history[-2]  # the first step's (evaluation's metrics come first)
    assert log["loss_kd"] == pytest.approx(kd.item(), rel=1e-5)
    assert log["loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert log["loss"] == pytest.approx(0.6 * kd.item() + 0.4 * ce.item(), rel=1e-5)


@pytest.mark.integration
def test_teachers_of_one_tokenizer_are_mixed_before_the_span_loss(tmp_path, toks):
    s_tok, t_tok = toks["metaspace"], toks["byte_level"]
    student, teachers = _llama(s_tok, 2), [_llama(t_tok, 1), _llama(t_tok, 3)]
    texts = _texts(4)
    batch = CrossTokenizerCollator(s_tok, t_tok)([{"text": t} for t in texts])
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_probs = [
            torch.softmax(t(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits / 2.0, -1)
            for t in teachers
        ]  # fmt: skip
    mixed = 2.0 * torch.log(0.3 * t_probs[0] + 0.7 * t_probs[1])  # logits whose softmax at T=2 is the mixture
    alignment = {k: batch[k] for k in CROSS_TOKENIZER_KEYS[2:]}
    kd = hybrid_uld_loss(s_logits, mixed, alignment, shared_vocabulary(s_tok, t_tok), temperature=2.0)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teachers,
        teacher_tokenizer=t_tok,
        args=_args(tmp_path, alpha=1.0, temperature=2.0, teacher_weights=[0.3, 0.7]),
        processing_class=s_tok,
        train_dataset=Dataset.from_dict({"text": texts}),
    )
    trainer.train()
    assert trainer.state.log_history[0]["loss_kd"] == pytest.approx(kd.item(), rel=1e-5)


@pytest.mark.integration
def test_teachers_with_tokenizers_of_their_own_each_give_a_weighted_span_loss(tmp_path, toks):
    s_tok, tokenizers = toks["metaspace"], [toks["byte_level"], toks["wordpiece"]]
    student, teachers = _llama(s_tok, 2), [_llama(tokenizers[0], 1), _llama(tokenizers[1], 3)]
    texts = _texts(4)
    batch = CrossTokenizerCollator(s_tok, tokenizers)([{"text": t} for t in texts])
    assert {"teacher_input_ids_1", "span_mask_1", "student_index_1"} <= set(batch)
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    kd = 0.0
    for j, (w, teacher, tok) in enumerate(zip([0.3, 0.7], teachers, tokenizers, strict=True)):
        sfx = "" if j == 0 else f"_{j}"
        with torch.no_grad():
            t_logits = teacher(
                input_ids=batch[f"teacher_input_ids{sfx}"],
                attention_mask=batch[f"teacher_attention_mask{sfx}"],
            ).logits
        alignment = {k: batch[k + sfx] for k in CROSS_TOKENIZER_KEYS[2:]}
        kd += w * hybrid_uld_loss(s_logits, t_logits, alignment, shared_vocabulary(s_tok, tok), temperature=2.0)  # fmt: skip
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teachers,
        teacher_tokenizer=tokenizers,
        args=_args(tmp_path, alpha=1.0, temperature=2.0, teacher_weights=[0.3, 0.7]),
        processing_class=s_tok,
        train_dataset=Dataset.from_dict({"text": texts}),
    )
    assert trainer.cross.slots == 2 and "alignment_1" in trainer.train_dataset.column_names
    trainer.train()
    assert trainer.state.log_history[0]["loss_kd"] == pytest.approx(kd.item(), rel=1e-5)
    with pytest.raises(
        ValueError, match=r"teacher_tokenizer has 1 entries for 2 teacher\(s\): give one tokenizer"
    ):
        DistillationTrainer(
            model=student, teacher_model=teachers, teacher_tokenizer=tokenizers[:1], args=_args(tmp_path),
            processing_class=s_tok,
        )  # fmt: skip


def _sgd_weights(tmp_path, toks, batch: int, accumulation: int, several: bool = False):
    s_tok, t_tok = toks["byte_level"], toks["metaspace"]
    teachers = [_llama(t_tok, 1), _llama(toks["wordpiece"], 3)] if several else _llama(t_tok, 1)
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        alpha=0.5,
    )
    trainer = DistillationTrainer(
        model=_llama(s_tok, 2),
        teacher_model=teachers,
        teacher_tokenizer=[t_tok, toks["wordpiece"]] if several else t_tok,
        args=args,
        processing_class=s_tok,
        train_dataset=Dataset.from_dict({"text": [t[: 10 + 9 * i] for i, t in enumerate(_texts(4))]}),
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.integration
@pytest.mark.parametrize("several", [False, True], ids=["one-teacher", "two-tokenizers"])
def test_one_batch_of_4_equals_4_accumulated_batches_of_1(tmp_path, toks, several):
    # Texts of different lengths: a per-micro-batch mean would weigh the spans of short texts more; with two
    # teacher tokenizers each teacher's spans are counted apart.
    full = _sgd_weights(tmp_path / "a", toks, batch=4, accumulation=1, several=several)
    accumulated = _sgd_weights(tmp_path / "b", toks, batch=1, accumulation=4, several=several)
    initial = dict(_llama(toks["byte_level"], 2).named_parameters())
    assert max((full[n] - initial[n]).abs().max().item() for n in full) > 1e-3  # the step did something
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.integration
def test_a_permuted_teacher_vocabulary_trains_exactly_like_the_shared_one(tmp_path, toks):
    """The teacher's vocabulary in another order (same tokens, other ids) goes through the cross-tokenizer path:
    every span is one token and every token is shared, so the hybrid loss is the ordinary forward KL and the run
    must equal the same-tokenizer run, where teacher_tokenizer (the student's own) keeps the ordinary path."""
    tok = toks["byte_level"]
    permuted, perm = kinds.permuted_copy(tok)
    teacher = _llama(tok, 1)
    teacher_p = copy.deepcopy(teacher)
    with torch.no_grad():  # token i of the original is id perm[i] of the copy
        teacher_p.model.embed_tokens.weight[perm] = teacher.model.embed_tokens.weight
        teacher_p.lm_head.weight[perm] = teacher.lm_head.weight
    assert len(shared_vocabulary(tok, permuted).student_ids) == len(tok)
    data = Dataset.from_dict({"text": _texts(8)})
    runs = []
    for model, teacher_tok in ((teacher, tok), (teacher_p, permuted)):
        trainer = DistillationTrainer(
            model=_llama(tok, 2),
            teacher_model=model,
            teacher_tokenizer=teacher_tok,
            args=_args(
                tmp_path,
                max_steps=3,
                alpha=0.7,
                temperature=2.0,
                optim="sgd",
                learning_rate=0.5,
                lr_scheduler_type="constant",
            ),  # fmt: skip
            processing_class=tok,
            train_dataset=data,
        )
        trainer.train()
        runs.append(trainer)
    assert runs[0].cross.token_level and runs[0]._vocab_size == len(tok)  # the ordinary path
    assert not runs[1].cross.token_level and runs[1]._vocab_size is None  # the span path
    assert "alignment" in runs[1].train_dataset.column_names  # tokenized and aligned once per example
    for a, b in zip(runs[0].state.log_history[:3], runs[1].state.log_history[:3], strict=True):
        for key in ("loss", "loss_kd", "loss_ce"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    for (name, a), (_, b) in zip(
        runs[0].model.named_parameters(), runs[1].model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.integration
def test_on_policy_completions_are_decoded_and_scored_across_tokenizers(tmp_path, toks):
    s_tok, t_tok = toks["metaspace"], toks["byte_level"]
    student, teacher = _llama(s_tok, 2), _llama(t_tok, 1)
    rows = [
        {"prompt": "the quick brown", "completion": " fox jumps"},
        {"prompt": "student", "completion": " model learns from teacher"},
    ]
    collator = CrossTokenizerCollator(s_tok, t_tok)
    batch = collator(rows)
    # the reference: greedy completions, the whole sequence decoded, the prompt's text cut off
    with torch.no_grad():
        out = student.generate(
            input_ids=batch["prompt_input_ids"],
            attention_mask=batch["prompt_attention_mask"],
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=s_tok.eos_token_id,
            pad_token_id=s_tok.pad_token_id,
        )
    completions = []
    for r, row in enumerate(rows):
        prompt_ids = batch["prompt_input_ids"][r][batch["prompt_attention_mask"][r] == 1].tolist()
        new = out[r, batch["prompt_input_ids"].shape[1] :].tolist()
        new = new[: new.index(s_tok.eos_token_id) + 1] if s_tok.eos_token_id in new else new
        text = s_tok.decode(prompt_ids + new, skip_special_tokens=True)
        assert text.startswith(row["prompt"]) and len(text) > len(row["prompt"]), text
        completions.append(text[len(row["prompt"]) :])
    expected = collator(
        [{"prompt": r["prompt"], "completion": c} for r, c in zip(rows, completions, strict=True)]
    )
    with torch.no_grad():
        s_logits = student(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
        t_logits = teacher(
            input_ids=expected["teacher_input_ids"], attention_mask=expected["teacher_attention_mask"]
        ).logits
    alignment = {k: expected[k] for k in CROSS_TOKENIZER_KEYS[2:]}
    kd = hybrid_uld_loss(s_logits, t_logits, alignment, shared_vocabulary(s_tok, t_tok), temperature=2.0)
    assert int(expected["span_mask"].sum()) > 0
    args = _args(
        tmp_path, lmbda=1.0, alpha=0.8, max_new_tokens=5, generation_temperature=0.0, temperature=2.0,
        per_device_train_batch_size=2,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=t_tok,
        args=args,
        processing_class=s_tok,
        train_dataset=Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "completion")}),
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["on_policy_fraction"] == 1.0 and "loss_ce" not in log
    assert log["loss_kd"] == pytest.approx(kd.item(), rel=1e-5)
    assert log["loss"] == pytest.approx(0.8 * kd.item(), rel=1e-5)
    card = trainer.compression_summary().distillation
    assert "across tokenizers (hybrid over aligned spans)" in card and "lmbda=1.0 (greedy" in card


@pytest.mark.integration
def test_sequence_level_kd_on_the_teachers_completions_across_tokenizers(tmp_path, toks):
    """The teacher's completions (generate_teacher_completions, in its own tokens) reach the student as text: the
    collator tokenizes prompt + completion for both, and the student's targets are the completion's text."""
    from hf_lite.teacher_cache import generate_teacher_completions

    s_tok, t_tok = toks["metaspace"], toks["byte_level"]
    teacher = _llama(t_tok, 1)
    prompts = ["the quick brown", "student model", "teacher learns from"]
    generated = generate_teacher_completions(teacher, t_tok, prompts, tmp_path / "gen", max_new_tokens=4)
    assert all(c.strip() for c in generated["completion"])
    collator = CrossTokenizerCollator(s_tok, t_tok)
    for row in generated:
        encoded = collator.encode(row)
        assert encoded["teacher_input_ids"][: len(row["prompt_ids"])] == row["prompt_ids"]
        targets = [
            i for i, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100
        ]
        assert s_tok.decode(targets).strip() == row["completion"].strip()
    trainer = DistillationTrainer(
        model=_llama(s_tok, 2),
        teacher_model=teacher,
        teacher_tokenizer=t_tok,
        args=_args(tmp_path, per_device_train_batch_size=3),
        processing_class=s_tok,
        train_dataset=generated,
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss_kd"] > 0 and log["loss_ce"] > 0


# ------------------------------------------------------------------------------------------- preflight


def test_different_tokenizers_without_teacher_tokenizer_name_it_as_the_fix(tmp_path, toks):
    s_tok = toks["metaspace"]
    with pytest.raises(ValueError, match=r"Vocabulary mismatch: .*pass it as teacher_tokenizer="):
        DistillationTrainer(
            model=_llama(s_tok, 2),
            teacher_model=_llama(toks["byte_level"], 1),
            args=_args(tmp_path),
            processing_class=s_tok,
        )
    # the same head size: the teacher's folder holds its own tokenizer, compared with the student's
    other = kinds.metaspace_bpe(vocab_size=400)
    assert len(other) == len(toks["byte_level"])
    folder = tmp_path / "teacher"
    _llama(toks["byte_level"], 1).save_pretrained(folder)
    toks["byte_level"].save_pretrained(folder)
    with pytest.raises(
        ValueError, match=r"has another tokenizer than the student.*cross_tokenizer=False: .*off"
    ):
        DistillationTrainer(
            model=_llama(other, 2),
            teacher_model=str(folder),
            args=_args(tmp_path, cross_tokenizer=False),
            processing_class=other,
        )
    # by default the folder's own tokenizer is taken, as if given by path
    for extra in ({}, {"teacher_tokenizer": str(folder)}):
        trainer = DistillationTrainer(
            model=_llama(other, 2),
            teacher_model=str(folder),
            args=_args(tmp_path, **extra),
            processing_class=other,
            train_dataset=Dataset.from_dict({"text": _texts()}),
        )
        assert not trainer.cross.token_level and isinstance(trainer.data_collator, CrossTokenizerCollator)
        assert trainer.data_collator.teachers[0].tokenizer.get_vocab() == toks["byte_level"].get_vocab()
        trainer.train()
        assert trainer.state.log_history[0]["loss_kd"] > 0
    # a folder with the student's own tokenizer: the token-level path
    same = DistillationTrainer(
        model=_llama(toks["byte_level"], 2),
        teacher_model=str(folder),
        args=_args(tmp_path),
        processing_class=toks["byte_level"],
    )
    assert same.cross is None


# --------------------------------------------------------------------------------------------- errors


def test_trainer_errors(tmp_path, toks):
    s_tok, t_tok = toks["metaspace"], toks["byte_level"]
    student, teacher = _llama(s_tok, 2), _llama(t_tok, 1)

    def make(args=None, **kw):
        kw = {"teacher_model": teacher, "teacher_tokenizer": t_tok, "processing_class": s_tok, **kw}
        return DistillationTrainer(model=kw.pop("model", student), args=args or _args(tmp_path), **kw)

    fix = "or distil from a teacher that shares the student's tokenizer"
    for name in ("hidden_weight", "attention_weight"):
        with pytest.raises(ValueError, match=rf"{name}=1.0 with teacher_tokenizer: .* Set {name}=0, {fix}"):
            make(_args(tmp_path, **{name: 1.0}))
    with pytest.raises(
        ValueError,
        match=r"teacher_tokenizer with 2 teachers whose heads have \[400, 500\] .*Give a list, one tokenizer per",
    ):
        make(teacher_model=[teacher, _llama(s_tok, 3)])
    with pytest.raises(
        ValueError, match=r"loss_type='mse' cannot compare the hybrid loss's span probabilities"
    ):
        make(_args(tmp_path, loss_type="mse"))
    with pytest.raises(ValueError, match=r"the student's tokenizer is unknown: pass it as processing_class"):
        make(processing_class=None)
    with pytest.raises(
        TypeError, match=r"teacher_tokenizer must be a tokenizer, a Hub id or a folder; got int"
    ):
        make(teacher_tokenizer=123)
    with pytest.raises(TypeError, match=r"teacher_tokenizer \(CharTokenizer\) is not a fast tokenizer"):
        make(teacher_tokenizer=_slow_tokenizer())
    bert = build_tiny_model("bert", "sequence-classification", seed=0)[0]
    with pytest.raises(
        ValueError, match=r"distils between causal language models; this student's task is 'seq"
    ):
        make(model=bert, teacher_model=build_tiny_model("bert", "sequence-classification", seed=1)[0])
    with pytest.raises(ValueError, match=r"lmbda=0.5 with teacher_tokenizer decodes .* no 'prompt_text'"):
        make(_args(tmp_path, lmbda=0.5)).cross.retokenize({}, {})
    with pytest.raises(ValueError, match=r"text='': no span of student and teacher tokens .*Drop empty"):
        make(train_dataset=Dataset.from_dict({"text": ["the quick fox", ""]}))  # aligned once, at the start
    # a collator of the ordinary kind: the batch has no teacher tokens
    trainer = make(
        train_dataset=Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 4}),
        data_collator=DataCollatorForLanguageModeling(s_tok, mlm=False),
    )
    with pytest.raises(ValueError, match=r"the batch lacks \['teacher_input_ids'.*CrossTokenizerCollator"):
        trainer.train()


def test_config_fields_are_command_line_flags(tmp_path):
    from transformers import HfArgumentParser

    flags = [
        "--output_dir",
        str(tmp_path),
        "--teacher_tokenizer",
        "org/teacher",
        "--cross_tokenizer_loss",
        "uld",
    ]
    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        [*flags, "--hybrid_unmatched_weight", "0.25", "--report_to", "none"]
    )
    assert (args.teacher_tokenizer, args.cross_tokenizer_loss, args.hybrid_unmatched_weight) == (
        "org/teacher",
        "uld",
        0.25,
    )


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"cross_tokenizer_loss='kl' must be one of hybrid, uld"):
        DistillationConfig(str(tmp_path), cross_tokenizer_loss="kl")
    with pytest.raises(ValueError, match=r"hybrid_matched_weight=-1.0 must be >= 0"):
        DistillationConfig(str(tmp_path), hybrid_matched_weight=-1.0)


def test_teacher_cache_errors(tmp_path, toks):
    from hf_lite.teacher_cache import precompute_teacher_cache

    tok = build_tokenizer(style="gpt")
    data = Dataset.from_dict({"input_ids": [[3, 4, 5, 6]] * 4})
    cache = precompute_teacher_cache(
        _llama(tok, 1), data, tmp_path / "cache", tokenizer=tok, k=4, temperature=2.0
    )
    with pytest.raises(ValueError, match=r"teacher_tokenizer with a teacher cache: .*Pass the live teacher"):
        DistillationTrainer(
            model=_llama(tok, 2),
            args=_args(tmp_path, temperature=2.0),
            teacher_tokenizer=toks["byte_level"],
            train_dataset=cache,
            processing_class=tok,
        )
    other = build_tokenizer(["completely different words here"], style="gpt")
    with pytest.raises(
        ValueError, match=r"teacher cache was made with another tokenizer than processing_class"
    ):
        DistillationTrainer(
            model=_llama(tok, 2),
            args=_args(tmp_path, temperature=2.0),
            train_dataset=cache,
            processing_class=other,
        )


# ------------------------------------------------------------------------------------------ learning test

_WORDS = kinds._WORDS[:16]  # single tokens in every tokenizer kind (" fox", "▁fox")


def _chain_sentences(n: int, seed: int) -> list[str]:
    """Ten words each from a fixed Markov chain: each word has 3 successors, with probabilities .6/.3/.1."""
    rng = random.Random(0)
    chain = {w: rng.sample(_WORDS, 3) for w in _WORDS}
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS)]
        for _ in range(9):
            words.append(rng.choices(chain[words[-1]], [0.6, 0.3, 0.1])[0])
        out.append(" ".join(words))
    return out


def _next_word_log_probs(model, tok, texts) -> torch.Tensor:
    """``(boundaries, words)``: each model's next-word distribution over the shared words after every word but
    the last, read at its own token that ends the word (tokenizer-independent)."""
    enc = tok(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
    rows, positions = [], []
    for r, text in enumerate(texts):
        ends = [i for i, c in enumerate(text) if c == " "]
        offsets = enc["offset_mapping"][r].tolist()
        for end in ends:
            rows.append(r)
            positions.append(max(i for i, (a, b) in enumerate(offsets) if b == end and b > a))
    words = torch.tensor([tok(" " + w, add_special_tokens=False)["input_ids"][-1] for w in _WORDS])
    with torch.no_grad():
        logits = model.eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return torch.log_softmax(logits[torch.tensor(rows), torch.tensor(positions)][:, words], -1)


@pytest.mark.integration
def test_distilled_across_tokenizers_the_student_agrees_with_the_teacher_more_than_with_cross_entropy(
    tmp_path, toks
):
    t_tok, s_tok = toks["byte_level"], toks["metaspace"]  # GPT-2-style teacher, Llama-2-style student
    # A teacher trained on 1024 sentences of the chain (100 steps of 32)...
    teacher = _llama(t_tok, 0, hidden_size=64, num_hidden_layers=2)
    enc = t_tok(_chain_sentences(1024, seed=1), padding=True, return_tensors="pt")
    optimizer, g = torch.optim.AdamW(teacher.parameters(), lr=5e-3), torch.Generator().manual_seed(0)
    teacher.train()
    for _ in range(100):
        i = torch.randint(0, enc["input_ids"].shape[0], (32,), generator=g)
        ids, mask = enc["input_ids"][i], enc["attention_mask"][i]
        teacher(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # ...and a student with another tokenizer that sees 32 sentences, for the same steps, with and without it.
    small = Dataset.from_dict({"text": _chain_sentences(32, seed=2)})

    def student_after(alpha: float):
        student = _llama(
            s_tok,
            1,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=24,
        )
        args = _args(
            tmp_path / str(alpha), max_steps=80, per_device_train_batch_size=16, learning_rate=3e-3, alpha=alpha,
            temperature=1.0, logging_steps=80,
        )  # fmt: skip
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            teacher_tokenizer=t_tok,
            args=args,
            processing_class=s_tok,
            train_dataset=small,
        ).train()
        return student

    held_out = _chain_sentences(64, seed=99)
    t_logp = _next_word_log_probs(teacher, t_tok, held_out)
    actual = torch.tensor([_WORDS.index(w) for text in held_out for w in text.split(" ")[1:]])

    def agreement(student):
        s_logp = _next_word_log_probs(student, s_tok, held_out)
        kl = torch.nn.functional.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean").item()
        top1 = (s_logp.argmax(-1) == t_logp.argmax(-1)).float().mean().item()
        return kl, top1, (s_logp.argmax(-1) == actual).float().mean().item()

    kd_kl, kd_top1, kd_acc = agreement(student_after(alpha=0.9))  # hybrid loss (default), plus 0.1 CE
    ce_kl, ce_top1, ce_acc = agreement(student_after(alpha=0.0))  # plain CE on the student's own tokens
    print(
        f"hybrid: KL={kd_kl:.3f} top1={kd_top1:.3f} acc={kd_acc:.3f}; CE: KL={ce_kl:.3f} top1={ce_top1:.3f} "
        f"acc={ce_acc:.3f}"
    )
    # Held-out, over the shared words: agreement with the teacher (KL between the two next-word distributions,
    # the same argmax) and next-word accuracy (measured on 3 data seeds: KL 0.19-0.20 vs 0.44-0.46, top-1
    # agreement 0.94-0.97 vs 0.74-0.77, accuracy 0.62-0.64 vs 0.53-0.57; the chain's best is 0.6 in expectation)
    assert kd_kl < 0.7 * ce_kl, (kd_kl, ce_kl)
    assert kd_top1 > ce_top1 + 0.05, (kd_top1, ce_top1)
    assert kd_acc > ce_acc, (kd_acc, ce_acc)


# -------------------------------------------------------------------------------------------- processes


@pytest.mark.multiprocess
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, toks):
    """The span counts are gathered over processes: two processes with micro-batches of 2 texts (different
    numbers of aligned spans on each) reach the weights of one process with batches of 4."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from tests.launch import launch_two

    toks["metaspace"].save_pretrained(tmp_path / "data" / "student")
    toks["byte_level"].save_pretrained(tmp_path / "data" / "teacher")
    texts = [t[: 8 + 7 * i] for i, t in enumerate(kinds.corpus(8, seed=5))]
    (tmp_path / "data" / "texts.json").write_text(json.dumps(texts))
    script = [str(Path(__file__).parent / "scripts" / "distill_cross_tokenizer_run.py")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    data = str(tmp_path / "data")
    one = subprocess.run(
        [sys.executable, *script, str(tmp_path / "one"), "4", data],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch_two([*script, str(tmp_path / "two"), "2", data], env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world_size=1" in one.stdout and "world_size=2" in two.stdout
    a, b = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    initial = _llama(toks["metaspace"], 2).state_dict()
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 1e-3  # the steps did something
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
