"""Progress bars (issue 19, item 7): evaluation, latency timing, teacher-cache precompute and export each show a
transformers tqdm bar that reaches its total, on the main process only, and none when transformers' bars are off."""

from __future__ import annotations

import io
import math

import datasets
import pytest
from transformers.utils import logging as hf_logging

import hf_lite.progress
from hf_lite.evaluation import evaluate_model, measure_latency_side_by_side
from hf_lite.exporting import export
from hf_lite.progress import progress_bar
from hf_lite.teacher_cache import precompute_teacher_cache
from hf_lite.testing import build_tiny_model


class _Recorded:
    """A bar made by transformers' factory, drawn into a buffer, with every ``update`` step recorded."""

    def __init__(self, factory, args, kwargs) -> None:
        self.out = io.StringIO()
        self.kwargs = kwargs
        self.steps: list[int] = []
        self.bar = factory(*args, **{**kwargs, "file": self.out})

    def update(self, n=1):
        self.steps.append(n)
        return self.bar.update(n)

    def __iter__(self):
        for item in self.bar:
            self.steps.append(1)
            yield item

    def __getattr__(self, name):
        return getattr(self.bar, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


@pytest.fixture
def bars():
    """Every bar made through ``transformers.utils.logging.tqdm`` while the test runs, bars enabled."""
    made: list[_Recorded] = []
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    previous = hf_logging.set_tqdm_hook(
        lambda factory, args, kwargs: made.append(_Recorded(factory, args, kwargs)) or made[-1]
    )
    try:
        yield made
    finally:
        hf_logging.set_tqdm_hook(previous)
        if not was_enabled:
            hf_logging.disable_progress_bar()


def _named(made, desc):
    found = [b for b in made if b.kwargs.get("desc") == desc]
    assert len(found) == 1, [b.kwargs.get("desc") for b in made]
    return found[0]


def test_evaluation_and_latency_bars_count_batches_and_passes(bars):
    model, _ = build_tiny_model("bert", "sequence-classification", num_labels=2)
    ds = datasets.Dataset.from_dict({"input_ids": [[2, 7, 3]] * 5, "labels": [0, 1, 0, 1, 1]})
    evaluate_model(model, ds, "classification", batch_size=2, batch_sizes=(1, 2), warmup=1, repeats=2)
    evaluation, latency = _named(bars, "evaluate"), _named(bars, "latency")
    assert evaluation.steps == [1] * math.ceil(5 / 2) and evaluation.bar.n == 3
    assert latency.kwargs["total"] == 2 * (1 + 2) == sum(latency.steps)  # batch sizes x (warm-up + timed)
    assert "latency" in latency.out.getvalue() and "evaluate" in evaluation.out.getvalue()


def test_side_by_side_latency_bar_counts_every_models_passes(bars):
    small, _ = build_tiny_model("gpt2", "causal-lm")
    big, _ = build_tiny_model("gpt2", "causal-lm", num_hidden_layers=2)
    measure_latency_side_by_side(
        {"a": small, "b": big}, {"input_ids": [5, 6]}, batch_sizes=(1, 3), warmup=2, repeats=3
    )
    bar = _named(bars, "latency")
    assert bar.kwargs["total"] == sum(bar.steps) == 2 * 2 * (2 + 3)  # batch sizes x models x passes


@pytest.mark.parametrize("not_main", ["process group", "launcher"])
def test_bars_are_drawn_by_the_main_process_only(bars, monkeypatch, not_main):
    if not_main == "process group":
        monkeypatch.setattr(hf_lite.progress, "is_main_process", lambda: False)
    else:  # `accelerate launch` / torchrun set RANK before any process group exists
        monkeypatch.setenv("RANK", "1")
    model, _ = build_tiny_model("gpt2", "causal-lm")
    evaluate_model(model, datasets.Dataset.from_dict({"input_ids": [[5, 6, 7]] * 3}), "causal-lm", repeats=1)
    assert {b.kwargs["desc"] for b in bars} == {"evaluate", "latency"}
    assert all(b.kwargs["disable"] is True and b.out.getvalue() == "" for b in bars)


def test_no_bar_when_transformers_bars_are_disabled(capsys):
    was_enabled = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.disable_progress_bar()
        with progress_bar(total=2, desc="quiet") as bar:
            bar.update(2)
        assert list(progress_bar(range(3), desc="quiet")) == [0, 1, 2]
        assert "quiet" not in capsys.readouterr().err
        hf_logging.enable_progress_bar()
        with progress_bar(total=2, desc="drawn") as bar:
            bar.update(2)
        assert "drawn" in capsys.readouterr().err
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def test_teacher_cache_bar_counts_examples_and_a_resumed_run_starts_at_its_done_shards(
    bars, tmp_path, monkeypatch
):
    import hf_lite.teacher_cache.precompute as precompute

    teacher, tok = build_tiny_model("llama", seed=0)
    ids = [tok(t)["input_ids"] for t in ("the cat", "a dog runs", "one bird", "two fish swim", "red tree")]
    data = datasets.Dataset.from_dict({"input_ids": ids})
    write_shard, calls = precompute.write_shard, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return write_shard(*args, **kwargs)

    monkeypatch.setattr(precompute, "write_shard", interrupted)
    kwargs = {"tokenizer": tok, "k": 4, "batch_size": 2, "shard_size": 2}
    with pytest.raises(KeyboardInterrupt):
        precompute_teacher_cache(teacher, data, tmp_path / "cache", **kwargs)
    first = _named(bars, "teacher cache")
    assert first.kwargs["total"] == 5 and first.steps == [
        2,
        2,
    ]  # shard 0 written, shard 1 scored, then killed
    bars.clear()
    monkeypatch.setattr(precompute, "write_shard", write_shard)
    precompute_teacher_cache(teacher, data, tmp_path / "cache", **kwargs)
    resumed = _named(bars, "teacher cache")
    assert resumed.steps == [2, 2, 1] and resumed.bar.n == 5  # the done shard at once, then batches


def test_export_bar_reaches_its_steps(bars, tmp_path):
    model, tok = build_tiny_model("llama")
    export(model, tmp_path / "out", tokenizer=tok)
    bar = _named(bars, "export out")
    assert bar.kwargs["total"] == sum(bar.steps) == 3  # written, reload-checked, card and rename
