"""Tests of hf_lite.teacher_cache: the fingerprint (each ingredient, stability across reloads and processes),
cached values against a direct teacher forward, the top-k loss from cached batches against online KD, bytes
per token against the storage formula, resuming after an interruption (same bytes, no recomputation), and
every error."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch

from hf_lite import losses
from hf_lite.teacher_cache import (
    INDICES_COLUMN,
    LOGPROBS_COLUMN,
    METADATA_FILE,
    TAIL_COLUMN,
    TeacherCacheCollator,
    TeacherCacheRows,
    cache_bytes_per_token,
    load_teacher_cache,
    precompute_teacher_cache,
    teacher_cache_metadata,
    teacher_fingerprint,
)
from hf_lite.teacher_cache import precompute as teacher_cache
from hf_lite.testing import build_tiny_model, build_tokenizer

pytestmark = pytest.mark.integration

TEXTS = [
    "the cat sees the dog",
    "a big red bird sings to the old fish",
    "one two",
    "the old fish eats very fast and the dog runs in the river",
    "happy",
    "she likes the small green tree",
    "they were slow but good",
    "ten blue birds",
    "we sing",
    "the house by the river is new and very big",
]


@pytest.fixture(scope="module")
def llama():
    """A tiny Llama teacher (eval mode) and its GPT-style tokenizer (no pad token, like GPT-2)."""
    teacher, tok = build_tiny_model("llama", tokenizer=build_tokenizer(style="gpt"), seed=0)
    return teacher.eval(), tok


@pytest.fixture(scope="module")
def data(llama) -> datasets.Dataset:
    """Tokenized rows of different lengths, with labels that mask each row's first token (a 'prompt')."""
    _, tok = llama
    enc = tok(TEXTS)
    labels = [[-100, *ids[1:]] for ids in enc["input_ids"]]
    return datasets.Dataset.from_dict(
        {
            "text": TEXTS,
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }
    )


class ForwardCounter:
    """Counts the teacher's forward calls; raises KeyboardInterrupt at call ``fail_at`` (1-based)."""

    def __init__(self, model: torch.nn.Module, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated interruption")

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def precompute(teacher, dataset, path, tok, **kwargs):
    kwargs = {"k": 16, "temperature": 2.0, "batch_size": 2, "shard_size": 4, **kwargs}
    return precompute_teacher_cache(teacher, dataset, path, tokenizer=tok, **kwargs)


# ---------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_changes_with_each_ingredient(llama):
    teacher, tok = llama
    base = teacher_fingerprint(teacher, tok, 16, 2.0)
    assert base == teacher_fingerprint(teacher, tok, 16, 2.0)
    perturbed = copy.deepcopy(teacher)
    with torch.no_grad():
        perturbed.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-4  # one weight of one matrix
    other_tok = build_tokenizer(["the cat and a zebra"], style="gpt")
    changed = {
        "weight": teacher_fingerprint(perturbed, tok, 16, 2.0),
        "tokenizer": teacher_fingerprint(teacher, other_tok, 16, 2.0),
        "k": teacher_fingerprint(teacher, tok, 17, 2.0),
        "temperature": teacher_fingerprint(teacher, tok, 16, 1.0),
    }
    assert all(value != base for value in changed.values()), changed
    assert len(set(changed.values())) == len(changed)
    # a config entry that changes the outputs but no weight is an ingredient too
    other_eps = copy.deepcopy(teacher)
    other_eps.config.rms_norm_eps = 1e-3
    assert teacher_fingerprint(other_eps, tok, 16, 2.0) != base
    # the padding/truncation state that tokenizer calls leave in the backend is not
    padded = copy.deepcopy(tok)
    padded.pad_token = padded.eos_token
    padded(["the cat", "a big red dog"], padding=True, truncation=True, max_length=3)
    assert json.loads(padded.backend_tokenizer.to_str())["padding"] is not None  # the state did change
    assert teacher_fingerprint(teacher, padded, 16, 2.0) == base


def test_fingerprint_is_stable_across_save_reload_and_processes(llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher, tok = llama
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    expected = teacher_fingerprint(teacher, tok, 16, 2.0)
    assert teacher_fingerprint(reloaded, reloaded_tok, 16, 2.0) == expected
    script = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "from hf_lite.teacher_cache import teacher_fingerprint; p = sys.argv[1]; "
        "print(teacher_fingerprint(AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p), 16, 2.0))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "teacher")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == expected


def test_fingerprint_errors(llama):
    teacher, tok = llama
    with pytest.raises(TypeError, match="teacher must be a torch.nn.Module"):
        teacher_fingerprint("org/teacher", tok, 16, 1.0)
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        teacher_fingerprint(teacher, object(), 16, 1.0)
    with pytest.raises(ValueError, match=r"k=0 must be >= 1"):
        teacher_fingerprint(teacher, tok, 0, 1.0)
    with pytest.raises(ValueError, match="temperature=0"):
        teacher_fingerprint(teacher, tok, 16, 0)
    with torch.device("meta"):
        on_meta = type(teacher)(teacher.config)
    with pytest.raises(ValueError, match="is on the meta device"):
        teacher_fingerprint(on_meta, tok, 16, 1.0)


# ---------------------------------------------------------------------------------------------
# values


def test_cached_values_equal_teacher_topk_of_a_direct_forward(llama, data, tmp_path, monkeypatch):
    teacher, tok = llama
    with monkeypatch.context() as patch:
        patch.setattr(teacher_cache, "_CHUNK_ROWS", 5)  # top-k by chunks of 5 positions: same values
        fp32 = precompute(teacher, data, tmp_path / "fp32", tok, dtype="float32")
    fp16 = precompute(teacher, data, tmp_path / "fp16", tok)
    assert fp32.column_names == [*data.column_names, LOGPROBS_COLUMN, INDICES_COLUMN, TAIL_COLUMN]
    assert fp32.features["teacher_topk_logprobs"] == datasets.List(
        datasets.List(datasets.Value("float32"), length=16)
    )
    assert fp16.features["teacher_topk_indices"] == datasets.List(
        datasets.List(datasets.Value("uint16"), length=16)
    )
    assert fp32.select_columns(data.column_names).to_dict() == data.to_dict()  # own columns kept as they are
    torch_fp32, torch_fp16 = fp32.with_format("torch"), fp16.with_format("torch")
    for i, ids in enumerate(data["input_ids"]):
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([ids])).logits[0]  # (L, V), unpadded, alone
        logprobs, indices = losses.teacher_topk(logits, 16, temperature=2.0)
        row = torch_fp32[i]
        assert row[LOGPROBS_COLUMN].shape == (len(ids), 16)  # unshifted: one row per position
        assert torch.equal(row[INDICES_COLUMN], indices)
        torch.testing.assert_close(row[LOGPROBS_COLUMN], logprobs, rtol=0, atol=1e-5)
        rest = torch.log_softmax(logits.double() / 2.0, -1).exp().sum(-1) - logprobs.double().exp().sum(-1)
        torch.testing.assert_close(row[TAIL_COLUMN].double(), rest, rtol=1e-4, atol=1e-7)
        # same batches (other top-k chunks), so the fp16 cache is exactly the fp32 one rounded
        assert torch.equal(torch_fp16[i][LOGPROBS_COLUMN], row[LOGPROBS_COLUMN].half().float())
        assert torch.equal(torch_fp16[i][INDICES_COLUMN], row[INDICES_COLUMN])
    meta = teacher_cache_metadata(tmp_path / "fp16")
    assert meta == teacher_cache_metadata(fp16)  # the dataset carries a copy
    assert meta["fingerprint"] == teacher_fingerprint(teacher, tok, 16, 2.0)
    assert (meta["k"], meta["temperature"], meta["dtype"], meta["index_dtype"]) == (
        16,
        2.0,
        "float16",
        "uint16",
    )
    assert (meta["num_examples"], meta["num_tokens"]) == (len(data), sum(map(len, data["input_ids"])))
    assert meta["vocab_size"] == len(tok) and meta["alignment"].startswith("unshifted")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fp16",
        "fp32",
    ]  # no partial or temporary folder left


def test_topk_loss_on_cached_batches_equals_online_forward_kl_when_k_is_the_vocabulary(llama, data, tmp_path):
    teacher, tok = llama
    student, _ = build_tiny_model("llama", tokenizer=tok, seed=1)
    vocab = len(tok)
    for dtype, tol in (("float32", 1e-5), ("float16", 2e-3)):
        cache = precompute(teacher, data, tmp_path / dtype, tok, k=vocab, dtype=dtype)
        collate = TeacherCacheCollator(tok)
        for start in (0, 5):
            batch = collate([cache[i] for i in range(start, start + 5)])
            with torch.no_grad():
                s_logits = student(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                t_logits = teacher(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            s_shift, labels = losses.shift_for_causal_lm(s_logits, batch["labels"])
            online = losses.distillation_loss(
                s_shift, t_logits[:, :-1], loss_type="forward_kl", temperature=2.0, labels=labels
            )
            cached = losses.topk_distillation_loss(
                s_shift,
                batch[LOGPROBS_COLUMN][:, :-1],
                batch[INDICES_COLUMN][:, :-1],
                temperature=2.0,
                labels=labels,
            )
            assert online > 0.01
            torch.testing.assert_close(cached, online, rtol=tol, atol=0)


def test_bytes_per_token_match_the_storage_formula_and_the_budget(llama, data, tmp_path):
    teacher, tok = llama
    precompute(teacher, data, tmp_path / "c", tok, k=16)
    measured = cache_bytes_per_token(tmp_path / "c", by_column=True)
    meta = teacher_cache_metadata(tmp_path / "c")
    tokens, rows = meta["num_tokens"], meta["num_examples"]
    chunks = load_teacher_cache(tmp_path / "c").data.column(TAIL_COLUMN).num_chunks
    offsets = 4 * (rows + chunks) / tokens  # one int32 list offset per example (and chunk), per column
    k = 16
    assert measured[LOGPROBS_COLUMN] == pytest.approx(2 * k + offsets, abs=1e-9)  # fp16 log-probabilities
    assert measured[INDICES_COLUMN] == pytest.approx(2 * k + offsets, abs=1e-9)  # uint16 ids
    assert measured[TAIL_COLUMN] == pytest.approx(4 + offsets, abs=1e-9)  # fp32 tail mass
    total = cache_bytes_per_token(tmp_path / "c")
    assert total == pytest.approx(sum(measured.values()))
    assert total <= 128
    assert 4 * k + 4 <= total < 4 * k + 4 + 3 * offsets + 1e-9


def test_ids_above_int16_survive_the_unsigned_storage(tmp_path):
    words = [f"w{i}" for i in range(33_000)]
    tok = build_tokenizer([" ".join(words)], style="gpt", max_vocab=40_000)
    assert len(tok) > 2**15
    teacher, tok = build_tiny_model("llama", tokenizer=tok, seed=0)
    with torch.no_grad():
        teacher.lm_head.weight[: 2**15].zero_()  # logits 0 for ids < 32768: the top-k are all ids above
    dataset = datasets.Dataset.from_dict({"input_ids": [[5, 40, 32_999, 7], [100, 32_800]]})
    cache = precompute(teacher.eval(), dataset, tmp_path / "c", tok, k=8).with_format("torch")
    assert teacher_cache_metadata(cache)["index_dtype"] == "uint16"
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([[5, 40, 32_999, 7]])).logits[0]
    _, indices = losses.teacher_topk(logits, 8, temperature=2.0)
    assert int(indices.min()) >= 2**15
    assert torch.equal(cache[0][INDICES_COLUMN], indices)


def test_sequence_classification_cache_has_one_row_per_example(tmp_path):
    teacher, tok = build_tiny_model("bert", "sequence-classification", seed=0, num_labels=3)
    teacher.eval()
    enc = tok(TEXTS[:5])
    dataset = datasets.Dataset.from_dict({**enc, "label": [0, 1, 2, 1, 0]})  # "label", as classification sets
    cache = precompute(teacher, dataset, tmp_path / "c", tok, k=3, task="sequence-classification")
    assert teacher_cache_metadata(cache)["num_tokens"] == 5
    batch = TeacherCacheCollator(tok, return_tail_mass=True)([cache[i] for i in range(5)])
    assert batch[LOGPROBS_COLUMN].shape == (5, 3) and batch["labels"].tolist() == [0, 1, 2, 1, 0]
    with torch.no_grad():
        logits = teacher(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}).logits
    logprobs, indices = losses.teacher_topk(logits, 3, temperature=2.0)
    assert torch.equal(batch[INDICES_COLUMN], indices)
    torch.testing.assert_close(batch[LOGPROBS_COLUMN], logprobs.half().float(), rtol=0, atol=2e-3)
    torch.testing.assert_close(batch[TAIL_COLUMN], torch.zeros(5), rtol=0, atol=1e-6)  # k = num_labels
    with pytest.raises(ValueError, match="k=4 is larger than the teacher's 3 outputs"):
        precompute(teacher, dataset, tmp_path / "k4", tok, k=4, task="sequence-classification")


# ---------------------------------------------------------------------------------------------
# resuming, atomic output


def test_interrupted_precompute_resumes_to_the_same_cache_without_recomputing_done_shards(
    llama, data, tmp_path
):
    teacher, tok = llama
    # 10 rows, shards of 4 rows, batches of 2: shards [0-3] [4-7] [8-9] = 2 + 2 + 1 = 5 teacher forwards
    with ForwardCounter(teacher) as counter:
        reference = precompute(teacher, data, tmp_path / "reference", tok)
    assert counter.calls == 5
    out = tmp_path / "cache"
    with ForwardCounter(teacher, fail_at=4) as counter, pytest.raises(KeyboardInterrupt, match="simulated"):
        precompute(teacher, data, out, tok)  # dies in shard 1, after shard 0 is written
    partial = tmp_path / "cache.partial"
    assert not out.exists()  # the output is complete or absent
    assert sorted(p.name for p in partial.iterdir()) == ["progress.json", "shard-00000"]
    assert not teacher.training  # the teacher's mode was restored on the way out
    with pytest.raises(ValueError, match="is incomplete: its precompute was interrupted"):
        load_teacher_cache(out)
    with pytest.raises(ValueError, match="work folder of an interrupted precompute"):
        load_teacher_cache(partial)

    (tmp_path / ".cache.tmp-killed").mkdir()  # what a run killed while assembling leaves beside the output
    with ForwardCounter(teacher) as counter:
        resumed = precompute(teacher, data, out, tok)
    assert counter.calls == 3  # shard 0 (2 forwards) was kept, not recomputed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "reference"]  # temporaries, partial: gone
    assert resumed.to_dict() == reference.to_dict()
    assert resumed.features == reference.features
    meta, ref_meta = teacher_cache_metadata(out), teacher_cache_metadata(tmp_path / "reference")
    assert meta == {**ref_meta, "teacher_name": meta["teacher_name"]}

    with ForwardCounter(teacher) as counter:  # a complete cache is loaded, not recomputed
        again = precompute(teacher, data, out, tok)
    assert counter.calls == 0 and again.to_dict() == reference.to_dict()


def test_resume_and_reuse_refuse_other_settings_or_data(llama, data, tmp_path):
    teacher, tok = llama
    out = tmp_path / "cache"
    with ForwardCounter(teacher, fail_at=4), pytest.raises(KeyboardInterrupt):
        precompute(teacher, data, out, tok)
    with pytest.raises(ValueError, match=r"batch_size: 2 there, 3 now.*Resume with the same arguments"):
        precompute(teacher, data, out, tok, batch_size=3)
    with pytest.raises(ValueError, match=r"temperature: 2\.0 there, 1\.0 now.*differs in: temperature"):
        precompute(teacher, data, out, tok, temperature=1.0)
    shuffled = data.select([1, 0, *range(2, len(data))])
    with pytest.raises(ValueError, match=r"shard 0 .* other input_ids than rows 0\.\.3"):
        precompute(teacher, shuffled, out, tok)
    precompute(teacher, data, out, tok)  # the same arguments still resume
    with pytest.raises(
        ValueError, match=r"the cache in .* other settings: .*k: 16 there, 8 now.*another output_dir"
    ):
        precompute(teacher, data, out, tok, k=8)
    with pytest.raises(ValueError, match="computed from other input_ids than this dataset's"):
        precompute(teacher, shuffled, out, tok)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a teacher cache; refusing to write into it"):
        precompute(teacher, data, tmp_path / "foreign", tok)
    (tmp_path / "stray.partial").mkdir()
    (tmp_path / "stray.partial" / "x.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match="has no progress.json: it is not an interrupted teacher cache run"):
        precompute(teacher, data, tmp_path / "stray", tok)
    (tmp_path / "empty").mkdir()  # an empty folder is a fine output_dir
    assert len(precompute(teacher, data, tmp_path / "empty", tok)) == len(data)


# ---------------------------------------------------------------------------------------------
# loading


def test_load_checks_what_the_caller_expects(llama, data, tmp_path):
    teacher, tok = llama
    path = tmp_path / "c"
    precompute(teacher, data, path, tok)
    fingerprint = teacher_fingerprint(teacher, tok, 16, 2.0)
    loaded = load_teacher_cache(path, teacher=teacher, tokenizer=tok, k=16, temperature=2.0)
    assert len(loaded) == len(data)
    assert len(load_teacher_cache(path, fingerprint=fingerprint)) == len(data)
    perturbed = copy.deepcopy(teacher)
    with torch.no_grad():
        perturbed.lm_head.weight[0, 0] += 1e-3
    fix = "Recompute the cache with precompute_teacher_cache"
    with pytest.raises(ValueError, match=rf"temperature: cache 2\.0, expected 1\.0\. {fix}"):
        load_teacher_cache(path, temperature=1.0)
    with pytest.raises(ValueError, match=r"k: cache 16, expected 8"):
        load_teacher_cache(path, k=8)
    with pytest.raises(ValueError, match="teacher weights/config: .* differ from the teacher given"):
        load_teacher_cache(path, teacher=perturbed, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer: its vocabulary or settings differ"):
        load_teacher_cache(path, tokenizer=build_tokenizer(["a zebra"], style="gpt"))
    with pytest.raises(ValueError, match=rf"fingerprint: cache {fingerprint}, expected 0+\."):
        load_teacher_cache(path, fingerprint="0" * 32)
    with pytest.raises(ValueError, match="either fingerprint or teacher/tokenizer, not both"):
        load_teacher_cache(path, fingerprint=fingerprint, teacher=teacher)


def test_load_refuses_incomplete_foreign_and_damaged_folders(llama, data, tmp_path):
    teacher, tok = llama
    with pytest.raises(FileNotFoundError, match="No teacher cache at"):
        load_teacher_cache(tmp_path / "missing")
    data.save_to_disk(str(tmp_path / "plain"))  # a dataset, but not a cache
    with pytest.raises(ValueError, match="is not a teacher cache: it has no teacher_cache.json"):
        load_teacher_cache(tmp_path / "plain")
    with pytest.raises(ValueError, match="carries no teacher-cache metadata"):
        teacher_cache_metadata(data)
    path = tmp_path / "c"
    precompute(teacher, data, path, tok)
    meta = json.loads((path / METADATA_FILE).read_text())
    (path / METADATA_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="has format version 99; this hf-lite reads version 1"):
        load_teacher_cache(path)
    (path / METADATA_FILE).write_text(json.dumps({**meta, "num_examples": 11}))
    with pytest.raises(ValueError, match="holds 10 rows but its metadata records 11"):
        load_teacher_cache(path)
    (path / METADATA_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        load_teacher_cache(path)
    (path / METADATA_FILE).write_text(json.dumps(meta))
    for arrow in path.glob("*.arrow"):
        arrow.unlink()
    with pytest.raises(ValueError, match="its dataset files cannot be read"):
        load_teacher_cache(path)
    (tmp_path / "stripped").mkdir()
    data.save_to_disk(str(tmp_path / "stripped"))
    (tmp_path / "stripped" / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"lacks the cache column\(s\)"):
        load_teacher_cache(tmp_path / "stripped")


# ---------------------------------------------------------------------------------------------
# collator


def test_collator_pads_consistently_with_input_ids(llama):
    _, tok = llama
    rows = [
        {
            "input_ids": [5, 6, 7],
            "attention_mask": [1, 1, 1],
            "labels": [-100, 6, 7],
            "text": "x",
            LOGPROBS_COLUMN: np.full((3, 2), -2.0, np.float16),
            INDICES_COLUMN: [[1, 2], [3, 4], [5, 6]],
            TAIL_COLUMN: [0.5, 0.5, 0.5],
        },
        {
            "input_ids": torch.tensor([8]),
            "attention_mask": [1],
            "labels": [8],
            LOGPROBS_COLUMN: torch.tensor([[-0.1, -3.0]]),
            INDICES_COLUMN: torch.tensor([[9, 10]], dtype=torch.int32),
            TAIL_COLUMN: torch.tensor([0.05]),
        },
    ]
    batch = TeacherCacheCollator(tok, pad_to_multiple_of=4, return_tail_mass=True)(rows)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        LOGPROBS_COLUMN,
        INDICES_COLUMN,
        TAIL_COLUMN,
    }
    assert batch["input_ids"].tolist() == [[5, 6, 7, tok.eos_token_id], [8] + [tok.eos_token_id] * 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch[LOGPROBS_COLUMN].dtype == torch.float32 and batch[INDICES_COLUMN].dtype == torch.int64
    assert batch[LOGPROBS_COLUMN].shape == batch[INDICES_COLUMN].shape == (2, 4, 2)
    assert batch[LOGPROBS_COLUMN][0, :3].tolist() == [[-2.0, -2.0]] * 3
    assert (
        torch.isneginf(batch[LOGPROBS_COLUMN][1, 1:]).all()
        and torch.isneginf(batch[LOGPROBS_COLUMN][0, 3]).all()
    )
    assert batch[INDICES_COLUMN][1].tolist() == [[9, 10], [0, 1], [0, 1], [0, 1]]
    torch.testing.assert_close(
        batch[TAIL_COLUMN], torch.tensor([[0.5, 0.5, 0.5, 1.0], [0.05, 1.0, 1.0, 1.0]])
    )
    # an unmasked padded position is still a legal entry (all mass in the tail): finite, no NaN
    loss = losses.topk_distillation_loss(torch.randn(2, 4, 12), batch[LOGPROBS_COLUMN], batch[INDICES_COLUMN])
    assert math.isfinite(loss.item())
    no_labels = [{k: v for k, v in r.items() if k not in ("labels", "attention_mask")} for r in rows]
    batch = TeacherCacheCollator(tok, labels_from_input_ids=True)(no_labels)
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert "labels" not in TeacherCacheCollator(tok)(no_labels)


@pytest.mark.parametrize("task", ["causal-lm", "sequence-classification"])
def test_rows_read_a_batch_at_a_time_equal_the_datasets_rows(llama, data, tmp_path, task):
    """TeacherCacheRows gives the same values as indexing the dataset, in the order asked, through a
    shuffled view (an indices mapping), and the collator makes the same batch of either."""
    if task == "causal-lm":
        teacher, tok = llama
        source = data
    else:
        teacher, tok = build_tiny_model("bert", "sequence-classification", seed=0, num_labels=3)
        teacher.eval()
        source = datasets.Dataset.from_dict({**tok(TEXTS), "label": [i % 3 for i in range(len(TEXTS))]})
    cache = precompute(teacher, source, tmp_path / "c", tok, k=3, task=task).shuffle(seed=1)
    rows = TeacherCacheRows(cache)
    assert len(rows) == len(cache)
    order = [7, 0, 3, 3, 9]
    fast = rows.__getitems__(order)
    plain = [cache[i] for i in order]
    for got, want in zip(fast, plain, strict=True):
        assert set(got) == set(want)
        for column, value in want.items():
            if isinstance(value, str):
                assert got[column] == value
            else:
                np.testing.assert_array_equal(
                    np.asarray(got[column], dtype=np.float64), np.asarray(value, dtype=np.float64)
                )
    assert isinstance(fast[0][LOGPROBS_COLUMN], np.ndarray)
    collate = TeacherCacheCollator(tok, return_tail_mass=True)
    for column, value in collate(fast).items():
        assert torch.equal(value, collate(plain)[column]), column
    assert rows[3].keys() == fast[0].keys()
    with pytest.raises(TypeError, match="TeacherCacheRows reads a datasets.Dataset; got list"):
        TeacherCacheRows([])


def test_collator_errors(llama):
    _, tok = llama
    row = {"input_ids": [5, 6], LOGPROBS_COLUMN: [[0.0]], INDICES_COLUMN: [[1]]}
    with pytest.raises(ValueError, match="example 0 has 2 input_ids but teacher tensors of shape"):
        TeacherCacheCollator(tok)([row])
    with pytest.raises(ValueError, match="do not come from a teacher cache"):
        TeacherCacheCollator(tok)([{"input_ids": [5, 6]}])
    with pytest.raises(ValueError, match="empty list of examples"):
        TeacherCacheCollator(tok)([])
    with pytest.raises(ValueError, match="pad_to_multiple_of=0 must be >= 1"):
        TeacherCacheCollator(tok, pad_to_multiple_of=0)


# ---------------------------------------------------------------------------------------------
# arguments


def test_precompute_argument_errors(llama, data, tmp_path):
    teacher, tok = llama
    out = tmp_path / "c"
    with pytest.raises(ValueError, match="bfloat16 is refused"):
        precompute(teacher, data, out, tok, dtype="bfloat16")
    with pytest.raises(ValueError, match=rf"k=100 is larger than the teacher's {len(tok)} outputs"):
        precompute(teacher, data, out, tok, k=100)
    with pytest.raises(TypeError, match="k must be an int"):
        precompute(teacher, data, out, tok, k=2.5)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        precompute(teacher, data, out, tok, batch_size=0)
    with pytest.raises(ValueError, match="task='seq2seq-lm' is not supported by the teacher cache"):
        precompute(teacher, data, out, tok, task="seq2seq-lm")
    with pytest.raises(TypeError, match="dataset must be a datasets.Dataset"):
        precompute(teacher, data.to_dict(), out, tok)
    with pytest.raises(ValueError, match="dataset has no 'input_ids' column"):
        precompute(teacher, data.remove_columns("input_ids"), out, tok)
    with pytest.raises(TypeError, match="teacher must be a model, a Hub id or a folder"):
        precompute(42, data, out, tok)
    cached = precompute(teacher, data.select(range(2)), tmp_path / "small", tok)
    with pytest.raises(ValueError, match="already has the cache column"):
        precompute(teacher, cached, out, tok)
    with_empty = datasets.Dataset.from_dict({"input_ids": [[5, 6], [], [7]]})
    with pytest.raises(ValueError, match="dataset row 1 has empty input_ids"):
        precompute(teacher, with_empty, out, tok)
    assert not out.exists()
