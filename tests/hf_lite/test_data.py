"""hf_lite.data: loading local files (and the offline Hub path), column mapping, splits, tokenization,
and EDA augmentation (pure word operations checked against their properties; seeded datasets.map)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from hf_lite.data import (
    STOPWORDS,
    SYNONYMS,
    augment_data,
    corpus_vocabulary,
    load_data,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
    tokenize_data,
    tokenizer_vocabulary,
    vocabulary_replacement,
)
from hf_lite.testing import build_tokenizer

SST2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sst2"
SENTENCE = "the movie was a great film with a good story and bad acting".split()


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "datasets-cache")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- word operations


@pytest.mark.parametrize("seed", range(30))
def test_random_deletion_never_empties_and_keeps_order(seed):
    rng = random.Random(seed)
    words = SENTENCE[: rng.randint(1, len(SENTENCE))]
    for p in (0.3, 0.9, 1.0):
        out = random_deletion(words, p, random.Random(seed))
        assert 1 <= len(out) <= len(words)
        it = iter(words)
        assert all(w in it for w in out)  # a subsequence of the input
    assert random_deletion(words, 0.0, rng) == words
    assert random_deletion([], 0.5, rng) == []


@pytest.mark.parametrize("seed", range(30))
def test_random_swap_preserves_the_multiset(seed):
    words = SENTENCE[: 2 + seed % (len(SENTENCE) - 1)]
    out = random_swap(words, 1 + seed % 4, random.Random(seed))
    assert Counter(out) == Counter(words)
    distinct = [f"w{i}" for i in range(len(words))]
    assert (
        random_swap(distinct, 1, random.Random(seed)) != distinct
    )  # one swap of distinct words changes order
    assert random_swap(words, 0, random.Random(seed)) == words
    assert random_swap(["one"], 3, random.Random(seed)) == ["one"]


@pytest.mark.parametrize("seed", range(30))
def test_random_insertion_adds_exactly_n_synonyms(seed):
    n = seed % 5
    out = random_insertion(SENTENCE, n, random.Random(seed))
    assert len(out) == len(SENTENCE) + n
    allowed = {s for w in SENTENCE for s in SYNONYMS.get(w, ())}
    remaining = Counter(out) - Counter(SENTENCE)
    assert sum(remaining.values()) == n and set(remaining) <= allowed
    it = iter(out)
    assert all(w in it for w in SENTENCE)  # the original words keep their order
    assert random_insertion(["zzz", "qqq"], 3, random.Random(seed)) == ["zzz", "qqq"]  # nothing has a synonym


@pytest.mark.parametrize("seed", range(30))
def test_synonym_replacement_changes_at_most_n_eligible_words(seed):
    n = 1 + seed % 4
    out = synonym_replacement(SENTENCE, n, random.Random(seed))
    assert len(out) == len(SENTENCE)
    changed = [(a, b) for a, b in zip(SENTENCE, out, strict=True) if a != b]
    assert 1 <= len(changed) <= n
    assert all(b in SYNONYMS[a] and a not in STOPWORDS for a, b in changed)
    assert synonym_replacement(SENTENCE, 0, random.Random(seed)) == SENTENCE


def test_user_synonyms_and_stopwords():
    table = {"cat": ["feline"], "the": ["a"]}
    assert synonym_replacement(["the", "cat"], 2, random.Random(0), table) == [
        "the",
        "feline",
    ]  # "the" is a stopword
    assert synonym_replacement(["The", "Cat"], 1, random.Random(0), table) == [
        "The",
        "feline",
    ]  # lower-case lookup
    out = random_insertion(["cat"], 2, random.Random(0), table)
    assert sorted(out) == ["cat", "feline", "feline"]


def test_vocabulary_replacement():
    assert vocabulary_replacement(SENTENCE, 0.0, random.Random(0), ["x"]) == SENTENCE
    assert set(vocabulary_replacement(SENTENCE, 1.0, random.Random(0), ["x", "y"])) <= {"x", "y"}
    with pytest.raises(ValueError, match="vocabulary must be a non-empty sequence"):
        vocabulary_replacement(SENTENCE, 0.5, random.Random(0), [])


def test_word_operations_are_deterministic_given_the_rng():
    for fn in (
        lambda r: random_swap(SENTENCE, 3, r),
        lambda r: random_deletion(SENTENCE, 0.4, r),
        lambda r: random_insertion(SENTENCE, 2, r),
        lambda r: synonym_replacement(SENTENCE, 3, r),
    ):
        assert fn(random.Random(5)) == fn(random.Random(5))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: random_swap(SENTENCE, 1, 0), TypeError, "rng must be a random.Random"),
        (lambda: random_swap(SENTENCE, -1, random.Random(0)), ValueError, "n=-1 must be an integer >= 0"),
        (lambda: random_insertion(SENTENCE, 1.5, random.Random(0)), ValueError, "n=1.5 must be an integer"),
        (
            lambda: random_deletion(SENTENCE, 1.2, random.Random(0)),
            ValueError,
            r"p=1.2 must be a probability",
        ),
        (lambda: synonym_replacement(SENTENCE, 1, None), TypeError, "rng must be a random.Random"),
    ],
)
def test_word_operation_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_vocabularies():
    ds = Dataset.from_dict({"text": ["the cat saw a cat", "a dog saw the cat , 42"]})
    assert corpus_vocabulary(ds, min_count=1) == ["cat", "saw", "dog"]
    gpt = build_tokenizer(["hello world hello"], style="gpt")
    assert tokenizer_vocabulary(gpt) == ["hello", "world"]
    with pytest.raises(TypeError, match="not a single string"):
        corpus_vocabulary("the cat")
    with pytest.raises(ValueError, match="has no 'text' column"):
        corpus_vocabulary(Dataset.from_dict({"sentence": ["a"]}))
    with pytest.raises(TypeError, match="with get_vocab"):
        tokenizer_vocabulary(object())


# ------------------------------------------------------------------------------------------- augment_data


def _reviews(n: int = 12) -> Dataset:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(SENTENCE) for _ in range(rng.randint(3, 10))) for _ in range(n)]
    features = None
    ds = Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]}, features=features)
    return ds.cast_column("label", ClassLabel(names=["neg", "pos"]))


def test_augment_data_is_seeded_and_keeps_labels():
    ds = _reviews()
    out = augment_data(ds, seed=3, n_aug=4)
    assert out.num_rows == 5 * ds.num_rows and out.features == ds.features  # ClassLabel kept
    assert out["text"][::5] == ds["text"]  # originals first in each group
    assert list(out["label"]) == [lab for lab in ds["label"] for _ in range(5)]
    assert augment_data(ds, seed=3, n_aug=4)["text"] == out["text"]
    assert augment_data(ds, seed=4, n_aug=4)["text"] != out["text"]
    assert (
        sum(a != b for a, b in zip(out["text"], [t for t in ds["text"] for _ in range(5)], strict=True))
        > ds.num_rows
    )
    only_new = augment_data(ds, seed=3, n_aug=4, keep_original=False)
    assert only_new["text"] == [t for i, t in enumerate(out["text"]) if i % 5]  # the same copies


def test_augment_data_does_not_depend_on_num_proc():
    ds = _reviews(10)
    serial = augment_data(ds, seed=1, n_aug=2)
    parallel = augment_data(ds, seed=1, n_aug=2, num_proc=2)
    assert parallel["text"] == serial["text"]


def test_augment_data_single_operations_and_pairs():
    ds = Dataset.from_dict({"text": ["the cat sat"], "text_pair": ["a cat ran"], "label": [1]})
    synonyms = {"cat": ["feline"], "sat": ["rested"], "ran": ["sprinted"]}
    out = augment_data(
        ds,
        seed=0,
        n_aug=2,
        p_insert=0,
        p_delete=0,
        p_swap=0,
        p_synonym=0.9,
        synonyms=synonyms,
        columns=("text", "text_pair"),
    )
    for row in out.select(range(1, 3)):
        assert len(row["text"].split()) == 3 and ("feline" in row["text"] or "rested" in row["text"])
        assert "feline" in row["text_pair"] or "sprinted" in row["text_pair"]
    vocab = augment_data(
        ds,
        seed=0,
        n_aug=1,
        p_insert=0,
        p_delete=0,
        p_swap=0,
        p_synonym=0,
        p_vocab=1.0,
        vocabulary=["zebra"],
        keep_original=False,
    )
    assert vocab[0]["text"] == "zebra zebra zebra" and vocab[0]["text_pair"] == "a cat ran"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"dataset": DatasetDict({"train": Dataset.from_dict({"text": ["a"]})})},
            TypeError,
            r"augment_data\(ds\['train'\]",
        ),
        ({"dataset": ["a b"]}, TypeError, "dataset must be a datasets.Dataset"),
        ({"seed": "0"}, TypeError, "seed must be an integer"),
        ({"n_aug": 0}, ValueError, "n_aug=0 must be an integer >= 1"),
        ({"p_swap": 2.0}, ValueError, r"p_swap=2.0 must be a probability in \[0, 1\]"),
        ({"p_insert": 0, "p_delete": 0, "p_swap": 0, "p_synonym": 0}, ValueError, "every probability is 0"),
        ({"p_vocab": 0.1}, ValueError, "p_vocab > 0 needs vocabulary"),
        ({"synonyms": {"a": "b"}}, TypeError, "synonyms must be a mapping"),
        ({"columns": ("sentence",)}, ValueError, r"columns \['sentence'\] are not in the dataset"),
    ],
)
def test_augment_data_errors(kwargs, error, match):
    args = {"dataset": Dataset.from_dict({"text": ["a b c"]}), "seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        augment_data(args.pop("dataset"), **args)


# ------------------------------------------------------------------------------------------- load_data


def test_tsv_keeps_quotes_and_na_words_and_drops_blank_rows(tmp_path, cache):
    f = _write(
        tmp_path / "train.tsv",
        'sentence\tlabel\nhe said "wow\t1\nnull\t0\n   \t1\nit \'s "fine" , really\t1\nNA\t0\n',
    )
    ds = load_data(f, columns={"text": "sentence", "label": "label"}, eval_fraction=0, cache_dir=cache)
    assert list(ds) == ["train"]
    assert ds["train"]["text"] == ['he said "wow', "null", 'it \'s "fine" , really', "NA"]
    assert list(ds["train"]["label"]) == [1, 0, 1, 0]


def test_csv_json_jsonl_parquet_and_auto_columns(tmp_path, cache):
    rows = [
        {"review": "good one", "label": "pos"},
        {"review": "bad, sadly", "label": "neg"},
        {"review": "fine", "label": "pos"},
    ]
    _write(tmp_path / "a.csv", 'review,label\ngood one,pos\n"bad, sadly",neg\nfine,pos\n')
    _write(tmp_path / "a.json", json.dumps(rows))
    _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    Dataset.from_list(rows).to_parquet(tmp_path / "a.parquet")
    for ext in ("csv", "json", "jsonl", "parquet"):
        ds = load_data(tmp_path / f"a.{ext}", eval_fraction=0, cache_dir=cache)[
            "train"
        ]  # columns=None: review, label
        assert ds["text"] == ["good one", "bad, sadly", "fine"], ext
        assert ds.features["label"] == ClassLabel(names=["neg", "pos"]) and list(ds["label"]) == [1, 0, 1]


def test_folder_of_splits_and_mapping_sources(tmp_path, cache):
    _write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(10)))
    _write(tmp_path / "dev.tsv", "sentence\tlabel\nd0\t0\nd1\t1\n")
    ds = load_data(tmp_path, cache_dir=cache)
    assert ds["train"].num_rows == 10 and ds["eval"]["text"] == ["d0", "d1"]  # 'dev' is the eval split
    mapped = load_data(
        {"train": tmp_path / "train.tsv", "holdout": tmp_path / "dev.tsv"},
        eval_split="holdout",
        cache_dir=cache,
    )
    assert mapped["eval"]["text"] == ["d0", "d1"]
    capped = load_data(tmp_path, max_rows=4, cache_dir=cache)
    assert capped["train"]["text"] == ["s0", "s1", "s2", "s3"] and capped["eval"].num_rows == 2


def test_held_out_split_is_seeded_disjoint_and_ordered(tmp_path, cache):
    f = _write(tmp_path / "t.csv", "text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(40)))
    a = load_data(f, eval_fraction=0.25, seed=1, cache_dir=cache)
    b = load_data(f, eval_fraction=0.25, seed=1, cache_dir=cache)
    c = load_data(f, eval_fraction=0.25, seed=2, cache_dir=cache)
    assert a["eval"]["text"] == b["eval"]["text"] != c["eval"]["text"]
    assert a["train"].num_rows == 30 and a["eval"].num_rows == 10
    assert set(a["train"]["text"]).isdisjoint(a["eval"]["text"])
    index = [int(t.split()[1]) for t in a["train"]["text"]]
    assert index == sorted(index)  # source order kept
    last = load_data(f, eval_fraction=0.25, holdout="last", cache_dir=cache)
    assert last["eval"]["text"] == [f"row {i}" for i in range(30, 40)]


def test_text_file_for_language_modelling(tmp_path, cache):
    f = _write(tmp_path / "corpus.txt", "First line.\n\nSecond line.\n   \nThird line.\nFourth line.\n")
    ds = load_data(f, eval_fraction=0.25, cache_dir=cache)
    assert ds["train"]["text"] == ["First line.\n", "Second line.\n", "Third line.\n"]  # blank lines removed
    assert ds["eval"]["text"] == ["Fourth line.\n"]  # .txt holds out the end of the text
    para = load_data(f, sample_by="paragraph", eval_fraction=0, cache_dir=cache)["train"]
    assert para.num_rows < 4


def test_string_labels_shared_across_splits_and_numeric_strings(tmp_path, cache):
    _write(tmp_path / "train.csv", "text,label\na,cat\nb,dog\n")
    _write(tmp_path / "validation.csv", "text,label\nc,bird\n")
    ds = load_data(tmp_path, cache_dir=cache)
    assert ds["train"].features["label"].names == ["bird", "cat", "dog"] == ds["eval"].features["label"].names
    assert list(ds["train"]["label"]) == [1, 2] and list(ds["eval"]["label"]) == [0]
    _write(tmp_path / "n.json", json.dumps([{"text": "a", "label": "1"}, {"text": "b", "label": "0"}]))
    numeric = load_data(tmp_path / "n.json", eval_fraction=0, cache_dir=cache)["train"]
    assert numeric.features["label"].dtype == "int64" and list(numeric["label"]) == [1, 0]


def test_sentence_pairs_are_detected(tmp_path, cache):
    f = _write(tmp_path / "p.jsonl", json.dumps({"sentence1": "a", "sentence2": "b", "label": 1}) + "\n")
    ds = load_data(f, eval_fraction=0, cache_dir=cache)["train"]
    assert ds[0] == {"text": "a", "text_pair": "b", "label": 1}


@pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 data not available")
def test_real_sst2_dev_split(cache):
    ds = load_data(
        SST2 / "dev.tsv", columns={"text": "sentence", "label": "label"}, eval_fraction=0, cache_dir=cache
    )
    assert ds["train"].num_rows == 872 and set(ds["train"]["label"]) == {0, 1}
    assert ds["train"][0]["text"].startswith("it 's a charming and often affecting journey")


@pytest.mark.parametrize(
    ("files", "kwargs", "error", "match"),
    [
        (
            {},
            {"columns": {"text": "sentense", "label": "label"}},
            ValueError,
            r"columns\['text'\]='sentense' is not a column of split 'train' of 'd.tsv' \(did you mean 'sentence'\?\); "
            r"its columns are \['sentence', 'label'\]",
        ),
        (
            {},
            {"columns": {"txt": "sentence"}},
            ValueError,
            r"columns has key 'txt' \(did you mean 'text'\?\)",
        ),
        ({}, {"columns": {"label": "label"}}, ValueError, "has no 'text' entry"),
        ({}, {"columns": ["sentence"]}, TypeError, "columns must be a mapping"),
        ({}, {"columns": {"text": 1}}, TypeError, r"columns\['text'\] must be a column name"),
        (
            {"d.tsv": "sentence\tlabel\n \t1\n\t0\n"},
            {},
            ValueError,
            r"has no usable rows: all 2 rows have an empty text",
        ),
        ({}, {"eval_fraction": 1.0}, ValueError, r"eval_fraction=1.0 must be a number in \[0, 1\)"),
        (
            {},
            {"eval_split": "valid"},
            ValueError,
            r"eval_split='valid' is not a split .* its splits are \['train'\]",
        ),
        ({}, {"max_rows": 0}, ValueError, "max_rows=0 must be a positive integer"),
        ({}, {"sep": "::"}, ValueError, "sep='::' must be a single character"),
        ({}, {"holdout": "first"}, ValueError, "holdout='first' must be"),
        ({}, {"sample_by": "word"}, ValueError, "sample_by='word' must be"),
        ({}, {"seed": 1.5}, TypeError, "seed must be an integer"),
        ({"d.tsv": "sentence\tlabel\nonly\t1\n"}, {"eval_fraction": 0.5}, ValueError, "too few to hold out"),
    ],
)
def test_load_data_errors(tmp_path, cache, files, kwargs, error, match):
    _write(tmp_path / "d.tsv", files.get("d.tsv", "sentence\tlabel\ngood\t1\nbad\t0\nok\t1\n"))
    with pytest.raises(error, match=match):
        load_data(tmp_path / "d.tsv", cache_dir=cache, **kwargs)


def test_load_data_source_errors(tmp_path, cache):
    _write(tmp_path / "train.tsv", "sentence\tlabel\na\t1\n")
    with pytest.raises(ValueError, match=r"'.*trian.tsv' does not exist \(did you mean 'train.tsv'\?\)"):
        load_data(tmp_path / "trian.tsv", cache_dir=cache)
    _write(tmp_path / "data.dat", "text;label\na;1\nb;0\n")
    with pytest.raises(ValueError, match=r"extension '.dat', which is not supported.*or pass sep"):
        load_data(tmp_path / "data.dat", cache_dir=cache)
    assert load_data(tmp_path / "data.dat", sep=";", eval_fraction=0, cache_dir=cache)["train"]["text"] == [
        "a",
        "b",
    ]
    with pytest.raises(TypeError, match="source must be a file path"):
        load_data(3, cache_dir=cache)
    with pytest.raises(ValueError, match=r"source\['eval'\]=.* is not a file"):
        load_data({"train": tmp_path / "train.tsv", "eval": tmp_path / "missing.tsv"}, cache_dir=cache)
    with pytest.raises(ValueError, match=r"split='trian' is not a split of .* \(did you mean 'train'\?\)"):
        load_data(tmp_path, split="trian", cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a folder without data files"):
        load_data(tmp_path / "empty", cache_dir=cache)


def test_hub_id_offline_and_not_cached_gives_a_clear_error(cache):
    with pytest.raises(
        OSError,
        match=r"source='someone/not-cached' is not in the local datasets cache and the Hub is "
        r"offline",
    ):
        load_data("someone/not-cached", cache_dir=cache)


# ------------------------------------------------------------------------------------------- tokenize_data


@pytest.fixture(scope="module")
def bert_tok():
    return build_tokenizer(["the cat sat on the mat and the dog ran far away"], style="bert")


def test_tokenize_classification_with_pairs_truncation_and_padding(bert_tok):
    ds = DatasetDict(
        {
            "train": Dataset.from_dict(
                {
                    "text": ["the cat sat on the mat", "the dog"],
                    "text_pair": ["ran", "far away"],
                    "label": [1, 0],
                }
            ),
            "eval": Dataset.from_dict({"text": ["the cat"], "text_pair": ["sat"], "label": [1]}),
        }
    )
    out = tokenize_data(ds, bert_tok, task="sequence-classification", max_length=6)
    assert out["train"].column_names == ["input_ids", "attention_mask", "labels"]
    first = bert_tok.convert_ids_to_tokens(out["train"][0]["input_ids"])
    assert first == ["[CLS]", "the", "cat", "[SEP]", "ran", "[SEP]"]  # longest_first truncation to 6
    assert bert_tok.convert_ids_to_tokens(out["eval"][0]["input_ids"]) == [
        "[CLS]",
        "the",
        "cat",
        "[SEP]",
        "sat",
        "[SEP]",
    ]
    assert list(out["train"]["labels"]) == [1, 0]
    padded = tokenize_data(ds["train"], bert_tok, task="text-classification", max_length=10, padding=True)
    assert all(len(r) == 10 for r in padded["input_ids"]) and padded[1]["attention_mask"].count(0) > 0


def test_tokenize_splits_with_different_columns(bert_tok):
    ds = DatasetDict(
        {
            "train": Dataset.from_dict({"text": ["the cat"], "label": [1], "source": ["web"]}),
            "eval": Dataset.from_dict({"text": ["the dog"]}),  # unlabelled, e.g. for the teacher to label
        }
    )
    out = tokenize_data(ds, bert_tok, task="classification", max_length=8)
    assert out["train"].column_names == ["input_ids", "attention_mask", "labels"]
    assert out["eval"].column_names == ["input_ids", "attention_mask"]


def test_tokenize_causal_lm_blocks(bert_tok):
    gpt = build_tokenizer(["a b c d e f g"], style="gpt")
    ds = Dataset.from_dict({"text": ["a b c", "d e", "f g a b c d e"]})
    ids = [t for text in ds["text"] for t in gpt(text)["input_ids"]]
    out = tokenize_data(ds, gpt, task="causal-lm", max_length=4)
    assert out["input_ids"] == [ids[0:4], ids[4:8], ids[8:12]]  # 12 ids, remainder dropped
    assert out["labels"] == out["input_ids"] and all(m == [1] * 4 for m in out["attention_mask"])
    with_eos = tokenize_data(ds, gpt, task="causal-lm", max_length=4, add_eos=True)
    assert with_eos["input_ids"][0] == [*gpt("a b c")["input_ids"], gpt.eos_token_id]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "token-classification"}, ValueError, "not supported by tokenize_data"),
        ({"task": "translate"}, ValueError, "task"),
        ({"max_length": 1}, ValueError, "max_length=1 must be an integer >= 2"),
        ({"max_length": 4096}, ValueError, "exceeds the tokenizer's model_max_length=512"),
        ({"batch_size": 0}, ValueError, "batch_size=0 must be a positive integer"),
        ({"dataset": Dataset.from_dict({"sentence": ["a"]})}, ValueError, "has no 'text' column"),
        ({"dataset": [{"text": "a"}]}, TypeError, "dataset must be a datasets.Dataset or DatasetDict"),
        ({"tokenizer": str.split}, TypeError, "tokenizer must be a transformers tokenizer"),
        ({"task": "causal-lm", "max_length": 64}, ValueError, "gives no block of max_length=64 tokens"),
        ({"task": "causal-lm", "padding": True}, ValueError, "padding=True applies to classification"),
        (
            {"task": "causal-lm", "add_eos": True},
            ValueError,
            "add_eos=True but the tokenizer has no eos token",
        ),
    ],
)
def test_tokenize_data_errors(bert_tok, kwargs, error, match):
    args = {
        "dataset": Dataset.from_dict({"text": ["the cat sat"], "label": [1]}),
        "tokenizer": bert_tok,
        "task": "sequence-classification",
        "max_length": 8,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        tokenize_data(args.pop("dataset"), args.pop("tokenizer"), **args)


def test_padding_needs_a_pad_token():
    gpt = build_tokenizer(["a b"], style="gpt")
    with pytest.raises(ValueError, match="padding=True needs a pad token"):
        tokenize_data(
            Dataset.from_dict({"text": ["a b"]}), gpt, task="classification", max_length=4, padding=True
        )


def test_a_mapping_of_the_text_only_keeps_the_sources_label_column(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("sentence\tlabel\nthe cat runs\t1\na dog sleeps\t0\none tree\t1\n")
    ds = load_data(f, columns={"text": "sentence"}, eval_fraction=0)
    assert ds["train"].column_names == ["text", "label"] and ds["train"]["label"] == [1, 0, 1]
    # without a label column in the source, the text alone
    g = tmp_path / "plain.tsv"
    g.write_text("sentence\tother\nthe cat runs\tx\na dog sleeps\ty\n")
    assert load_data(g, columns={"text": "sentence"}, eval_fraction=0)["train"].column_names == ["text"]
