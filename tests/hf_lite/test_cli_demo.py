"""`hf-lite demo` end to end in its quick mode, and the command's argument handling."""

from __future__ import annotations

import json

import pytest

from hf_lite.app.cli import main
from hf_lite.app.demo import demo_recipe, make_corpus, run_demo


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "evaluate" / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == ["teacher-trained", "student", "student-alone", "distill", "int8"]
    rows = {row["name"]: row for row in report["rows"]}
    # Teacher vs student: metric, size and latency are measured and printed.
    for name in names:
        assert rows[name]["metrics"]["perplexity"] > 1.0 and rows[name]["latency_b1_ms"] > 0
        assert f"| {name} |" in printed
    assert rows["student"]["parameters"] < rows["teacher-trained"]["parameters"]
    assert (
        rows["distill"]["nonzero_parameters"] < 0.75 * rows["distill"]["parameters"]
    )  # pruned during distillation
    assert rows["int8"]["bytes_on_disk"] < rows["distill"]["bytes_on_disk"]
    assert (out / "evaluate" / "report.png").is_file() and "plot:" in printed
    # The exported student is an ordinary checkpoint; a second run resumes and skips every stage.
    assert (out / "export" / "model" / "model.safetensors").is_file()
    assert main(["demo", "--output_dir", str(out), "--quick"]) == 0
    assert capsys.readouterr().out.count("done in an earlier run, skipped") == 7


def test_corpus_is_seeded_and_has_long_range_agreement():
    assert make_corpus(20, seed=3) == make_corpus(20, seed=3) != make_corpus(20, seed=4)
    sentences = make_corpus(200, seed=0)
    with_clause = [s for s in sentences if " that " in s]
    assert 50 < len(with_clause) < 150  # about half carry a relative clause between subject and verb


def test_demo_recipe_is_a_valid_recipe(tmp_path):
    from hf_lite.app.recipe import Recipe

    raw = demo_recipe(
        tmp_path, teacher="t", train="a.txt", eval_file="b.txt", seed=0, quick=True, pretrain_teacher=True
    )
    recipe = Recipe.from_dict(raw)
    assert [s.type for s in recipe.stages] == [
        "finetune",
        "init_student",
        "finetune",
        "distill",
        "quantize",
        "evaluate",
        "export",
    ]


def test_demo_needs_both_teacher_and_dataset(tmp_path):
    with pytest.raises(ValueError, match="give both --teacher and --dataset"):
        run_demo(tmp_path, teacher="org/model")


def test_cli_version_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "hf-lite 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
