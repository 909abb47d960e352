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


# ------------------------------------------------------------------------- overrides (issue 19, items 3-4)

WITH_FT = recipe(
    stages=[
        {"name": "teacher-ft", "type": "finetune", "model": "teacher", "args": {"max_steps": 2}},
        *copy.deepcopy(BASE["stages"]),
    ]
)


def test_overrides_reach_a_stage_whose_name_has_a_dash():
    overrides = parse_cli_overrides(["--teacher-ft.learning_rate", "3e-5", "--teacher_ft.max-steps", "7"])
    assert overrides == {"teacher-ft.learning_rate": 3e-5, "teacher_ft.max_steps": 7}
    r = Recipe.from_dict(WITH_FT, overrides)
    assert r.stage("teacher-ft").get("args") == {"max_steps": 7, "learning_rate": 3e-5}
    assert r.stage("distill").get("args") == {"temperature": 2.0}  # other stages untouched


def test_override_mapping_options_args_prefix_and_training_arguments_by_class():
    r = Recipe.from_dict(
        WITH_FT,
        {
            "distill.pruning.end_step": 20,
            "distill.args.learning_rate": 1e-3,
            "temperature": 3.0,  # a DistillationConfig field: only the distill stage takes it
            "max_steps": 4,  # a field of both: both take it
        },
    )
    assert r.stage("distill").spec.pruning == {"end_step": 20}
    assert r.stage("distill").get("args") == {"temperature": 3.0, "learning_rate": 1e-3, "max_steps": 4}
    assert r.stage("teacher-ft").get("args") == {"max_steps": 4}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sed": 1},
            r"override --sed: not a recipe key nor a training argument of any stage \(did you mean 'seed'\?\)",
        ),
        (
            {"distill.learning_rat": 1e-4},
            r"override --distill.learning_rat: 'learning_rat' is neither an option of distill stage 'distill' nor "
            r"a DistillationConfig field \(did you mean 'learning_rate'\?\)",
        ),
        (
            {"teacher-ft.learning_rat": 1e-4},
            r"nor a TrainingArguments field \(did you mean 'learning_rate'\?\)",
        ),
        (
            {"warmup_ratio": 0.1},
            r"override --warmup_ratio: .*transformers 5 removed it; use warmup_steps \(a float below 1",
        ),
        (
            {"teacher-ft.warmup_ratio": 0.1},
            r"transformers 5 removed it; use warmup_steps",
        ),
        (
            {"int8.bitz": 4},
            r"override --int8.bitz: 'bitz' is not an option of quantize stage 'int8' \(did you mean 'bits'\?\)",
        ),
        ({"int8.bits.x": 4}, r"option 'bits' of stage 'int8' is 8, not a mapping"),
        (
            {"data.max_lenght": 16},
            r"override --data.max_lenght: 'max_lenght' is not a data key \(did you mean 'max_length'\?\)",
        ),
        (
            {"teacher-fx.max_steps": 1},
            r"'teacher-fx' is neither 'data' nor a stage of this recipe \(did you mean 'teacher-ft'\?\)",
        ),
    ],
)
def test_bad_overrides_name_the_override_with_a_did_you_mean(overrides, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(WITH_FT, overrides)


def test_a_bare_override_without_a_training_stage():
    raw = recipe(stages=[{"name": "q", "type": "quantize", "model": "teacher", "bits": 8}])
    with pytest.raises(
        ValueError, match=r"--sed: not a recipe key \(did you mean 'seed'\?\), and the recipe has no training"
    ):
        Recipe.from_dict(raw, {"sed": 1})


def test_removed_training_arguments_in_a_recipe_name_their_replacement(tmp_path):
    from transformers import TrainingArguments

    stage = StageConfig("ft", "finetune", "teacher", {"args": {"warmup_ratio": 0.1}})
    with pytest.raises(
        ValueError,
        match=r"args.warmup_ratio is not a TrainingArguments field: transformers 5 removed it; use warmup_steps",
    ):
        check_training_args(stage, TrainingArguments, {"output_dir": str(tmp_path)})
    stage = StageConfig("ft", "finetune", "teacher", {"args": {"evaluation_strategy": "no"}})
    with pytest.raises(ValueError, match=r"transformers 5 removed it; use eval_strategy"):
        check_training_args(stage, TrainingArguments, {"output_dir": str(tmp_path)})


# --------------------------------------------------------------------------- fingerprints (issue 19, item 1)


def test_fingerprint_covers_seed_resolved_options_and_input_contents(tmp_path):
    base = Recipe.from_dict(BASE)
    names = [s.name for s in base.stages]
    reseeded = Recipe.from_dict(BASE, {"seed": 2})
    assert all(base.stage_fingerprint(n) != reseeded.stage_fingerprint(n) for n in names)
    # Options spelled out with their default values, and numbers YAML read as strings, are the same settings.
    spelled = copy.deepcopy(BASE)
    spelled["stages"][3]["latency_repeats"] = 10
    spelled["stages"][1]["args"] = {"temperature": "2.0"}
    assert [Recipe.from_dict(spelled).stage_fingerprint(n) for n in names] == [
        base.stage_fingerprint(n) for n in names
    ]
    # The content of local data files and of a local teacher folder counts, not only their names.
    data, teacher = tmp_path / "train.txt", tmp_path / "teacher"
    data.write_text("a\nb\n")
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    local = recipe(data={"train": str(data)}, teacher=str(teacher))
    before = Recipe.from_dict(local).stage_fingerprint("student")
    data.write_text("a\nc\n")
    after_data = Recipe.from_dict(local).stage_fingerprint("student")
    (teacher / "config.json").write_text('{"x": 1}')
    after_teacher = Recipe.from_dict(local).stage_fingerprint("student")
    assert len({before, after_data, after_teacher}) == 3
    (teacher / ".config.json.tmp-1").write_text("a temporary file of an atomic write")  # hidden: not an input
    assert Recipe.from_dict(local).stage_fingerprint("student") == after_teacher


def test_stage_settings_say_what_changed():
    from hf_lite.app.fingerprint import changed_settings

    a = Recipe.from_dict(BASE).stage_settings("distill")
    b = Recipe.from_dict(BASE, {"seed": 5, "distill.learning_rate": 1e-3}).stage_settings("distill")
    assert changed_settings(a, b) == ["seed: 1 -> 5", "stage.options.args.learning_rate: (unset) -> 0.001"]
    assert changed_settings(a, a) == []
    many = {f"k{i}": i for i in range(6)}
    assert changed_settings(many, {k: v + 1 for k, v in many.items()}, limit=2) == [
        "k0: 0 -> 1",
        "k1: 1 -> 2",
        "...",
    ]


def test_stage_inputs_default_evaluate_reads_the_model_stages_before_it():
    raw = copy.deepcopy(BASE)
    raw["stages"][3] = {"name": "evaluate", "type": "evaluate"}
    raw["stages"].append({"name": "export", "type": "export", "model": "int8"})
    r = Recipe.from_dict(raw)
    assert r.stage_inputs("evaluate") == ["teacher", "student", "distill", "int8"]
    assert r.stage_inputs("distill") == ["student", "teacher"] and r.stage_inputs("export") == ["int8"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "magnitude"}, r"method='magnitude' with pattern='unstructured' needs sparsity"),
        (
            {"method": "wanda", "pattern": "unstructured"},
            r"method='wanda' with pattern='unstructured' needs sparsity",
        ),
        (
            {"method": "sparsegpt", "pattern": "unstructured"},
            r"method='sparsegpt' with pattern='unstructured' needs sparsity",
        ),
        ({"method": "ffn"}, r"method='ffn' needs keep_ratio"),
        ({"method": "experts"}, r"method='experts' needs keep_ratio"),
        ({"method": "sparsegpt", "pattern": "2:4", "block_size": 0}, r"block_size=0 must be a positive int"),
        (
            {"method": "sparsegpt", "pattern": "2:4", "dampening": 1.5},
            r"dampening=1.5 must be a number in \(0, 1\)",
        ),
        ({"method": "heads"}, r"method='heads' needs keep_ratio"),
        (
            {"method": "layers"},
            r"method='layers' needs keep_ratio \(the fraction of layers kept\) or num_layers",
        ),
    ],
)
def test_prune_stages_missing_what_their_method_needs_fail_at_parse(options, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(recipe(stages=[{"name": "p", "type": "prune", "model": "teacher", **options}]))
    from hf_lite.app.stages import PruneStage

    # what suffices: an N:M pattern without sparsity, heads_keep_ratio for heads, num_layers for layers
    for good in (
        {"method": "wanda", "pattern": "2:4"},
        {"method": "heads", "heads_keep_ratio": 0.5},
        {"method": "layers", "num_layers": 2},
    ):
        assert PruneStage.from_options("stage 'p'", good).method == good["method"]


def test_sparsegpt_prune_stage_runs_sparsegpt_with_its_options():
    import torch

    from hf_lite.app.stages import PruneStage
    from hf_lite.pruning import sparsegpt_prune_
    from hf_lite.testing import build_tiny_model

    stage = PruneStage.from_options(
        "stage 'p'", {"method": "sparsegpt", "pattern": "2:4", "block_size": 16, "dampening": 0.05}
    )
    model, tok = build_tiny_model("llama")
    reference = copy.deepcopy(model)
    tok.pad_token = tok.eos_token
    batches = [tok(["the cat sees the dog", "a bird"], return_tensors="pt", padding=True)]
    stage.prune_(model, batches)
    sparsegpt_prune_(reference, batches, pattern="2:4", block_size=16, dampening=0.05)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_expert_prune_stages_run_the_expert_functions():
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from hf_lite.app.stages import PruneStage

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    model = MixtralForCausalLM(config).eval()
    batches = [
        {"input_ids": torch.randint(0, 64, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    ]
    PruneStage.from_options("stage 'p'", {"method": "experts", "keep_ratio": 0.5}).prune_(model, batches)
    PruneStage.from_options("stage 'p'", {"method": "expert_ffn", "keep_ratio": 0.5}).prune_(model, batches)
    assert model.config.num_local_experts == 2 and model.config.intermediate_size == 16
    assert model.model.layers[0].mlp.gate.weight.shape[0] == 2
