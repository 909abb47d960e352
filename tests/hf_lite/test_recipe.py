"""Recipe parsing, validation, overrides and fingerprints (no training)."""

from __future__ import annotations

import copy

import pytest

from hf_lite.app.recipe import Recipe, StageConfig, apply_overrides, check_training_args, parse_cli_overrides

BASE = {
    "name": "r",
    "task": "causal-lm",
    "teacher": "org/teacher",
    "seed": 1,
    "data": {"train": "train.txt", "max_length": 32},
    "stages": [
        {"name": "student", "type": "init_student", "model": "teacher", "layers": "every_other"},
        {
            "name": "distill",
            "type": "distill",
            "model": "student",
            "teacher": "teacher",
            "args": {"temperature": 2.0},
        },
        {"name": "int8", "type": "quantize", "model": "distill", "bits": 8},
        {"name": "evaluate", "type": "evaluate", "models": ["teacher", "distill", "int8"]},
    ],
}


def recipe(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def test_parses_and_fills_defaults():
    r = Recipe.from_dict(BASE)
    assert [s.name for s in r.stages] == ["student", "distill", "int8", "evaluate"]
    assert r.stage("distill").get("args") == {"temperature": 2.0} and r.output_dir == "hf-lite-runs/r"
    assert r.data.max_length == 32 and r.data.eval_fraction == 0.1


def test_from_yaml_and_file_errors(tmp_path):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert Recipe.from_yaml(path).name == "r"
    with pytest.raises(FileNotFoundError, match=r"recipe '.*nope.yaml' does not exist"):
        Recipe.from_yaml(tmp_path / "nope.yaml")
    path.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="is not valid YAML"):
        Recipe.from_yaml(path)
    path.write_text("- just a list")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        Recipe.from_yaml(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (recipe(teacherr="x"), r"recipe: unknown key 'teacherr' \(did you mean 'teacher'\?\)"),
        (
            recipe(data={"train": "a", "max_lenght": 3}),
            r"recipe.data: unknown key 'max_lenght' \(did you mean 'max_length'\?\)",
        ),
        (
            recipe(stages=[{"name": "s", "type": "distil", "model": "teacher"}]),
            r"unknown stage type 'distil' \(did you mean 'distill'\?\)",
        ),
        (
            recipe(stages=[{"name": "q", "type": "quantize", "model": "teacher", "bitz": 8}]),
            r"stages\[0\] \(q\): unknown key 'bitz' \(did you mean 'bits'\?\)",
        ),
        (
            recipe(stages=[{"name": "q", "type": "quantize", "model": "teacher", "bits": 3}]),
            r"bits=3 must be 4 or 8",
        ),
        (
            recipe(stages=[{"name": "p", "type": "prune", "model": "teacher", "method": "wandaa"}]),
            r"method='wandaa' is not a pruning method \(did you mean 'wanda'\?\)",
        ),
        (
            recipe(
                stages=[
                    {"name": "a", "type": "init_student"},
                    {"name": "a", "type": "quantize", "model": "a", "bits": 8},
                ]
            ),
            "already used",
        ),
        (
            recipe(
                stages=[{"name": "a", "type": "init_student"}, {"name": "b", "type": "quantize", "bits": 8}]
            ),
            "say which model this stage reads",
        ),
        (
            recipe(
                stages=[
                    {"name": "student", "type": "init_student"},
                    {"name": "q", "type": "quantize", "model": "studnt", "bits": 8},
                ]
            ),
            r"model reference 'studnt' is not an earlier stage \(did you mean 'student'\?\)",
        ),
        (recipe(stages=[]), "stages must be a non-empty list"),
        (recipe(task="generation-lm"), r"task='generation-lm' is not a task"),
        (recipe(seed="one"), r"seed='one' must be an integer"),
        (recipe(data={"train": "a", "eval_fraction": 1.5}), r"eval_fraction=1.5 must be in \(0, 1\)"),
    ],
)
def test_bad_recipes_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(raw)


def test_missing_required_key():
    raw = recipe()
    del raw["teacher"]
    with pytest.raises(ValueError, match="missing required key 'teacher'"):
        Recipe.from_dict(raw)


def test_overrides():
    assert parse_cli_overrides(
        ["--seed", "3", "--distill.learning_rate=1e-4", "--use-cpu", "true", "--x", "null"]
    ) == {
        "seed": 3,
        "distill.learning_rate": 1e-4,
        "use_cpu": True,
        "x": None,
    }
    with pytest.raises(ValueError, match="has no value"):
        parse_cli_overrides(["--seed"])
    with pytest.raises(ValueError, match="must look like --key value"):
        parse_cli_overrides(["seed", "3"])
    r = Recipe.from_dict(
        BASE, {"seed": 7, "max_steps": 5, "distill.alpha": 0.9, "int8.bits": 4, "data.max_length": 16}
    )
    assert r.seed == 7 and r.data.max_length == 16 and r.stage("int8").get("bits") == 4
    assert r.stage("distill").get("args") == {"temperature": 2.0, "max_steps": 5, "alpha": 0.9}
    with pytest.raises(
        ValueError,
        match=r"'distil' is neither 'data' nor a stage of this recipe \(did you mean 'distill'\?\)",
    ):
        apply_overrides(copy.deepcopy(BASE), {"distil.alpha": 0.1})


def test_training_args_go_through_hfargumentparser(tmp_path):
    from trainers import DistillationConfig

    stage = StageConfig("distill", "distill", "student", {"args": {"temperature": 3.0, "max_steps": 2}})
    args = check_training_args(
        stage, DistillationConfig, {"output_dir": str(tmp_path), "use_cpu": True, "report_to": []}
    )
    assert isinstance(args, DistillationConfig) and args.temperature == 3.0 and args.max_steps == 2
    bad = StageConfig("distill", "distill", "student", {"args": {"temprature": 3.0}})
    with pytest.raises(
        ValueError,
        match=r"args.temprature is not a DistillationConfig field \(did you mean 'temperature'\?\)",
    ):
        check_training_args(bad, DistillationConfig, {"output_dir": str(tmp_path)})
    wrong = StageConfig("distill", "distill", "student", {"args": {"temperature": -1.0}})
    with pytest.raises(ValueError, match="temperature=-1.0 must be > 0"):
        check_training_args(wrong, DistillationConfig, {"output_dir": str(tmp_path), "use_cpu": True})


def test_stage_fingerprints_follow_the_chain():
    a = Recipe.from_dict(BASE)
    b = Recipe.from_dict(BASE, {"distill.alpha": 0.9})
    assert a.stage_fingerprint("student") == b.stage_fingerprint("student")
    assert a.stage_fingerprint("distill") != b.stage_fingerprint("distill")
    assert a.stage_fingerprint("int8") != b.stage_fingerprint("int8")  # a changed input changes what follows
    assert a.stage_fingerprint("int8") == Recipe.from_dict(BASE).stage_fingerprint("int8")
