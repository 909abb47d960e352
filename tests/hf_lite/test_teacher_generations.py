"""Sequence-level distillation data: teacher completions, resumable and fingerprinted (hf_lite.teacher_cache)."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch

from hf_lite.teacher_cache import (
    METADATA_FILE,
    TEACHER_COLUMNS,
    generate_teacher_completions,
    load_teacher_cache,
    precompute_teacher_cache,
)
from hf_lite.teacher_cache import generations as generations_module
from hf_lite.teacher_cache.sampling import SeededSampler, example_seed
from hf_lite.testing import build_tiny_model

PROMPTS = [
    "the cat sees the dog",
    "a big bird",
    "one two three four",
    "red fish runs fast",
    "she likes the old house",
]
#: Renders a conversation with words of the tiny vocabulary: user -> "you", others -> "we".
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}you{% else %}we{% endif %} {{ m['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}we{% endif %}"
)


@pytest.fixture(scope="module")
def pair():
    teacher, tok = build_tiny_model("llama", seed=0)
    return teacher.eval(), tok


def _reference(teacher, tok, prompt_ids, max_new_tokens, batch_size):
    """Plain ``teacher.generate`` on left-padded batches, each completion cut after its first EOS."""
    eos, out = tok.eos_token_id, []
    for b in range(0, len(prompt_ids), batch_size):
        rows = prompt_ids[b : b + batch_size]
        length = max(map(len, rows))
        ids = torch.tensor([[eos] * (length - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            new = teacher.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=eos,
            )[:, length:]
        for row in new.tolist():
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def _tokenizer_left(tok):
    left = copy.deepcopy(tok)
    left.padding_side, left.pad_token = "left", left.eos_token
    return left


# ------------------------------------------------------------------------------------------ greedy


def test_greedy_completions_equal_teacher_generate(pair, tmp_path):
    teacher, tok = pair
    ds = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "gen", max_new_tokens=6, batch_size=2)
    # the reference: the tokenizer's own left padding and teacher.generate, batch by batch
    left, expected = _tokenizer_left(tok), []
    for b in range(0, len(PROMPTS), 2):
        batch = left(PROMPTS[b : b + 2], return_tensors="pt", padding=True)
        with torch.no_grad():
            new = teacher.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
        expected += new[:, batch["input_ids"].shape[1] :].tolist()
    assert ds["completion_ids"] == expected  # no EOS from this teacher: all 6 tokens
    assert ds["prompt"] == PROMPTS
    assert ds["prompt_ids"] == tok(PROMPTS)["input_ids"]
    assert ds["input_ids"] == [p + c for p, c in zip(ds["prompt_ids"], expected, strict=True)]
    assert ds["labels"] == [[-100] * len(p) + c for p, c in zip(ds["prompt_ids"], expected, strict=True)]
    assert ds["completion"] == tok.batch_decode(expected, skip_special_tokens=True)
    assert not (tmp_path / "gen.partial").exists()
    metadata = json.loads((tmp_path / "gen" / METADATA_FILE).read_text())
    assert (
        metadata["num_tokens"] == sum(map(len, ds["input_ids"]))
        and metadata["fingerprint_parts"]["seed"] is None
    )


def test_completions_stop_at_eos_with_nothing_after_it(pair, tmp_path):
    teacher, tok = pair
    teacher = copy.deepcopy(teacher)
    eos = tok.eos_token_id
    with torch.no_grad():  # EOS now wins wherever token 22 led with a positive logit: some rows stop early
        teacher.lm_head.weight[eos] = teacher.lm_head.weight[22] * 1.5
    ds = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "gen", max_new_tokens=8, batch_size=5)
    completions = ds["completion_ids"]
    assert completions == _reference(teacher, tok, tok(PROMPTS)["input_ids"], 8, 5)
    stopped = [c for c in completions if eos in c]
    assert len(stopped) >= 2 and any(len(c) < 8 for c in stopped)
    assert all(c.index(eos) == len(c) - 1 for c in stopped)  # the EOS is kept, nothing follows it
    assert all(len(c) == 8 for c in completions if eos not in c)  # the others ran to max_new_tokens
    assert all("<|endoftext|>" not in text for text in ds["completion"])


# -------------------------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_per_example_and_top_p_near_zero_is_greedy(pair, tmp_path):
    teacher, tok = pair
    kw = dict(max_new_tokens=5, do_sample=True, temperature=1.5, seed=3)
    one = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "b1", batch_size=1, **kw)
    three = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "b3", batch_size=3, **kw)
    assert one["completion_ids"] == three["completion_ids"]  # each example has its own generator
    other_seed = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "s4", **{**kw, "seed": 4})
    greedy = _reference(teacher, tok, tok(PROMPTS)["input_ids"], 5, 8)
    assert other_seed["completion_ids"] != one["completion_ids"] and one["completion_ids"] != greedy
    nucleus = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "p0", top_p=1e-6, **kw)
    assert nucleus["completion_ids"] == greedy  # the nucleus holds the most likely token only


def test_seeded_sampler_draws_from_the_top_p_nucleus():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)  # (N, 4)
    out = SeededSampler([example_seed(0, i) for i in range(4000)], temperature=1.0, top_p=0.7)(None, scores)
    picks = out.argmax(-1)
    assert torch.isinf(out).sum(-1).eq(3).all()  # one finite entry per row: the sampled token
    freq = torch.bincount(picks, minlength=4).float() / 4000
    # top_p=0.7 keeps {0.5, 0.3} (the mass before 0.15 is 0.8 >= 0.7): renormalised 0.625 / 0.375
    assert freq[2:].sum() == 0 and freq[0] == pytest.approx(0.625, abs=0.03)


# ---------------------------------------------------------------------------------- resume, fingerprint


@pytest.mark.integration
def test_an_interrupted_run_resumes_to_an_identical_dataset(pair, tmp_path, monkeypatch):
    teacher, tok = pair
    kw = dict(max_new_tokens=4, do_sample=True, temperature=1.5, seed=1, batch_size=2, shard_size=2)
    full = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "full", **kw)

    save, calls = generations_module._save_shard, []

    def crash_after_first_shard(*args):
        if calls:
            raise KeyboardInterrupt("interrupted")
        calls.append(1)
        save(*args)

    monkeypatch.setattr(generations_module, "_save_shard", crash_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "gen", **kw)
    assert not (tmp_path / "gen").exists()
    assert sorted(p.name for p in (tmp_path / "gen.partial").glob("shard-*")) == ["shard-00000"]

    monkeypatch.setattr(generations_module, "_save_shard", save)
    generated = []
    batch = generations_module.generate_batch
    monkeypatch.setattr(
        generations_module, "generate_batch", lambda *a, **k: generated.append(a[2]) or batch(*a, **k)
    )
    resumed = generate_teacher_completions(teacher, tok, PROMPTS, tmp_path / "gen", **kw)
    assert generated == [2, 4]  # shard 0 (rows 0-1) was kept, not generated again
    assert resumed.to_list() == full.to_list() and resumed.features == full.features
    assert not (tmp_path / "gen.partial").exists()


@pytest.mark.integration
def test_a_complete_output_is_reused_and_a_mismatched_one_refused(pair, tmp_path, monkeypatch):
    teacher, tok = pair
    out = tmp_path / "gen"
    first = generate_teacher_completions(teacher, tok, PROMPTS[:2], out, max_new_tokens=3)
    monkeypatch.setattr(generations_module, "generate_batch", None)  # reusing must not generate
    assert (
        generate_teacher_completions(teacher, tok, PROMPTS[:2], out, max_new_tokens=3).to_list()
        == first.to_list()
    )
    other_teacher = build_tiny_model("llama", tokenizer=tok, seed=1)[0]
    with pytest.raises(
        ValueError, match=r"made with other settings: .*the fingerprint differs in: teacher\. "
    ):
        generate_teacher_completions(other_teacher, tok, PROMPTS[:2], out, max_new_tokens=3)
    with pytest.raises(
        ValueError, match=r"differs in: max_new_tokens\. Pass the teacher, tokenizer, prompts"
    ):
        generate_teacher_completions(teacher, tok, PROMPTS[:2], out, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"differs in: prompts, prompt_ids"):
        generate_teacher_completions(teacher, tok, PROMPTS[:3], out, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"differs in: do_sample, sampling_temperature, top_p, seed"):
        generate_teacher_completions(teacher, tok, PROMPTS[:2], out, max_new_tokens=3, do_sample=True)


def test_an_interrupted_run_with_other_settings_is_refused(pair, tmp_path, monkeypatch):
    teacher, tok = pair
    monkeypatch.setattr(generations_module, "_save_shard", _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_teacher_completions(teacher, tok, PROMPTS[:2], tmp_path / "gen", max_new_tokens=2)
    with pytest.raises(
        ValueError, match=r"the interrupted run in .* was made with other settings: .*max_new_tokens"
    ):
        generate_teacher_completions(teacher, tok, PROMPTS[:2], tmp_path / "gen", max_new_tokens=3)


def _raise_interrupt(*args):
    raise KeyboardInterrupt


def test_a_damaged_shard_or_a_foreign_folder_is_refused(pair, tmp_path):
    teacher, tok = pair
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"exists and is not a teacher-generations dataset; refusing"):
        generate_teacher_completions(teacher, tok, PROMPTS[:2], tmp_path / "foreign", max_new_tokens=2)
    kw = dict(max_new_tokens=2, shard_size=1)
    generate_teacher_completions(teacher, tok, PROMPTS[:2], tmp_path / "gen", **kw)
    # rebuild the work folder of an interrupted run, then damage its first shard's record
    ds_dir = tmp_path / "gen"
    partial = tmp_path / "gen.partial"
    progress = {k: v for k, v in json.loads((ds_dir / METADATA_FILE).read_text()).items()}
    partial.mkdir()
    (partial / "progress.json").write_text(json.dumps(progress))
    shard = partial / "shard-00000"
    shard.mkdir()
    (shard / "shard.json").write_text(json.dumps({"start": 0, "stop": 5}))
    import shutil

    shutil.rmtree(ds_dir)
    with pytest.raises(ValueError, match=r"shard 0 in .* holds rows 0\.\.5, not 0\.\.1: it is damaged"):
        generate_teacher_completions(teacher, tok, PROMPTS[:2], ds_dir, **kw)


# ------------------------------------------------------------------------------------------ conversations


def test_conversational_prompts_use_the_chat_template(tmp_path):
    teacher, tok = build_tiny_model("llama", seed=0)
    tok.chat_template = CHAT_TEMPLATE
    chats = [
        [{"role": "user", "content": "the cat"}],
        [{"role": "system", "content": "be good"}, {"role": "user", "content": "a big bird"}],
    ]
    ds = generate_teacher_completions(teacher.eval(), tok, chats, tmp_path / "gen", max_new_tokens=3)
    rendered = [
        "you the cat we",
        "we be good you a big bird we",
    ]  # by hand: roles, contents, generation prompt
    assert ds["prompt_ids"] == [tok(t, add_special_tokens=False)["input_ids"] for t in rendered]
    assert ds["completion_ids"] == _reference(teacher, tok, list(ds["prompt_ids"]), 3, 8)
    texts = tok.batch_decode(list(ds["completion_ids"]), skip_special_tokens=True)
    assert ds["completion"] == [[{"role": "assistant", "content": t}] for t in texts]
    assert ds["prompt"] == chats
    # over-long prompts keep their last tokens (the start of the conversation goes first)
    cut = generate_teacher_completions(
        teacher, tok, chats, tmp_path / "cut", max_new_tokens=3, max_prompt_length=4
    )
    assert cut["prompt_ids"] == [ids[-4:] for ids in ds["prompt_ids"]]
    assert cut["completion_ids"] == _reference(teacher, tok, list(cut["prompt_ids"]), 3, 8)


def test_a_dataset_of_prompts_keeps_its_other_columns(pair, tmp_path):
    teacher, tok = pair
    # a selection (indices mapping over a larger table), as shuffle/select/train_test_split give
    source = datasets.Dataset.from_dict({"question": PROMPTS, "answer": [1, 0, 1, 0, 1]}).select([3, 0, 1])
    expected = _reference(teacher, tok, tok([PROMPTS[3], PROMPTS[0], PROMPTS[1]])["input_ids"], 2, 8)
    for topk in (None, 4):
        ds = generate_teacher_completions(
            teacher,
            tok,
            source,
            tmp_path / f"gen{topk}",
            max_new_tokens=2,
            prompt_column="question",
            topk=topk,
        )
        assert ds["question"] == [PROMPTS[3], PROMPTS[0], PROMPTS[1]] and ds["answer"] == [0, 1, 0]
        assert ds["completion_ids"] == expected


# ------------------------------------------------------------------------------------------- top-k cache


@pytest.mark.integration
def test_topk_stores_a_teacher_cache_of_the_completions_that_trains(pair, tmp_path):
    from hf_lite.teacher_cache import TeacherCacheCollator
    from trainers import DistillationConfig, DistillationTrainer

    teacher, tok = pair
    ds = generate_teacher_completions(
        teacher, tok, PROMPTS, tmp_path / "gen", max_new_tokens=4, topk=4, kd_temperature=2.0, dtype="float32"
    )
    # the reference: the teacher cache of the same token sequences
    reference = precompute_teacher_cache(
        teacher,
        datasets.Dataset.from_dict({"input_ids": ds["input_ids"]}),
        tmp_path / "ref",
        tokenizer=tok,
        k=4,
        temperature=2.0,
        dtype="float32",
    )
    for column in TEACHER_COLUMNS:
        assert ds[column] == reference[column]
    loaded = load_teacher_cache(tmp_path / "gen", teacher=teacher, tokenizer=tok, k=4, temperature=2.0)
    assert loaded.to_list() == ds.to_list()

    def first_loss_kd(dataset):
        args = DistillationConfig(
            output_dir=str(tmp_path / "out"),
            max_steps=1,
            per_device_train_batch_size=5,
            learning_rate=0.0,
            logging_steps=1,
            temperature=2.0,
            alpha=0.5,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = DistillationTrainer(
            model=build_tiny_model("llama", tokenizer=tok, seed=2)[0],
            teacher_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            data_collator=TeacherCacheCollator(tok),
        )
        trainer.train()
        return trainer.state.log_history[0]["loss_kd"]

    def reverse_rows(where):
        """The cache with the top-k entries of the rows ``where(i, prompt_length)`` reversed (another
        distribution: the likeliest token gets the smallest probability)."""

        def edit(row):
            n = len(row["prompt_ids"])
            rows = row["teacher_topk_logprobs"]  # the ids stay: their probabilities are swapped around
            row["teacher_topk_logprobs"] = [r[::-1] if where(i, n) else r for i, r in enumerate(rows)]
            return row

        return ds.map(edit)

    loss = first_loss_kd(ds)
    assert loss > 0
    # row i predicts token i + 1: rows before the last prompt position predict prompt tokens, which do not count
    assert first_loss_kd(reverse_rows(lambda i, n: i < n - 1)) == pytest.approx(loss, rel=1e-6)
    assert first_loss_kd(reverse_rows(lambda i, n: i >= n - 1)) != pytest.approx(loss, rel=1e-2)


# --------------------------------------------------------------------------------------------- bad input


def _t5():
    return build_tiny_model("t5", "seq2seq-lm", seed=0)[0]


@pytest.mark.parametrize(
    ("prompts", "kw", "error", "match"),
    [
        ([], {}, ValueError, r"prompts is empty: there is nothing to complete"),
        (PROMPTS, {"max_new_tokens": 0}, ValueError, r"max_new_tokens=0 must be >= 1"),
        (PROMPTS, {"max_prompt_length": 0}, ValueError, r"max_prompt_length=0 must be >= 1"),
        (PROMPTS, {"batch_size": 1.5}, TypeError, r"batch_size must be an int"),
        (datasets.Dataset.from_dict({"text": PROMPTS}), {}, ValueError, r"no column prompt_column='prompt'"),
        (
            [[{"role": "user", "content": "the cat"}]],
            {},
            ValueError,
            r"has no chat template, which conversational data \(lists of messages\) needs",
        ),
        (
            PROMPTS,
            {"do_sample": True, "temperature": 0.0},
            ValueError,
            r"temperature=0\.0 cannot sample a token",
        ),
        (PROMPTS, {"do_sample": True, "temperature": "hot"}, TypeError, r"temperature must be a number"),
        (PROMPTS, {"do_sample": True, "top_p": 0.0}, ValueError, r"top_p=0\.0 must be in \(0, 1\]"),
        (PROMPTS, {"do_sample": True, "seed": -1}, ValueError, r"seed=-1 must be an int >= 0"),
        (PROMPTS, {"do_sample": 1}, TypeError, r"do_sample must be True or False"),
        (
            ["the cat", [{"role": "user", "content": "a dog"}]],
            {},
            ValueError,
            r"mixes plain strings and conversations",
        ),
        ([42], {}, TypeError, r"prompt 0 is int 42: a prompt is a string or a non-empty list"),
        ("the cat", {}, TypeError, r"prompts must be a list of prompts"),
        (
            datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["a"]})}),
            {},
            TypeError,
            r"pass one",
        ),
        (
            datasets.Dataset.from_dict({"prompt": ["a"], "labels": [1]}),
            {},
            ValueError,
            r"already has the column",
        ),
        (["the cat", ""], {}, ValueError, r"prompt 1 \(''\) has no tokens"),
        (PROMPTS, {"eos_token_id": [-3]}, ValueError, r"eos_token_id=\[-3\] must be a token id"),
        (PROMPTS, {"topk": 0}, ValueError, r"k=0 must be >= 1"),
        (PROMPTS, {"topk": 10**6}, ValueError, r"topk=1000000 is larger than the teacher's \d+ outputs"),
        (PROMPTS, {"topk": 4, "dtype": "bfloat16"}, ValueError, r"dtype='bfloat16' is not a storage type"),
        (PROMPTS, {"topk": 4, "kd_temperature": 0}, ValueError, r"temperature=0 must be a finite number > 0"),
    ],
)
def test_bad_input_is_refused(pair, tmp_path, prompts, kw, error, match):
    teacher, tok = pair
    with pytest.raises(error, match=match):
        generate_teacher_completions(teacher, tok, prompts, tmp_path / "gen", **kw)
    assert not (tmp_path / "gen").exists()


def test_a_teacher_that_cannot_generate_is_refused(pair, tmp_path):
    _, tok = pair
    with pytest.raises(TypeError, match=r"teacher must be a causal LM with a generate method"):
        generate_teacher_completions(torch.nn.Linear(2, 2), tok, PROMPTS, tmp_path / "gen")
    with pytest.raises(ValueError, match=r"is an encoder-decoder model; .* decoder-only causal LM teacher"):
        generate_teacher_completions(_t5(), tok, PROMPTS, tmp_path / "gen")
