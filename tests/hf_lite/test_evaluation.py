"""hf_lite.evaluation and hf_lite.metrics: offline evaluate metrics checked against scikit-learn, exact
token-weighted perplexity, parameter/byte counts and latency measurement on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from hf_lite.evaluation import (
    EvaluationResult,
    ParameterCount,
    busy_note,
    bytes_on_disk,
    classification_metrics,
    count_parameters,
    evaluate_model,
    load_average,
    machine_info,
    make_compute_metrics,
    measure_latency,
    measure_latency_side_by_side,
    perplexity,
)
from hf_lite.metrics import load_metric, metric_path
from hf_lite.testing import build_tiny_model


@pytest.fixture(scope="module")
def sklearn_metrics():
    """scikit-learn is the reference for the metric definitions (a dev dependency, not one of hf-lite)."""
    return pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def gpt2():
    model, tok = build_tiny_model("gpt2", "causal-lm", seed=0)
    return model, tok


@pytest.fixture(scope="module")
def bert():
    model, tok = build_tiny_model("bert", "sequence-classification", num_labels=3, seed=0)
    return model, tok


# ------------------------------------------------------------------------------------------- docstrings


# ------------------------------------------------------------------------------------------- metrics


def _random_labels(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, refs, rng.integers(0, k, n))  # better than chance, not perfect
    return preds, refs


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("k", "average"), [(2, "binary"), (2, "macro"), (3, "macro"), (4, "micro"), (4, "weighted")]
)
def test_classification_metrics_equal_sklearn(sklearn_metrics, seed, k, average):
    preds, refs = _random_labels(seed, 57, k)
    out = classification_metrics(preds, refs, average=average)
    assert out["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(refs, preds), abs=1e-12)
    for name, fn in (("f1", "f1_score"), ("precision", "precision_score"), ("recall", "recall_score")):
        expected = getattr(sklearn_metrics, fn)(refs, preds, average=average, zero_division=0.0)
        assert out[name] == pytest.approx(expected, abs=1e-12), name


@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_bundled_metrics_match_sklearn_with_labels_weights_and_empty_classes(
    sklearn_metrics, average, zero_division
):
    refs = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    preds = np.array([0, 1, 1, 1, 0, 0, 1, 0])  # class 2 is never predicted: precision of class 2 is 0/0
    weights = np.linspace(0.5, 2.0, len(refs))
    labels = [2, 0, 1, 3]  # includes a label that never occurs
    for name, fn in (("f1", "f1_score"), ("precision", "precision_score"), ("recall", "recall_score")):
        kwargs = dict(labels=labels, average=average, sample_weight=weights, zero_division=zero_division)
        got = load_metric(name).compute(predictions=preds, references=refs, **kwargs)[name]
        expected = getattr(sklearn_metrics, fn)(refs, preds, **kwargs)
        np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=name)
    acc = load_metric("accuracy").compute(predictions=preds, references=refs, sample_weight=weights)[
        "accuracy"
    ]
    assert acc == pytest.approx(sklearn_metrics.accuracy_score(refs, preds, sample_weight=weights))
    count = load_metric("accuracy").compute(predictions=preds, references=refs, normalize=False)["accuracy"]
    assert count == 4.0


def test_binary_pos_label_and_single_class(sklearn_metrics):
    refs, preds = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    got = load_metric("f1").compute(predictions=preds, references=refs, pos_label=0)["f1"]
    assert got == pytest.approx(sklearn_metrics.f1_score(refs, preds, pos_label=0))
    # Only class 0 present and pos_label=1: no positives anywhere, every score is the zero_division value.
    assert classification_metrics([0, 0], [0, 0], average="binary") == {
        "accuracy": 1.0,
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
    }


def test_classification_metrics_accepts_logits_tensors_and_auto_average(sklearn_metrics):
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    refs = torch.tensor([0, 1, 2, 2])
    out = classification_metrics(logits, refs)  # 3 classes -> macro
    assert out["f1"] == pytest.approx(sklearn_metrics.f1_score([0, 1, 2, 2], [0, 1, 2, 1], average="macro"))
    binary = classification_metrics([1, 0, 1], [1, 1, 1])  # ids in {0, 1} -> binary
    assert binary["recall"] == pytest.approx(2 / 3) and binary["precision"] == 1.0
    assert classification_metrics([1.0, 0.0], [1, 0])["accuracy"] == 1.0  # integral floats are class ids


def test_make_compute_metrics_for_trainer():
    from transformers import EvalPrediction

    fn = make_compute_metrics(average="macro")
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    out = fn(EvalPrediction(predictions=(logits,), label_ids=np.array([1, 1, 1])))
    assert out["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="average='mean' must be one of"):
        make_compute_metrics(average="mean")


def test_metric_scripts_load_through_evaluate_load_offline(tmp_path, monkeypatch):
    import evaluate

    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")  # keep ~/.cache clean
    preds, refs = _random_labels(7, 40, 3)
    for name in ("accuracy", "f1"):
        module = evaluate.load(metric_path(name), cache_dir=str(tmp_path / "metrics"))
        kwargs = {} if name == "accuracy" else {"average": "macro"}
        assert module.compute(predictions=preds, references=refs, **kwargs) == load_metric(name).compute(
            predictions=preds, references=refs, **kwargs
        )
    assert (tmp_path / "modules" / "evaluate_modules" / "metrics").is_dir()


def test_token_perplexity_aggregates_exactly_across_batches():
    metric = load_metric("token_perplexity")
    metric.add_batch(nll=[1.0, 5.0], num_tokens=[1, 4])
    metric.add_batch(nll=[3.0], num_tokens=[5])
    out = metric.compute()
    assert out["num_tokens"] == 10 and out["loss"] == pytest.approx(0.9)
    assert out["perplexity"] == pytest.approx(math.exp(0.9))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: classification_metrics([0, 1], [0]), ValueError, r"predictions \(2\) and references \(1\)"),
        (
            lambda: classification_metrics([0, 1], [0, 1], average="samples"),
            ValueError,
            "average='samples' must be",
        ),
        (lambda: classification_metrics([0.5, 1], [0, 1]), TypeError, "must hold integer class ids"),
        (lambda: classification_metrics([], []), ValueError, "references is empty"),
        (lambda: classification_metrics(np.zeros((2, 2, 2)), [0, 1]), ValueError, r"got shape \(2, 2, 2\)"),
        (
            lambda: classification_metrics([0, 1, 2], [0, 1, 2], average="binary"),
            ValueError,
            "at most two classes",
        ),
        (
            lambda: load_metric("f1").compute(predictions=[0, 1], references=[0, 1], pos_label=5),
            ValueError,
            "pos_label=5 is not a valid label",
        ),
        (
            lambda: load_metric("f1").compute(predictions=[0, 1], references=[0, 1], zero_division=2),
            ValueError,
            "zero_division=2 must be",
        ),
        (
            lambda: load_metric("accuracy").compute(
                predictions=[0, 1], references=[0, 1], sample_weight=[1.0]
            ),
            ValueError,
            "sample_weight has shape",
        ),
        (
            lambda: load_metric("token_perplexity").compute(nll=[0.0], num_tokens=[0]),
            ValueError,
            "num_tokens sums to 0",
        ),
        (lambda: load_metric("acuracy"), ValueError, "did you mean 'accuracy'"),
        (lambda: load_metric(3), TypeError, "name must be a string"),
        (lambda: metric_path("bleu"), ValueError, "'bleu' is not a bundled metric"),
    ],
)
def test_metric_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------- perplexity


def _lm_rows() -> Dataset:
    # Rows of different lengths and partly masked labels: token weighting differs from a mean of batch means.
    ids = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [16, 17, 18, 19, 20]]
    labels = [list(r) for r in ids]
    labels[0][2:5] = [-100] * 3
    mask = [[1] * len(r) for r in ids]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "labels": labels})


class _NextTokenModel(torch.nn.Module):
    """A fake causal LM that predicts ``token + 1`` confidently: consecutive ids are cheap, others expensive."""

    def __init__(self, vocab: int = 32):
        super().__init__()
        self.vocab = vocab
        self.scale = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, input_ids, attention_mask=None):
        logits = self.scale * torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float()
        return type("Output", (), {"logits": logits})()


def test_perplexity_is_token_weighted_over_the_whole_set():
    model = _NextTokenModel()
    ds = Dataset.from_dict(
        {
            "input_ids": [[5, 6, 7, 8, 9, 10], [3, 9, 1], [20, 21, 22, 23]],
            "labels": [[5, 6, 7, 8, 9, 10], [3, 9, 1], [20, -100, 22, -100]],
        }
    )
    nll, counts = [], []
    for row in ds:  # by hand: -log softmax of the next label, labels != -100
        logits = model(torch.tensor([row["input_ids"]])).logits[0]
        terms = [
            -torch.log_softmax(logits[t], -1)[row["labels"][t + 1]].item()
            for t in range(len(row["labels"]) - 1)
            if row["labels"][t + 1] != -100
        ]
        nll.append(sum(terms))
        counts.append(len(terms))
    expected = math.exp(sum(nll) / sum(counts))
    for batch_size in (1, 2, 3):  # padding and batching do not change it
        assert perplexity(model, ds, batch_size=batch_size) == pytest.approx(
            expected, rel=1e-6
        )  # float32 logits
    mean_of_means = math.exp(sum(n / c for n, c in zip(nll, counts, strict=True)) / len(nll))
    assert expected != pytest.approx(mean_of_means, rel=0.05)  # the rows really weigh differently


def test_perplexity_agrees_with_transformers_causal_lm_loss(gpt2):
    model, _ = gpt2
    model.eval()  # no dropout in the reference computation
    ds = _lm_rows()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for row in ds:
            loss = model(
                input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])
            ).loss
            n = sum(1 for t in row["labels"][1:] if t != -100)  # transformers' mean is over these tokens
            total_nll += loss.item() * n
            total_tokens += n
    assert perplexity(model, ds, batch_size=2) == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)


def test_perplexity_without_labels_scores_attended_tokens(gpt2):
    model, _ = gpt2
    ds = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]], "attention_mask": [[1, 1, 1, 1]]})
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss
    assert perplexity(model, ds) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_perplexity_errors(gpt2):
    model, _ = gpt2
    with pytest.raises(TypeError, match=r"pass one split, e.g. dataset\['eval'\]"):
        perplexity(model, DatasetDict({"eval": _lm_rows()}))
    with pytest.raises(ValueError, match=r"no column\(s\) \['input_ids'\]"):
        perplexity(model, Dataset.from_dict({"text": ["a"]}))
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        perplexity(model, _lm_rows(), batch_size=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        perplexity(model, Dataset.from_dict({"input_ids": []}))
    with pytest.raises(TypeError, match="dataset must be a datasets.Dataset"):
        perplexity(model, [[1, 2]])


# ------------------------------------------------------------------------------------------- evaluate_model


def test_evaluate_model_classification(bert, tmp_path):
    model, _ = bert
    rng = np.random.default_rng(0)
    ids = [[2, *rng.integers(5, 60, n).tolist(), 3] for n in (3, 7, 5, 9, 4, 6)]
    ds = Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": [0, 1, 2, 0, 1, 2]}
    )
    model.save_pretrained(tmp_path / "bert")
    model.train()  # evaluate_model switches to eval mode and back
    result = evaluate_model(
        model,
        ds,
        "text-classification",
        batch_size=4,
        folder=tmp_path / "bert",
        batch_sizes=(1, 32),
        warmup=0,
        repeats=1,
        seq_len=8,
    )
    assert model.training
    with torch.no_grad():
        model.eval()
        preds = [model(input_ids=torch.tensor([r])).logits.argmax(-1).item() for r in ids]
        model.train()
    assert result.metrics == classification_metrics(preds, [0, 1, 2, 0, 1, 2], average="macro")
    assert result.task == "sequence-classification" and result.details == {
        "num_examples": 6,
        "average": "macro",
    }
    assert result.parameters == sum(p.numel() for p in model.parameters())
    assert result.bytes_on_disk == (tmp_path / "bert" / "model.safetensors").stat().st_size
    assert [r["batch_size"] for r in result.latency["results"]] == [1, 32] and result.latency["seq_len"] == 8
    assert result.to_dict()["metrics"] == result.metrics


def test_evaluate_model_causal_lm_matches_perplexity(gpt2):
    model, _ = gpt2
    result = evaluate_model(model, _lm_rows(), "causal-lm", batch_size=2, measure_speed=False)
    assert result.metrics["perplexity"] == pytest.approx(perplexity(model, _lm_rows()), rel=1e-9)
    assert result.metrics["loss"] == pytest.approx(math.log(result.metrics["perplexity"]))
    assert (
        result.details["num_tokens"] == 4 + 2 + 4 and result.latency is None and result.bytes_on_disk is None
    )


def test_evaluate_model_errors(bert):
    model, _ = bert
    ds = Dataset.from_dict({"input_ids": [[2, 5, 3]]})
    with pytest.raises(ValueError, match=r"task='seq2seq-lm' cannot be evaluated yet"):
        evaluate_model(model, ds, "seq2seq-lm")
    with pytest.raises(ValueError, match=r"no column\(s\) \['labels'\]"):
        evaluate_model(model, ds, "sequence-classification")
    with pytest.raises(ValueError, match="average='all' must be one of"):
        evaluate_model(model, ds, "sequence-classification", average="all")


# ------------------------------------------------------------------------------------------- size


def test_count_parameters_counts_zeros_and_tied_weights_once(gpt2):
    layer = torch.nn.Linear(5, 3)
    with torch.no_grad():
        layer.weight[:, :2] = 0
        layer.bias.zero_()
    assert count_parameters(layer) == ParameterCount(total=18, nonzero=9)
    assert count_parameters(layer).sparsity == pytest.approx(0.5)
    model, _ = gpt2
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    unique = {id(p): p for p in model.parameters()}
    assert count_parameters(model).total == sum(p.numel() for p in unique.values())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        count_parameters({"weight": torch.zeros(2)})


@pytest.mark.integration
def test_count_parameters_of_a_4bit_model_dequantizes(tmp_path):
    from hf_lite import load_model
    from hf_lite.testing import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "llama", "llama")
    full = load_model(folder, dtype="float32")
    with torch.no_grad():
        full.model.layers[0].mlp.up_proj.weight[:, :32] = 0  # 128 x 32 pruned weights
    full.save_pretrained(tmp_path / "pruned")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "pruned" / f).write_bytes((folder / f).read_bytes())
    quant = load_model(tmp_path / "pruned", quantization="4bit")
    fp, q = count_parameters(full), count_parameters(quant)
    assert q.total == fp.total
    # NF4 has an exact zero: pruned weights stay zero and small weights may round to zero.
    assert fp.total - fp.nonzero >= 128 * 32 and q.nonzero <= fp.nonzero


def test_bytes_on_disk(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"w" * 1000)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"a" * 10)
    (tmp_path / "training_args.bin").write_bytes(b"t" * 7)  # Trainer state, not weights
    (tmp_path / "optimizer.pt").write_bytes(b"o" * 50)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "model.safetensors").write_bytes(b"c" * 100)
    assert bytes_on_disk(tmp_path) == 1010
    assert bytes_on_disk(str(tmp_path), include="all") == 1000 + 10 + 7 + 50 + 2 + 100
    assert bytes_on_disk(tmp_path / "model.safetensors") == 1000
    with pytest.raises(ValueError, match="does not exist; pass the folder the model was saved to"):
        bytes_on_disk(tmp_path / "nope")
    (tmp_path / "tokenizer-only").mkdir()
    (tmp_path / "tokenizer-only" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="'tokenizer-only' has no weight files"):
        bytes_on_disk(tmp_path / "tokenizer-only")
    with pytest.raises(ValueError, match="include='some' must be 'weights'"):
        bytes_on_disk(tmp_path, include="some")
    with pytest.raises(TypeError, match="folder must be a path"):
        bytes_on_disk(3)


def test_bytes_on_disk_of_a_saved_model(bert, tmp_path):
    model, _ = bert
    model.save_pretrained(tmp_path)
    n_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    assert n_bytes < bytes_on_disk(tmp_path) < n_bytes + 64 * 1024  # tensors + safetensors header


# ------------------------------------------------------------------------------------------- speed


def test_measure_latency_reports_sane_numbers(gpt2):
    model, tok = gpt2
    model.train()
    out = measure_latency(
        model,
        {"input_ids": torch.tensor([[5, 6, 7]]), "labels": [1]},
        batch_sizes=(1, 32),
        warmup=1,
        repeats=3,
        seq_len=10,
    )
    assert model.training  # mode restored
    assert out["threads"] == torch.get_num_threads() and out["seq_len"] == 10 and out["device"] == "cpu"
    by_size = {r["batch_size"]: r for r in out["results"]}
    assert set(by_size) == {1, 32}
    for b, r in by_size.items():
        assert math.isfinite(r["median_ms"]) and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["samples_per_s"] == pytest.approx(b / (r["median_ms"] / 1000))
        assert r["tokens_per_s"] == pytest.approx(10 * r["samples_per_s"])
    assert by_size[32]["samples_per_s"] > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"example_inputs": [5, 6]}, TypeError, "example_inputs must be a mapping"),
        ({"example_inputs": {"attention_mask": [1]}}, ValueError, "has no 'input_ids'"),
        (
            {"example_inputs": {"input_ids": "abc"}},
            ValueError,
            r"example_inputs\['input_ids'\] must be one non-empty",
        ),
        ({"batch_sizes": ()}, ValueError, "batch_sizes=\\(\\) must be a non-empty sequence"),
        ({"batch_sizes": (1, 0)}, ValueError, "batch_sizes entry=0 must be a positive integer"),
        ({"warmup": -1}, ValueError, "warmup=-1 must be an integer >= 0"),
        ({"repeats": 0}, ValueError, "repeats=0 must be an integer >= 1"),
        ({"seq_len": 0}, ValueError, "seq_len=0 must be a positive integer"),
        ({"model": "gpt2"}, TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_measure_latency_errors(gpt2, kwargs, error, match):
    args = {"model": gpt2[0], "example_inputs": {"input_ids": [5, 6]}, **kwargs}
    with pytest.raises(error, match=match):
        measure_latency(args.pop("model"), args.pop("example_inputs"), **args)


class _Recorder(torch.nn.Module):
    """Records the order in which it is called and takes ``cost`` calls' worth of busy work."""

    def __init__(self, name: str, log: list[str], cost: int) -> None:
        super().__init__()
        self.name, self.log, self.cost = name, log, cost
        self.weight = torch.nn.Parameter(torch.ones(64, 64))

    def forward(self, input_ids, attention_mask=None):
        self.log.append(self.name)
        x = torch.ones(input_ids.shape[0], 64)
        for _ in range(self.cost):
            x = torch.tanh(x @ self.weight)
        return x


def test_side_by_side_interleaves_models_and_rotates_their_order():
    log: list[str] = []
    models = {name: _Recorder(name, log, cost) for name, cost in (("a", 1), ("b", 1), ("c", 200))}
    models["a"].eval()  # modes are restored afterwards, whatever they were
    out = measure_latency_side_by_side(models, {"input_ids": [1, 2]}, batch_sizes=(1, 4), warmup=1, repeats=3)
    assert list(out) == ["a", "b", "c"] and models["b"].training and not models["a"].training
    # per batch size: one warm-up each, then 3 rounds of all three, the first model rotating
    per_size = ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert log == per_size + per_size
    for name in models:
        assert [r["batch_size"] for r in out[name]["results"]] == [1, 4]
        assert out[name]["repeats"] == 3 and out[name]["seq_len"] == 2
    # the costly model is slower, measured in the same rounds
    assert out["c"]["results"][1]["median_ms"] > out["a"]["results"][1]["median_ms"]


def test_side_by_side_matches_single_model_interface(gpt2):
    single = measure_latency(gpt2[0], {"input_ids": [5, 6]}, batch_sizes=(2,), repeats=2, seq_len=4)
    both = measure_latency_side_by_side(
        {"m": gpt2[0]}, {"input_ids": [5, 6]}, batch_sizes=(2,), repeats=2, seq_len=4
    )
    assert set(single) == set(both["m"]) and both["m"]["results"][0].keys() == single["results"][0].keys()
    with pytest.raises(ValueError, match="models must be a non-empty mapping"):
        measure_latency_side_by_side({}, {"input_ids": [5]})
    with pytest.raises(TypeError, match=r"models\['x'\] must be a torch.nn.Module"):
        measure_latency_side_by_side({"x": "gpt2"}, {"input_ids": [5]})


def test_machine_info_describes_the_machine_without_paths():
    from hf_lite.report import check_public

    info = machine_info()
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert info["cpu"] and info["cpu_count"] >= 1 and 1 <= info["usable_cpus"] <= info["cpu_count"]
    check_public(info, "machine")  # raises on a local path or token


def test_evaluation_result_sparsity():
    assert EvaluationResult("causal-lm", {}, 0, 0, 0).sparsity == 0.0
    assert EvaluationResult("causal-lm", {}, 8, 2, 0).sparsity == 0.75


# ------------------------------------------------------------------------------ latency spread and load (issue 19)


def test_latency_reports_quartiles_of_the_timed_passes(monkeypatch):
    """A fake clock makes the timed passes last 1, 2, 3, 4 and 10 ms: the median, quartiles and IQR must be
    numpy's percentiles of exactly those times, and the load average read after timing is recorded."""
    import types

    import hf_lite.evaluation.latency as latency_module

    durations = [0.001, 0.002, 0.003, 0.004, 0.010]
    ticks = []
    clock = 0.0
    for d in durations:  # start, end of each timed pass
        ticks += [clock, clock + d]
        clock += d + 1.0
    fake = iter(ticks)
    monkeypatch.setattr(latency_module, "time", types.SimpleNamespace(perf_counter=lambda: next(fake)))
    monkeypatch.setattr(latency_module, "load_average", lambda: 3.25)

    class Fixed(torch.nn.Module):  # takes the keyword input; the fake clock sets its time
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, input_ids):
            return input_ids

    out = measure_latency(Fixed(), {"input_ids": [1, 2]}, batch_sizes=(1,), warmup=0, repeats=5)
    r = out["results"][0]
    q1, median, q3 = np.percentile([1000 * d for d in durations], [25, 50, 75])
    assert r["median_ms"] == pytest.approx(median) and r["q1_ms"] == pytest.approx(q1)
    assert r["q3_ms"] == pytest.approx(q3) and r["iqr_ms"] == pytest.approx(q3 - q1)
    assert (r["min_ms"], r["max_ms"]) == (pytest.approx(1.0), pytest.approx(10.0))
    assert out["load_average"] == 3.25


def test_quartiles_match_numpy_and_refuse_no_times():
    from hf_lite.evaluation.latency import quartiles

    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 10, 11):
        times = rng.exponential(size=n).tolist()
        assert quartiles(times) == pytest.approx(tuple(np.percentile(times, [25, 75])))
    assert quartiles([4.0]) == (4.0, 4.0)
    with pytest.raises(ValueError, match="times must hold at least one measured time"):
        quartiles([])


def test_load_average_is_the_systems_one_minute_figure():
    import os

    value = load_average()
    if hasattr(os, "getloadavg"):
        assert value is not None and value >= 0
        assert abs(value - os.getloadavg()[0]) < 5  # the same figure, read a moment apart
    else:
        assert value is None


def test_busy_note_when_load_exceeds_cpus_or_spread_is_wide():
    assert busy_note(None, 2) is None and busy_note(2.0, 2) is None and busy_note(1.5, None) is None
    note = busy_note(3.5, 2)
    assert "busy" in note and "3.50 on 2 usable CPUs" in note and "speedups are steadier" in note
    assert busy_note(1.0, 2, relative_iqr=0.25) is None  # at the threshold: not wide
    wide = busy_note(1.0, 2, relative_iqr=0.4)
    assert wide.startswith("latency spread is wide") and "40% of the median" in wide
    both = busy_note(8.0, 4, relative_iqr=0.5)
    assert "busy" in both and "spread is wide" in both
