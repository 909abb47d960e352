"""`hf-lite run/plan` on recipes: stages chained through folders, resume after a kill, bad input,
and the same run on two processes under `accelerate launch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_lite.app.cli import main
from hf_lite.app.demo import make_corpus
from tests.launch import launch_two

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A teacher checkpoint and text data for small causal-LM recipes."""
    from hf_lite.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-run")
    texts = make_corpus(1200, seed=0)
    (root / "train.txt").write_text("\n".join(texts[:1000]) + "\n")
    (root / "eval.txt").write_text("\n".join(texts[1000:]) + "\n")
    teacher = save_tiny_checkpoint(root / "teacher", "llama", texts=texts, num_hidden_layers=4)
    return root, teacher


def _recipe(root: Path, teacher: Path, out: Path, *, steps: int = 12, save_steps: int = 4) -> Path:
    raw = {
        "name": "tiny",
        "task": "causal-lm",
        "teacher": str(teacher),
        "output_dir": str(out),
        "seed": 0,
        "data": {"train": str(root / "train.txt"), "eval": str(root / "eval.txt"), "max_length": 16},
        "stages": [
            {"name": "student", "type": "init_student", "model": "teacher", "layers": [0, 3]},
            {
                "name": "distill",
                "type": "distill",
                "model": "student",
                "teacher": "teacher",
                "args": {
                    "max_steps": steps,
                    "save_steps": save_steps,
                    "per_device_train_batch_size": 8,
                    "learning_rate": 3e-3,
                    "logging_steps": 2,
                    "disable_tqdm": True,
                },
            },
            {"name": "int8", "type": "quantize", "model": "distill", "bits": 8},
            {
                "name": "evaluate",
                "type": "evaluate",
                "models": ["teacher", "distill", "int8"],
                "latency_repeats": 2,
            },
        ],
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _report(out: Path) -> dict:
    return json.loads((out / "evaluate" / "report.json").read_text())


def _perplexities(report: dict) -> dict[str, float]:
    return {row["name"]: row["metrics"]["perplexity"] for row in report["rows"]}


@pytest.mark.integration
def test_run_chains_stages_and_a_second_run_skips_them(tiny_run, tmp_path, capsys):
    root, teacher = tiny_run
    out = tmp_path / "run"
    recipe = _recipe(root, teacher, out)
    assert main(["run", str(recipe)]) == 0
    report = _report(out)
    assert [r["name"] for r in report["rows"]] == ["teacher", "distill", "int8"]
    assert report["rows"][2]["quantization"].startswith("bnb-8bit")
    assert (out / "evaluate" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| distill |" in (out / "evaluate" / "report.md").read_text()
    student = json.loads((out / "student" / "model" / "config.json").read_text())
    assert student["num_hidden_layers"] == 2
    capsys.readouterr()
    assert main(["run", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert all(
        f"{s}: done in an earlier run, skipped" in printed for s in ("student", "distill", "int8", "evaluate")
    )
    # Changing a stage's settings re-runs it and what follows, not what comes before.
    assert main(["run", str(recipe), "--int8.bits", "4"]) == 0
    printed = capsys.readouterr().out
    assert "distill: done in an earlier run, skipped" in printed and "int8 (quantize) ..." in printed
    assert _report(out)["rows"][2]["quantization"].startswith("bnb-4bit")


@pytest.mark.integration
def test_a_killed_run_resumes_to_the_same_report(tiny_run, tmp_path):
    root, teacher = tiny_run
    reference = tmp_path / "reference"
    assert main(["run", str(_recipe(root, teacher, reference, steps=40, save_steps=5))]) == 0

    out = tmp_path / "killed"
    recipe = _recipe(root, teacher, out, steps=40, save_steps=5)
    cmd = [sys.executable, "-m", "hf_lite", "run", str(recipe)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trainer_dir = out / "distill" / "trainer"
    deadline = time.time() + 240
    while time.time() < deadline and not (trainer_dir / "checkpoint-10").is_dir():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-stage: no chance to clean up
    proc.wait()
    assert not (out / "distill" / "stage.json").exists(), "the stage finished before the kill: make it longer"
    student_marker = (out / "student" / "stage.json").stat().st_mtime_ns

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "student: done in an earlier run, skipped" in done.stdout
    assert "distill: resuming from checkpoint-" in done.stdout
    assert (out / "student" / "stage.json").stat().st_mtime_ns == student_marker
    got, want = _perplexities(_report(out)), _perplexities(_report(reference))
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.multiprocess
def test_two_processes_write_one_report_that_matches_one_process(tiny_run, tmp_path):
    root, teacher = tiny_run
    one, two = tmp_path / "one", tmp_path / "two"
    recipe_one = _recipe(root, teacher, one)
    recipe_two = _recipe(root, teacher, two)
    single = subprocess.run(
        [sys.executable, "-m", "hf_lite", "run", str(recipe_one)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launched = launch_two(
        [
            "-m",
            "hf_lite",
            "run",
            str(recipe_two),
            "--distill.per_device_train_batch_size",
            "4",
        ],  # global batch 8
        env=ENV,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("| distill |") == 1  # only the main process prints and writes the report
    assert len(list((two / "evaluate").glob("report*.json"))) == 1
    got, want = _perplexities(_report(two)), _perplexities(_report(one))
    assert got == pytest.approx(want, rel=1e-3)


# ----------------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("recipe", "family", "task"),
    [
        ("distill_encoder", "bert", "sequence-classification"),
        ("qlora_causal_lm", "llama", "causal-lm"),
        ("distill_prune_causal_lm", "llama", "causal-lm"),
        ("oneshot_prune", "llama", "causal-lm"),
    ],
)
def test_plan_each_example_recipe(recipe, family, task, tmp_path, capsys, monkeypatch):
    from hf_lite.testing import save_tiny_checkpoint

    if not SHARED.is_dir():
        pytest.skip("the example recipes read ../shared/data")
    monkeypatch.chdir(ROOT)  # the recipes' data paths are relative to the repository root
    teacher = save_tiny_checkpoint(tmp_path / "teacher", family, task)
    assert (
        main(
            [
                "plan",
                f"examples/recipes/{recipe}.yaml",
                "--teacher",
                str(teacher),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "plan OK: nothing was trained." in printed and "world size: 1 process(es)" in printed
    assert "train rows" in printed and "parameters" in printed
    if recipe == "qlora_causal_lm":
        assert "(adapter on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)" in printed
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_plan_with_a_model_that_cannot_be_resolved_is_a_clear_error(tmp_path, capsys, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip("the example recipes read ../shared/data")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        [
            "plan",
            "examples/recipes/oneshot_prune.yaml",
            "--teacher",
            "no-such-org/no-such-model",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hf-lite: error: ") and "no-such-org/no-such-model" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_a_clear_error(tiny_run, tmp_path, capsys):
    root, teacher = tiny_run
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe '" in capsys.readouterr().err
    bad = yaml.safe_load(_recipe(root, teacher, tmp_path / "bad").read_text())
    bad["stages"][1]["type"] = "distil"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["plan", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown stage type 'distil' (did you mean 'distill'?)" in capsys.readouterr().err

    # A column the data does not have.
    tsv = tmp_path / "data.tsv"
    tsv.write_text("sentence\tlabel\nthe cat\t1\na dog\t0\n")
    cls = yaml.safe_load(_recipe(root, teacher, tmp_path / "cls").read_text())
    cls["data"] = {"train": str(tsv), "columns": {"text": "review", "label": "label"}}
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(cls))
    assert main(["plan", str(tmp_path / "cls.yaml")]) == 2
    assert "review" in capsys.readouterr().err

    # Nothing left after dropping blank rows.
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    cls["data"] = {"train": str(empty)}
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump(cls))
    assert main(["plan", str(tmp_path / "empty.yaml")]) == 2
    assert "empty" in capsys.readouterr().err.lower()

    # An output folder that is not a previous run of this recipe.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["run", str(_recipe(root, teacher, taken))]) == 2
    assert "is not empty and is not an hf-lite run folder" in capsys.readouterr().err
    assert (taken / "notes.txt").read_text() == "mine"


@pytest.mark.integration
def test_pushed_card_states_the_figures_of_the_runs_report(tiny_run, tmp_path, hub_server):
    """The export stage's push builds the model card from the evaluate stage's report rows."""
    from huggingface_hub import ModelCard

    root, teacher = tiny_run
    out = tmp_path / "run"
    path = _recipe(root, teacher, out, steps=2, save_steps=2)
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = [
        raw["stages"][0],  # init_student
        {"name": "evaluate", "type": "evaluate", "models": ["teacher", "student"], "latency_repeats": 2},
        {
            "name": "export",
            "type": "export",
            "model": "student",
            "push": {"repo_id": "test-user/tiny-student"},
        },
    ]
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 0
    rows = {row["name"]: row for row in _report(out)["rows"]}
    card = ModelCard.load("test-user/tiny-student").text
    student, reference = rows["student"], rows["teacher"]
    assert f"| parameters | {reference['parameters']:,} | {student['parameters']:,} |" in card
    perplexity = f"{student['metrics']['perplexity']:.4g}"
    assert f"| perplexity | {reference['metrics']['perplexity']:.4g} | {perplexity} |" in card
    # the exported folder carries the same figures in its own card
    exported = (out / "export" / "model" / "README.md").read_text()
    assert f"| perplexity | {reference['metrics']['perplexity']:.4g} | {perplexity} |" in exported


# ------------------------------------------------------- stale results are never reused (issue 19, item 1)


def _ft_recipe(root: Path, teacher: Path, out: Path, *, steps: int = 4) -> Path:
    """A fine-tuning stage whose name has a dash, and a student made from its result."""
    raw = {
        "name": "tiny-ft",
        "task": "causal-lm",
        "teacher": str(teacher),
        "output_dir": str(out),
        "seed": 0,
        "data": {
            "train": str(root / "train.txt"),
            "eval": str(root / "eval.txt"),
            "max_length": 16,
            "max_eval_rows": 16,
        },
        "stages": [
            {
                "name": "teacher-ft",
                "type": "finetune",
                "model": "teacher",
                "args": {
                    "max_steps": steps,
                    "save_steps": 2,
                    "per_device_train_batch_size": 8,
                    "learning_rate": 3e-3,
                    "disable_tqdm": True,
                },
            },
            {"name": "student", "type": "init_student", "model": "teacher-ft", "layers": [0, 3]},
        ],
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


@pytest.mark.integration
def test_a_changed_seed_retrains_from_scratch_and_an_unchanged_setting_skips(tiny_run, tmp_path, capsys):
    import torch

    root, teacher = tiny_run
    out = tmp_path / "run"
    path = str(_ft_recipe(root, teacher, out))
    assert main(["run", path]) == 0
    before = _weights(out / "teacher-ft")
    assert (out / "teacher-ft" / "trainer" / "checkpoint-4" / "trainer_state.json").is_file()
    capsys.readouterr()

    # The case: same stage, another seed. Its checkpoint-4 (seed 0) must not be resumed.
    assert main(["run", path, "--stage", "teacher-ft", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" not in printed
    assert (
        "teacher-ft: rerunning from scratch because its settings changed (seed: 0 -> 1); every stage after it "
        "reruns too." in printed
    )
    marker = json.loads((out / "teacher-ft" / "stage.json").read_text())
    assert marker["steps"] == 4 and marker["settings"]["seed"] == 1
    assert not (out / "teacher-ft" / "running.json").exists()
    after = _weights(out / "teacher-ft")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not (out / ".previous" / "teacher-ft").exists()  # deleted once the new result was complete

    # A later stage may not read a result of other settings; an unknown --stage is named with a did-you-mean.
    assert main(["run", path, "--stage", "student"]) == 2
    err = capsys.readouterr().err
    assert (
        "stage 'student' reads 'teacher-ft', which has no complete result made with the current settings"
        in err
    )
    # plan says what a run would do with each stage, and why.
    assert main(["plan", path]) == 0
    printed = capsys.readouterr().out
    assert "[run reruns it from scratch: its settings changed (seed: 1 -> 0)]" in printed
    assert main(["plan", path, "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "teacher-ft (finetune)" in printed and "[done: run skips it]" in printed
    assert main(["run", path, "--stage", "studnet", "--seed", "1"]) == 2
    assert (
        "--stage 'studnet' is not a stage of recipe 'tiny-ft' (did you mean 'student'?)"
        in capsys.readouterr().err
    )

    # The whole recipe with seed 1: teacher-ft is current, the student (seed 0) reruns; then nothing changes.
    assert main(["run", path, "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "teacher-ft: done in an earlier run, skipped" in printed
    assert "student: rerunning from scratch because its settings changed (seed: 0 -> 1)" in printed
    stamp = (out / "teacher-ft" / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", path, "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{s}: done in an earlier run, skipped" in printed for s in ("teacher-ft", "student"))
    assert "rerunning" not in printed
    assert (out / "teacher-ft" / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_stale_stage_folders_are_set_aside_discarded_or_restored(tmp_path, capsys):
    """The run folder's bookkeeping without training: markers, .previous, unfinished runs."""
    from hf_lite.app.recipe import Recipe
    from hf_lite.app.run_folder import finish_stage, last_complete_checkpoint, prepare_stage, stage_done
    from hf_lite.app.runner import RunContext

    out = tmp_path / "out"
    raw = {
        "name": "r",
        "task": "causal-lm",
        "teacher": "org/teacher",
        "output_dir": str(out),
        "stages": [
            {"name": "s", "type": "init_student", "model": "teacher", "layers": "every_other"},
            {"name": "q", "type": "quantize", "model": "s", "bits": 8},
        ],
    }

    def context(**overrides):
        return RunContext(Recipe.from_dict(raw, overrides))

    def complete(ctx, name, content):
        stage = ctx.recipe.stage(name)
        prepare_stage(ctx, stage)
        (out / name / "model").mkdir(parents=True, exist_ok=True)
        (out / name / "model" / "w").write_text(content)
        finish_stage(ctx, stage, {})

    a, b = context(), context(**{"s.layers": [0]})
    complete(a, "s", "A")
    complete(a, "q", "A")
    assert stage_done(a, a.recipe.stage("q")) and not stage_done(b, b.recipe.stage("s"))
    capsys.readouterr()

    prepare_stage(b, b.recipe.stage("s"))  # other settings: the complete result waits in .previous
    assert (
        "s: rerunning from scratch because its settings changed (stage.options.layers: every_other -> [0])"
        in (capsys.readouterr().out)
    )
    assert (out / ".previous" / "s" / "model" / "w").read_text() == "A"
    assert (out / "s" / "running.json").is_file() and not (out / "s" / "stage.json").exists()
    prepare_stage(a, a.recipe.stage("s"))  # interrupted, then the settings came back: nothing was lost
    assert "s: restored its result for these settings" in capsys.readouterr().out
    assert stage_done(a, a.recipe.stage("s")) and (out / "s" / "model" / "w").read_text() == "A"

    complete(b, "s", "B")
    assert not (out / ".previous" / "s").exists()
    prepare_stage(b, b.recipe.stage("q"))  # its own settings are the same; the stage it follows changed
    assert (
        "q: rerunning from scratch because an earlier stage it follows changed (s)" in capsys.readouterr().out
    )

    checkpoint = out / "q" / "trainer" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    c = context(**{"s.layers": [0], "q.bits": 4})
    prepare_stage(c, c.recipe.stage("q"))  # an unfinished run of other settings: its checkpoints go
    assert (
        "q: discarding an unfinished run and its checkpoints because its settings changed "
        "(stage.options.bits: 8 -> 4)" in capsys.readouterr().out
    )
    assert last_complete_checkpoint(out / "q" / "trainer") is None
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    prepare_stage(c, c.recipe.stage("q"))  # an unfinished run of these settings: resumed
    assert last_complete_checkpoint(out / "q" / "trainer") == str(checkpoint)

    (out / "s" / "stage.json").write_text(json.dumps({"fingerprint": "0123"}))  # an older hf-lite's marker
    prepare_stage(b, b.recipe.stage("s"))
    assert "recorded by an older hf-lite" in capsys.readouterr().out


# ------------------------------------------------------ plan catches every mistake (issue 19, items 3 and 4)


def _edited(path: Path, tmp_path: Path, edit) -> str:
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    bad = tmp_path / f"edited-{len(list(tmp_path.glob('edited-*')))}.yaml"
    bad.write_text(yaml.safe_dump(raw))
    return str(bad)


def test_plan_and_run_catch_every_mistake_before_anything_runs(tiny_run, tmp_path, capsys):
    root, teacher = tiny_run
    out = tmp_path / "out"
    path = _recipe(root, teacher, out)  # student, distill, int8, evaluate
    ft_out = tmp_path / "ft-out"
    ft_path = _ft_recipe(root, teacher, ft_out)  # teacher-ft, student

    def set_args(**args):
        return lambda raw: raw["stages"][1]["args"].update(args)

    mistakes = [
        (
            [_edited(path, tmp_path, set_args(learning_rat=1e-3))],
            "stage 'distill': args.learning_rat is not a DistillationConfig field (did you mean 'learning_rate'?)",
        ),
        (
            [_edited(path, tmp_path, set_args(warmup_ratio=0.1))],
            "args.warmup_ratio is not a DistillationConfig field: transformers 5 removed it; use warmup_steps",
        ),
        (
            [_edited(path, tmp_path, set_args(temperature=-1.0))],
            "temperature=-1.0 must be > 0",
        ),
        (
            [_edited(path, tmp_path, lambda raw: raw["stages"][1].update(pruning={"target_sparsty": 0.5}))],
            "stage 'distill': pruning.target_sparsty is not a PruningConfig field (did you mean 'target_sparsity'?)",
        ),
        (
            [_edited(path, tmp_path, lambda raw: raw["stages"][1].update(peft="loraa"))],
            "stage 'distill': peft='loraa' is not a known shorthand",
        ),
        (
            [str(path), "--sed", "1"],
            "override --sed: not a recipe key nor a training argument of any stage (did you mean 'seed'?)",
        ),
        (
            [str(path), "--distill.learning_rat", "1e-4"],
            "override --distill.learning_rat: 'learning_rat' is neither an option of distill stage 'distill' nor a "
            "DistillationConfig field (did you mean 'learning_rate'?)",
        ),
        ([str(path), "--warmup_ratio", "0.1"], "transformers 5 removed it; use warmup_steps"),
    ]
    for command in ("plan", "run"):
        for argv, message in mistakes:
            assert main([command, *argv]) == 2, (command, argv)
            err = capsys.readouterr().err
            assert err.startswith("hf-lite: error: ") and message in err, (command, argv, err)
            assert not out.exists()  # nothing was written, nothing trained

    # Overrides reach a stage whose name has a dash, written as in the recipe or with '_'.
    for spelling in ("teacher-ft", "teacher_ft"):
        assert main(["plan", str(ft_path), f"--{spelling}.learning_rate", "3e-5"]) == 0
        assert "plan OK: nothing was trained." in capsys.readouterr().out
    assert not ft_out.exists()


def test_help_of_run_and_plan_explains_overrides(capsys):
    for command in ("run", "plan"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        printed = capsys.readouterr().out
        assert "--distill.learning_rate 3e-5" in printed and "--teacher-ft.max_steps 5" in printed


# ----------------------------------------------------- evaluation only when asked, never twice (issue 19, item 7)


def _count_evaluations(monkeypatch) -> dict[str, int]:
    """Counters of full passes over the evaluation split: the Trainer's ``evaluation_loop`` (a training stage's
    evaluation) and ``evaluate_model`` (the evaluate stage, one call per model)."""
    from transformers import Trainer

    import hf_lite.app.evaluate_stage as evaluate_stage

    counts = {"trainer": 0, "evaluate_model": 0}
    loop, evaluate_model = Trainer.evaluation_loop, evaluate_stage.evaluate_model

    def counted_loop(self, *args, **kwargs):
        counts["trainer"] += 1
        return loop(self, *args, **kwargs)

    def counted_evaluate_model(*args, **kwargs):
        counts["evaluate_model"] += 1
        return evaluate_model(*args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluation_loop", counted_loop)
    monkeypatch.setattr(evaluate_stage, "evaluate_model", counted_evaluate_model)
    return counts


@pytest.mark.integration
@pytest.mark.parametrize(
    ("flags", "passes"),
    [
        ([], 0),  # eval_strategy "no" (the default): nothing evaluates in the training stage
        (["--distill.eval_strategy", "epoch"], 1),  # the Trainer's evaluation of the last step is the stage's
        (["--distill.eval_strategy", "steps", "--distill.eval_steps", "5"], 2),  # steps 5 and 10, none after
        (
            ["--distill.eval_strategy", "steps", "--distill.eval_steps", "4"],
            3,
        ),  # 4, 8, then the final model once
        (["--distill.do_eval", "true"], 1),  # asked for at the end only
    ],
)
def test_a_distill_stage_evaluates_only_when_asked_and_never_twice(
    tiny_run, tmp_path, monkeypatch, flags, passes
):
    root, teacher = tiny_run
    counts = _count_evaluations(monkeypatch)
    out = tmp_path / "run"
    # the stages `hf-lite distill` runs: a student from the teacher's layers, distil, evaluate teacher and student
    raw = {
        "name": "distill",
        "task": "causal-lm",
        "teacher": str(teacher),
        "output_dir": str(out),
        "data": {"train": str(root / "train.txt"), "eval": str(root / "eval.txt"), "max_length": 16},
        "stages": [
            {"name": "student", "type": "init_student", "model": "teacher", "layers": "every_other"},
            {"name": "distill", "type": "distill", "model": "student", "teacher": "teacher"},
            {"name": "evaluate", "type": "evaluate", "models": ["teacher", "distill"], "latency_repeats": 1},
        ],
    }
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(raw))
    argv = [
        "run",
        str(tmp_path / "distill.yaml"),
        "--distill.max_steps",
        "10",
        "--distill.disable_tqdm",
        "true",
    ]
    assert main([*argv, *flags]) == 0
    assert counts == {
        "trainer": passes,
        "evaluate_model": 2,
    }  # the evaluate stage: teacher and student, once each
    info = json.loads((out / "distill" / "stage.json").read_text())
    if passes == 0:
        assert not any(key.startswith("eval_") for key in info)
    else:  # the mixed loss the trainer minimises, and its parts: the CE part compares with a fine-tuned model's
        assert {"eval_loss", "eval_loss_ce", "eval_loss_kd"} <= set(info)
        assert info["eval_loss"] == pytest.approx(
            0.5 * info["eval_loss_kd"] + 0.5 * info["eval_loss_ce"], rel=1e-5
        )


@pytest.mark.multiprocess
def test_two_processes_gather_a_distill_stages_eval_loss_parts_like_eval_loss(tiny_run, tmp_path):
    """Under `accelerate launch` the CE/KD parts are gathered batch by batch as transformers gathers eval_loss
    (the rows repeated to even out the last batches dropped), so eval_loss stays their alpha mix exactly."""
    root, teacher = tiny_run
    raw = {
        "name": "d",
        "task": "causal-lm",
        "teacher": str(teacher),
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(root / "train.txt"), "eval": str(root / "eval.txt"), "max_length": 16},
        "stages": [
            {"name": "student", "type": "init_student", "model": "teacher", "layers": [0, 3]},
            {
                "name": "distill",
                "type": "distill",
                "model": "student",
                "teacher": "teacher",
                "args": {"max_steps": 4, "eval_strategy": "epoch", "alpha": 0.3, "disable_tqdm": True},
            },
        ],
    }
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(raw))
    launched = launch_two(["-m", "hf_lite", "run", str(tmp_path / "d.yaml")], env=ENV, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "distill" / "stage.json").read_text())
    assert info["eval_loss"] == pytest.approx(
        0.3 * info["eval_loss_kd"] + 0.7 * info["eval_loss_ce"], rel=1e-5
    )


@pytest.mark.integration
def test_distill_command_on_plain_text_needs_no_label_column(tiny_run, tmp_path):
    """`hf-lite distill --task causal-lm --data train.txt`: a text file has no label column, and none is asked."""
    root, teacher = tiny_run
    out = tmp_path / "d"
    argv = ["distill", "--task", "causal-lm", "--teacher", str(teacher), "--data", str(root / "train.txt")]
    argv += ["--eval_data", str(root / "eval.txt"), "--output_dir", str(out), "--student_layers", "[0, 3]"]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "4"]
    assert main(argv) == 0
    assert (out / "distill" / "model" / "model.safetensors").is_file()
    student = json.loads((out / "student" / "model" / "config.json").read_text())
    assert student["num_hidden_layers"] == 2  # --student_layers "[0, 3]" read as indices


@pytest.mark.integration
def test_the_chat_recipe_runs_on_policy_on_a_gguf_teacher(tmp_path, capsys, monkeypatch):
    """examples/recipes/distill_chat.yaml as shipped (its conversations, on-policy with lmbda 0.5), two steps,
    with a tiny GGUF teacher that carries a chat template."""
    from tests.gguf_writer import save_tiny_gguf

    gguf = tmp_path / "teacher.gguf"
    save_tiny_gguf(gguf)
    raw = yaml.safe_load((ROOT / "examples/recipes/distill_chat.yaml").read_text())
    raw["data"]["train"] = str(ROOT / raw["data"]["train"])
    raw["stages"][1]["args"].update(
        max_steps=2, per_device_train_batch_size=2, lmbda=1.0, max_new_tokens=4, logging_steps=1
    )
    raw["stages"] = [st for st in raw["stages"] if st["type"] != "export"]
    recipe = tmp_path / "chat.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    common = ["--teacher", str(gguf), "--output_dir", str(tmp_path / "out")]
    assert main(["plan", str(recipe), *common]) == 0
    assert "plan OK" in capsys.readouterr().out
    assert main(["run", str(recipe), *common]) == 0
    logs = json.loads((next((tmp_path / "out").rglob("trainer_state.json"))).read_text())["log_history"]
    assert any(e.get("on_policy_fraction") == 1.0 and e.get("generated_length", 0) > 0 for e in logs)


@pytest.mark.integration
def test_the_sequence_level_recipe_trains_from_the_teachers_answers_on_a_gguf_teacher(
    tmp_path, capsys, monkeypatch
):
    """examples/recipes/distill_chat_sequence_level.yaml as shipped (a generate stage with a top-k cache, a distill
    stage reading it), a few steps on a tiny GGUF teacher: the plan shows the generate stage, the distill stage
    trains on the teacher's answers without loading the teacher; `hf-lite distill --sequence_level` does the same
    with the teacher in memory."""
    import datasets

    from hf_lite.app import runner
    from tests.gguf_writer import save_tiny_gguf

    gguf = tmp_path / "teacher.gguf"
    save_tiny_gguf(gguf)
    raw = yaml.safe_load((ROOT / "examples/recipes/distill_chat_sequence_level.yaml").read_text())
    raw["data"]["train"] = str(ROOT / raw["data"]["train"])
    raw["stages"] = [st for st in raw["stages"] if st["type"] not in ("export", "evaluate")]
    recipe = tmp_path / "seq.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    common = ["--teacher", str(gguf), "--output_dir", str(out), "--answers.max_new_tokens", "4"]
    common += [
        "--distill.max_steps",
        "2",
        "--distill.per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
    ]
    assert main(["plan", str(recipe), *common]) == 0
    printed = capsys.readouterr().out
    assert "data format: messages (data.data_format); the loss counts the assistant turns" in printed
    assert (
        "- answers (generate): teacher completes the train and eval prompts, greedy, at most 4 new tokens after at "
        "most 252 prompt tokens, with its top-16 log-probabilities at temperature 1.0; read by distill"
    ) in printed
    assert "+ no teacher (top-k cache of answers), trains on the teacher completions of answers" in printed

    def no_teacher(*args, **kwargs):
        raise AssertionError("the distill stage loaded a teacher")

    monkeypatch.setattr(runner, "load_teacher", no_teacher)  # the generate stage loads its own
    assert main(["run", str(recipe), *common]) == 0
    info = json.loads((out / "answers" / "stage.json").read_text())
    answers = datasets.load_from_disk(str(out / "answers" / "train"))
    assert info["train_rows"] == len(answers) == 57 and info["eval_rows"] == 7  # 64 rows, eval_fraction 0.1
    assert all(1 <= len(ids) <= 4 for ids in answers["completion_ids"])
    assert answers[0]["input_ids"] == answers[0]["prompt_ids"] + answers[0]["completion_ids"]
    assert info["train_completion_tokens"] == sum(len(ids) for ids in answers["completion_ids"])
    logs = json.loads(next((out / "distill").rglob("trainer_state.json")).read_text())["log_history"]
    assert sum("loss_kd" in e for e in logs) == 2
    monkeypatch.undo()

    cli = tmp_path / "cli"
    argv = ["distill", "--task", "causal-lm", "--teacher", str(gguf), "--data", raw["data"]["train"]]
    argv += [
        "--data_format",
        "messages",
        "--sequence_level",
        "--output_dir",
        str(cli),
        "--generate.max_new_tokens",
    ]
    argv += ["4", "--max_steps", "1", "--per_device_train_batch_size", "2", "--temperature", "1.0"]
    argv += ["--evaluate.latency_repeats", "1"]
    assert main(argv) == 0
    stages = [
        json.loads((cli / s / "stage.json").read_text())["type"] for s in ("student", "generate", "distill")
    ]
    assert stages == ["init_student", "generate", "distill"]
    assert (cli / "distill" / "model" / "model.safetensors").is_file()
