"""The ``hf-lite`` command: run a YAML recipe, one stage at a time, or the offline demo.

Subcommands: ``run``, ``plan``, ``distill``, ``finetune``, ``prune``, ``evaluate``, ``export``, ``push``,
``demo``. Every ``--key value`` after the known options overrides the recipe: a top-level key (``--seed 1``),
a data key (``--data.max_length 64``), a stage's training argument or option (``--distill.learning_rate 3e-5``,
``--teacher-ft.max_steps 5``: stage names as the recipe writes them), or a training argument of every training
stage that has it (``--max_steps 100``); an override that would not take effect is an error with a did-you-mean
(:mod:`hf_lite.app.overrides`). ``run`` and ``plan`` check every stage's arguments before anything runs. The same command runs under
``accelerate launch -m hf_lite ...`` on several processes.

>>> main(["plan", "examples/recipes/distill_encoder.yaml"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from hf_lite import __version__
from hf_lite.app.recipe import Recipe, parse_cli_overrides
from hf_lite.logs import install_log_filters

# The commands' modules (demo, plan, runner, hub) import the toolkit, which imports torch and transformers
# (seconds): they are imported in `_main` when a command needs them, so `--help`, `--version` and recipe
# errors answer at once.


OVERRIDES_HELP = """\
overrides: any further --KEY VALUE (or --KEY=VALUE) pairs change the recipe before it is checked:
  --seed 1                          a top-level key (seed, output_dir, teacher, task, num_labels, name)
  --data.max_length 64              a data key
  --distill.learning_rate 3e-5      a training argument of one stage (stage names as written: --teacher-ft.max_steps 5)
  --int8.bits 4                     an option of one stage
  --distill.pruning.end_step 200    an entry of a stage option that is a mapping
  --max_steps 100                   a training argument of every training stage that has it
Values are read as YAML scalars. An override that would not take effect is an error with a did-you-mean.
A stage whose settings changed reruns from scratch, and so does every stage after it."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-lite",
        description="Make Hugging Face Hub checkpoints lighter to fine-tune and to serve.",
        epilog="Extra --key value pairs override the recipe (see `hf-lite run --help`).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"hf-lite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # allow_abbrev=False everywhere: an override such as --eval 3 must not be taken for --eval_data
    formatted = {"epilog": OVERRIDES_HELP, "formatter_class": argparse.RawDescriptionHelpFormatter}

    run = sub.add_parser(
        "run", help="run (or resume) every stage of a YAML recipe", allow_abbrev=False, **formatted
    )
    run.add_argument("recipe", help="path of the YAML recipe")
    run.add_argument("--stage", action="append", dest="stages", help="run only this stage (repeatable)")

    plan = sub.add_parser(
        "plan",
        help="validate a recipe, resolve models and data, print sizes; no training",
        description="Check everything `run` would check (recipe keys, overrides, every stage's training "
        "arguments, models, data) and print what each stage would do, without training or writing anything.",
        allow_abbrev=False,
        **formatted,
    )
    plan.add_argument("recipe", help="path of the YAML recipe")

    for name, help_text in (
        (
            "distill",
            "distil a teacher into a student (initialised from the teacher's layers unless --student)",
        ),
        ("finetune", "fine-tune a model, optionally 4/8-bit with a LoRA adapter (QLoRA)"),
        ("prune", "prune a model one-shot (magnitude, wanda, sparsegpt, ffn, heads, layers)"),
        ("evaluate", "measure task metric, size and latency of models"),
        ("export", "export a model as an ordinary checkpoint folder (adapters merged, pruning permanent)"),
    ):
        p = sub.add_parser(name, help=help_text, allow_abbrev=False, **formatted)
        p.add_argument(
            "--model", required=name != "distill", help="Hub id or folder (the teacher for distill)"
        )
        p.add_argument("--task", default="sequence-classification" if name != "export" else "causal-lm")
        p.add_argument("--output_dir", required=True, help="run folder")
        if name != "export":
            p.add_argument(
                "--data", required=True, help="training/eval data: a file, folder or Hub dataset id"
            )
            p.add_argument("--eval_data", default=None, help="evaluation data (default: a split of --data)")
            p.add_argument(
                "--text_column",
                default=None,
                help="text column (default: 'text'/'sentence'/...; chat data: 'messages' or 'prompt'/'completion')",
            )
            p.add_argument(
                "--label_column",
                default=None,
                help="label column (default: 'label'/'labels' when the data has one)",
            )
            p.add_argument(
                "--data_format",
                default="auto",
                help="causal-lm data: text, prompt-completion, prompt or messages (default: auto, from the columns); "
                "--data.completion_only_loss false / --data.assistant_only_loss false make every token count",
            )
        if name == "distill":
            p.add_argument("--teacher", required=True, help="teacher Hub id or folder")
            p.add_argument(
                "--student", default=None, help="student Hub id or folder (default: teacher layers)"
            )
            p.add_argument(
                "--student_layers",
                default="every_other",
                type=_layers,
                help="teacher layers the student keeps: every_other, a number (2) or indices ([0, 3])",
            )
            p.add_argument(
                "--sequence_level",
                action="store_true",
                help="sequence-level KD: the teacher first completes the data's prompts (a 'generate' stage: "
                "--generate.max_new_tokens 64, --generate.topk 16, ...), the student then trains on its completions",
            )
        if name == "finetune":
            p.add_argument("--peft", default=None, help="'lora' for a default LoRA adapter")
            p.add_argument("--quantization", default=None, help="'4bit' or '8bit'")
        if name == "prune":
            p.add_argument("--method", required=True)
            p.add_argument("--sparsity", type=float, default=None)
            p.add_argument("--pattern", default="unstructured")
            p.add_argument("--keep_ratio", type=float, default=None)
        if name == "export":
            p.add_argument("--merge_adapter", action="store_true")
            p.add_argument("--dtype", default=None)

    push = sub.add_parser(
        "push", help="push an exported folder to the Hub with a model card", allow_abbrev=False
    )
    push.add_argument("folder")
    push.add_argument("--repo_id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None)
    push.add_argument("--create_pr", action="store_true")
    push.add_argument("--commit_message", default=None)

    demo = sub.add_parser(
        "demo",
        allow_abbrev=False,
        help="run the whole pipeline offline on an embedded default (CPU, a few minutes)",
        description="Train a teacher on generated data, then distil, prune, quantize, evaluate and export a student, "
        "and print the compression report. With --teacher and --dataset, the same pipeline on a real model.",
    )
    demo.add_argument(
        "--output_dir", "--output-dir", default="hf-lite-demo", help="run folder (default: %(default)s)"
    )
    demo.add_argument("--teacher", default=None, help="Hub id or folder of a real causal LM teacher")
    demo.add_argument("--dataset", default=None, help="text file / Hub dataset id to use with --teacher")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="fewer steps (tests, smoke runs)")
    return parser


def _layers(value: str) -> str | int | list[int]:
    """``--student_layers``: ``every_other``, a number of layers (``2``) or a list of indices (``[0, 3]``)."""
    parsed = yaml.safe_load(value)
    return parsed if isinstance(parsed, (int, list)) and not isinstance(parsed, bool) else value


def _single_stage_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe a one-stage subcommand stands for (followed by an evaluate stage where it makes sense)."""
    data = None
    if getattr(args, "data", None):
        data = {
            "train": args.data,
            "eval": args.eval_data,
            # no column given: load_data finds text (and label) columns, or chat data's messages/prompt/completion
            "columns": {
                **({"text": args.text_column or "text"} if args.text_column or args.label_column else {}),
                **({"label": args.label_column} if args.label_column else {}),
            },
            **({"data_format": args.data_format} if args.data_format != "auto" else {}),
        }
    teacher = args.teacher if args.command == "distill" else args.model
    stages: list[dict[str, Any]]
    if args.command == "distill":
        student = args.student
        stages = []
        if student is None:
            stages.append(
                {"name": "student", "type": "init_student", "model": "teacher", "layers": args.student_layers}
            )
            student = "student"
        distill = {"name": "distill", "type": "distill", "model": student, "teacher": "teacher"}
        if args.sequence_level:
            stages.append({"name": "generate", "type": "generate", "model": "teacher", "max_new_tokens": 64})
            distill["data"] = "generate"
        stages += [
            distill,
            {"name": "evaluate", "type": "evaluate", "models": ["teacher", "distill"]},
        ]
    elif args.command == "finetune":
        stages = [
            {
                "name": "finetune",
                "type": "finetune",
                "model": "teacher",
                "peft": args.peft,
                "quantization": args.quantization,
            }
        ]
    elif args.command == "prune":
        stage = {
            "name": "prune",
            "type": "prune",
            "model": "teacher",
            "method": args.method,
            "pattern": args.pattern,
        }
        if args.sparsity is not None:
            stage["sparsity"] = args.sparsity
        if args.keep_ratio is not None:
            stage["keep_ratio"] = args.keep_ratio
        stages = [stage, {"name": "evaluate", "type": "evaluate", "models": ["teacher", "prune"]}]
    elif args.command == "evaluate":
        stages = [{"name": "evaluate", "type": "evaluate", "models": ["teacher"]}]
    else:  # export
        stages = [
            {
                "name": "export",
                "type": "export",
                "model": "teacher",
                "merge_adapter": args.merge_adapter,
                "dtype": args.dtype,
            }
        ]
    return {
        "name": args.command,
        "task": args.task,
        "teacher": teacher,
        "output_dir": args.output_dir,
        "data": data,
        "stages": stages,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the command; bad input (a recipe error, a missing file, a model that cannot be resolved, e.g. offline)
    prints ``hf-lite: error: ...`` and returns 2."""
    try:
        return _main(argv)
    except (ValueError, TypeError, OSError) as err:
        print(f"hf-lite: error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    install_log_filters()  # bitsandbytes' repeated warnings once, before any command imports it
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(extra)
    except ValueError as err:
        parser.error(str(err))
    if args.command == "demo":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        from hf_lite.app.demo import run_demo

        run_demo(
            args.output_dir, teacher=args.teacher, dataset=args.dataset, seed=args.seed, quick=args.quick
        )
        return 0
    if args.command == "push":
        from hf_lite.hub import push_to_hub

        result = push_to_hub(
            args.folder,
            args.repo_id,
            private=args.private or None,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
        )
        print(result)
        return 0
    if args.command in ("run", "plan"):
        recipe = Recipe.from_yaml(args.recipe, overrides)
    else:
        recipe = Recipe.from_dict(_single_stage_recipe(args), overrides)
    if args.command == "plan":
        from hf_lite.app.plan import plan_recipe

        print(plan_recipe(recipe))
        return 0
    from hf_lite.app.runner import run_recipe

    run_recipe(recipe, stages=getattr(args, "stages", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
