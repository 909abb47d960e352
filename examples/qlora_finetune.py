"""QLoRA fine-tuning of a causal LM on a text file: 4-bit NF4 base + LoRA adapter, trained by `FinetuneTrainer`
(a transformers.Trainer whose loss is the global-batch mean under DDP and gradient accumulation).

Every field of `ScriptArguments` and of `transformers.TrainingArguments` is a command-line flag
(HfArgumentParser). One process:

    python examples/qlora_finetune.py --model_name_or_path Qwen/Qwen2.5-0.5B \
        --train_file ../shared/data/tinyshakespeare/input.txt --output_dir qlora-out --max_steps 200

Several processes (DDP; on GPUs, or on CPU with gloo -- then add --use_cpu, or the script stops and says so):

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/qlora_finetune.py ... (same flags)
    accelerate launch --multi_gpu --num_processes 2 examples/qlora_finetune.py ... --use_cpu    # CPU only

Only the adapter is saved (a few MB); load it back with
`peft.AutoPeftModelForCausalLM.from_pretrained(output_dir)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# hf-lite first: it puts its filters on bitsandbytes' loggers before transformers imports bitsandbytes
from hf_lite import load_model, load_tokenizer, model_summary

# isort: split
from transformers import DataCollatorForLanguageModeling, HfArgumentParser, TrainingArguments, set_seed

from trainers import FinetuneTrainer, check_distributed_launch


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub repo id or local checkpoint folder."})
    train_file: str = field(metadata={"help": "Plain-text training file (one document per line)."})
    quantization: str | None = field(default="4bit", metadata={"help": "'4bit', '8bit' or 'none'."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share of lines held out for evaluation."}
    )


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, TrainingArguments)).parse_args_into_dataclasses()
    try:
        check_distributed_launch(args)  # e.g. `accelerate launch --multi_gpu` on CPU without --use_cpu
    except ValueError as err:
        raise SystemExit(f"qlora_finetune.py: error: {err}") from None
    from datasets import load_dataset

    quantization = None if (script.quantization or "none").lower() == "none" else script.quantization
    set_seed(
        args.seed
    )  # the adapter's random initialisation: the same in every run, whatever the process count
    try:  # a checkpoint that cannot be loaded this way (e.g. an encoder without LM head, 4-bit) says why
        tokenizer = load_tokenizer(script.model_name_or_path)
        model = load_model(
            script.model_name_or_path,
            task="causal-lm",
            quantization=quantization,
            peft={"r": script.lora_r, "lora_alpha": script.lora_alpha, "target_modules": "all-linear"},
            gradient_checkpointing=args.gradient_checkpointing,
        )
    except (ValueError, TypeError, OSError, ImportError) as err:
        raise SystemExit(f"qlora_finetune.py: error: {err}") from None
    if args.process_index == 0:
        print(f"{model_summary(model)}; world_size={args.world_size}", flush=True)

    raw = load_dataset("text", data_files={"train": script.train_file})["train"]
    raw = raw.filter(lambda row: row["text"].strip() != "")
    split = raw.train_test_split(test_size=script.validation_fraction, seed=args.seed)

    def tokenize_and_chunk(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = [tok for text in batch["text"] for tok in tokenizer(text + "\n")["input_ids"]]
        n = len(ids) // script.block_size * script.block_size
        return {"input_ids": [ids[i : i + script.block_size] for i in range(0, n, script.block_size)]}

    with args.main_process_first(desc="tokenizing"):
        data = split.map(tokenize_and_chunk, batched=True, remove_columns=["text"])

    trainer = FinetuneTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_model()  # the adapter (and tokenizer) only, written by the main process
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # leave the process group together (no rank exits mid-collective)


if __name__ == "__main__":
    main()
