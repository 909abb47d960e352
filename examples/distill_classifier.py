"""Distil a fine-tuned encoder classifier into a student made of half its layers (DistilBERT's recipe).

Every field of `ScriptArguments` and of `trainers.DistillationConfig` (TrainingArguments plus temperature,
alpha, loss_type, hidden_weight, layer_map, ...) is a command-line flag (HfArgumentParser). One process:

    python examples/distill_classifier.py --teacher my-org/minilm-sst2 \
        --train_file ../shared/data/sst2/train.tsv --eval_file ../shared/data/sst2/dev.tsv \
        --output_dir distilled --num_train_epochs 1 --temperature 2 --alpha 0.5 --hidden_weight 1

Several processes (see examples/accelerate/ for DDP, FSDP, DeepSpeed configs; on CPU add --use_cpu, or the
script stops and says so):

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/distill_classifier.py ...

The student is saved as an ordinary checkpoint (the hidden-state projections beside it, in
distillation_projections.safetensors); load it with AutoModelForSequenceClassification.from_pretrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import DataCollatorWithPadding, HfArgumentParser

from hf_lite import init_student_from_teacher, load_data, load_teacher, load_tokenizer, tokenize_data
from hf_lite.evaluation import make_compute_metrics
from trainers import DistillationConfig, DistillationTrainer, check_distributed_launch


@dataclass
class ScriptArguments:
    teacher: str = field(metadata={"help": "Fine-tuned teacher classifier: Hub repo id or local folder."})
    train_file: str = field(
        metadata={"help": "Training data (csv/tsv/json/jsonl/parquet) or a Hub dataset id."}
    )
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation data (default: 10% of train)."})
    text_column: str = field(default="sentence", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class id."})
    student_layers: str = field(
        default="every_other", metadata={"help": "'every_other' or indices like '0,2,4'."}
    )
    max_length: int = field(default=64, metadata={"help": "Tokens per example."})


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DistillationConfig)).parse_args_into_dataclasses()
    try:
        check_distributed_launch(args)  # e.g. `accelerate launch --multi_gpu` on CPU without --use_cpu
    except ValueError as err:
        raise SystemExit(f"distill_classifier.py: error: {err}") from None
    tokenizer = load_tokenizer(script.teacher)
    teacher = load_teacher(script.teacher, task="sequence-classification")
    layers = script.student_layers
    student = init_student_from_teacher(
        teacher, layers if layers == "every_other" else [int(i) for i in layers.split(",")]
    )
    source = (
        script.train_file
        if script.eval_file is None
        else {"train": script.train_file, "eval": script.eval_file}
    )
    columns = {"text": script.text_column, "label": script.label_column}
    with args.main_process_first(desc="loading and tokenizing"):
        data = tokenize_data(
            load_data(source, columns=columns, seed=args.seed),
            tokenizer,
            task="sequence-classification",
            max_length=script.max_length,
        )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_model()
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
