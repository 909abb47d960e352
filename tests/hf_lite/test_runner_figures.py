"""The figures a run writes (issue 19 item 9): a structural prune's stage marker states the parameters it
removed beside its (zero) sparsity; the evaluate stage's report.json names its teacher and records the
latency spread and the load average at measurement."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hf_lite.app.cli import main
from hf_lite.app.demo import make_corpus


def test_structural_prune_marker_and_evaluate_report_figures(tmp_path, capsys):
    from hf_lite.loading import load_model
    from hf_lite.testing import save_tiny_checkpoint

    texts = make_corpus(300, seed=0)
    (tmp_path / "train.txt").write_text("\n".join(texts[:250]) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(texts[250:]) + "\n")
    teacher = save_tiny_checkpoint(tmp_path / "teacher", "llama", texts=texts)
    out = tmp_path / "run"
    raw = {
        "name": "figures",
        "task": "causal-lm",
        "teacher": str(teacher),
        "output_dir": str(out),
        "seed": 0,
        "data": {"train": str(tmp_path / "train.txt"), "eval": str(tmp_path / "eval.txt"), "max_length": 16},
        "stages": [
            {"name": "ffn-50", "type": "prune", "model": "teacher", "method": "ffn", "keep_ratio": 0.5},
            {"name": "evaluate", "type": "evaluate", "models": ["ffn-50", "teacher"], "latency_repeats": 3},
        ],
    }
    recipe = tmp_path / "figures.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["run", str(recipe)]) == 0

    def count(folder: Path) -> int:
        return sum(p.numel() for p in load_model(folder, "causal-lm").parameters())

    before, after = count(Path(teacher)), count(out / "ffn-50" / "model")
    marker = json.loads((out / "ffn-50" / "stage.json").read_text())
    assert marker["sparsity"] < 0.01  # a structural prune leaves (almost) no zeros ...
    assert marker["removed_parameters"] == before - after > 0  # ... it removes parameters
    assert abs(marker["removed_fraction"] - (before - after) / before) < 1e-12
    assert f"ffn-50: {before - after:,} of {before:,} parameters removed" in capsys.readouterr().out

    report = json.loads((out / "evaluate" / "report.json").read_text())
    assert report["teacher"] == "teacher"  # named though it is not the first row
    assert report["load_average"] is None or report["load_average"] >= 0
    for row in report["rows"]:
        assert row["latency_b1_iqr_ms"] >= 0 and row["latency_b32_iqr_ms"] >= 0
    markdown = (out / "evaluate" / "report.md").read_text()
    assert "interquartile range of those passes" in markdown
