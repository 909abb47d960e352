"""hf_lite.loading on tiny checkpoints saved to a temp folder (the same from_pretrained path as a Hub id)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BitsAndBytesConfig,
    Trainer,
    TrainingArguments,
)

import hf_lite
from hf_lite import load_model, load_teacher, load_tokenizer, model_summary
from hf_lite.loading import resolve_dtype, resolve_peft_config, resolve_quantization
from hf_lite.tasks import normalize_task

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _batch(tokenizer, n: int = 4, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(tokenizer), (n, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# ---------------------------------------------------------------------------------------------- import


def test_import_does_not_load_torch_or_transformers():
    code = "import sys, hf_lite, trainers; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_attributes_resolve_and_unknown_names_raise():
    assert hf_lite.load_model is load_model
    assert hf_lite.losses.forward_kl_loss is not None and "pruning" in dir(hf_lite)
    assert "load_model" in dir(hf_lite)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hf_lite.nope  # noqa: B018


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("name", "task", "cls_name"),
    [
        ("llama", "causal-lm", "LlamaForCausalLM"),
        ("gpt2", "causal-lm", "GPT2LMHeadModel"),
        ("bert", "sequence-classification", "BertForSequenceClassification"),
        ("bert", "token-classification", "BertForTokenClassification"),
        ("bert", "base", "BertModel"),
        ("t5", "seq2seq-lm", "T5ForConditionalGeneration"),
    ],
)
def test_load_model_each_family_matches_stock_from_pretrained(tiny_checkpoints, name, task, cls_name):
    import transformers

    from hf_lite.tasks import TASKS

    model = load_model(tiny_checkpoints[name], task, dtype="float32")
    assert type(model).__name__ == cls_name
    reference = getattr(transformers, TASKS[task]).from_pretrained(tiny_checkpoints[name])
    ref_state = reference.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], rtol=0, atol=0)


def test_llama_fixture_uses_grouped_query_attention(tiny_checkpoints):
    model = load_model(tiny_checkpoints["llama"])
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert model.model.layers[0].self_attn.k_proj.out_features == cfg.num_key_value_heads * cfg.head_dim


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_load_wraps_linear_layers_and_keeps_logical_parameter_count(tiny_checkpoints, bits):
    full = load_model(tiny_checkpoints["llama"], dtype="float32")
    quant = load_model(tiny_checkpoints["llama"], quantization=bits)
    cls = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    wrapped = [n for n, m in quant.named_modules() if isinstance(m, cls)]
    assert len(wrapped) == 7 * full.config.num_hidden_layers  # every projection; lm_head stays full precision
    assert not isinstance(quant.lm_head, cls)
    s_full, s_quant = model_summary(full), model_summary(quant)
    assert s_quant.total_params == s_full.total_params
    assert s_quant.bytes_in_memory < s_full.bytes_in_memory
    assert s_quant.quantization.startswith("bnb-4bit" if bits == "4bit" else "bnb-8bit")
    # The quantized model still computes nearly the same function.
    batch = _batch(load_tokenizer(tiny_checkpoints["llama"]))
    with torch.no_grad():  # (on a GPU machine the quantized model sits on the GPU)
        a = full(**batch).logits
        b = quant(**{k: v.to(quant.device) for k, v in batch.items()}).logits.float().cpu()
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95


def test_quantized_classifier_keeps_head_trainable(tiny_checkpoints):
    model = load_model(tiny_checkpoints["bert"], "sequence-classification", quantization="4bit", peft="lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "classifier" in n for n in trainable)
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert isinstance(head, torch.nn.Linear) and not isinstance(head, bnb.nn.Linear4bit)


# ------------------------------------------------------------------------------------- QLoRA training


def _train(model, tokenizer, tmp_path, steps: int = 25, lr: float = 1e-2) -> list[float]:
    """Fit 8 counting sequences (token t+1 follows token t); returns the logged training losses."""
    from datasets import Dataset

    starts = torch.arange(8).unsqueeze(1) * 7
    ids = 5 + (starts + torch.arange(16)) % (len(tokenizer) - 5)  # (8, 16)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        lr_scheduler_type="constant",
        use_cpu=not torch.cuda.is_available(),  # a quantized model is placed on the GPU when there is one
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.integration
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_only_the_adapter_and_loss_goes_down(tiny_checkpoints, tmp_path, bits):
    tokenizer = load_tokenizer(tiny_checkpoints["llama"])
    model = load_model(
        tiny_checkpoints["llama"],
        quantization=bits,
        peft=LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_TARGETS, lora_dropout=0.0),
    )
    assert isinstance(model, PeftModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    cls = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    base_before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, cls)}
    assert len(base_before) == 14

    losses = _train(model, tokenizer, tmp_path)
    assert len(losses) == 25 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    # The quantized base is untouched: still bnb modules with the same packed weights.
    for n, m in model.named_modules():
        if n in base_before:
            assert isinstance(m, cls)
            assert m.weight.dtype == (torch.uint8 if bits == "4bit" else torch.int8)
            assert torch.equal(m.weight, base_before[n])


@pytest.mark.integration
def test_merged_lora_gives_the_same_logits_as_the_adapter(tiny_checkpoints, tmp_path):
    tokenizer = load_tokenizer(tiny_checkpoints["llama"])
    model = load_model(
        tiny_checkpoints["llama"], dtype="float32", peft={"r": 8, "target_modules": "all-linear"}
    )
    _train(model, tokenizer, tmp_path, steps=5)
    model.eval()
    batch = {
        k: v.to(model.device) for k, v in _batch(tokenizer).items()
    }  # the Trainer may have moved it to a GPU
    with torch.no_grad():
        adapted = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(**batch).logits
    assert not isinstance(merged_model, PeftModel)
    assert (adapted - base).abs().max() > 1e-3  # the adapter changed the function...
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)  # ...and merging keeps it


@pytest.mark.integration
def test_gradient_checkpointing_with_qlora_still_trains(tiny_checkpoints, tmp_path):
    tokenizer = load_tokenizer(tiny_checkpoints["gpt2"])
    model = load_model(
        tiny_checkpoints["gpt2"], quantization="4bit", peft="lora", gradient_checkpointing=True
    )
    inner = model.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    losses = _train(model, tokenizer, tmp_path, steps=8)
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------------------------- teacher


def test_load_teacher_freezes_and_disables_dropout(tiny_checkpoints):
    teacher = load_teacher(tiny_checkpoints["bert"], "sequence-classification")
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    dropouts = [m for m in teacher.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    # Even switched to train mode by someone else, the teacher's outputs stay deterministic.
    teacher.train()
    batch = _batch(load_tokenizer(tiny_checkpoints["bert"]))
    with torch.no_grad():
        torch.testing.assert_close(teacher(**batch).logits, teacher(**batch).logits, rtol=0, atol=0)


def test_load_teacher_accepts_a_model_object_and_8bit(tiny_checkpoints):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoints["bert"])
    model.train()
    assert load_teacher(model) is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    quant = load_teacher(tiny_checkpoints["llama"], quantization="8bit")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in quant.modules())
    assert not any(p.requires_grad for p in quant.parameters())


def test_load_teacher_rejects_loading_options_with_a_model_object(tiny_checkpoints):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    with pytest.raises(ValueError, match=r"got a model object and loading options \['quantization'\]"):
        load_teacher(model, quantization="4bit")


# ------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_gets_a_pad_token(tiny_checkpoints):
    gpt = load_tokenizer(tiny_checkpoints["gpt2"])
    assert gpt.pad_token is not None and gpt.pad_token == gpt.eos_token
    padded = gpt(["the cat", "the big red dog runs"], padding=True, return_tensors="pt")
    assert padded["attention_mask"].sum().item() == 2 + 5
    bert = load_tokenizer(tiny_checkpoints["bert"], padding_side="left")
    assert bert.pad_token == "[PAD]" and bert.padding_side == "left"


def test_tokenizer_without_pad_or_eos_gets_a_new_pad_token(tmp_path, caplog):
    from hf_lite.testing import build_tokenizer

    tok = build_tokenizer(style="gpt")
    tok.eos_token = None
    tok.bos_token = None
    tok.save_pretrained(tmp_path)
    # A folder with only tokenizer files is a valid tokenizer source.
    with caplog.at_level(logging.WARNING, logger="hf_lite.loading"):
        loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == "<pad>" and len(loaded) == len(tok) + 1
    assert "resize_token_embeddings" in caplog.text


# --------------------------------------------------------------------------------------------- summary


def test_summary_counts_adapter_parameters(tiny_checkpoints):
    model = load_model(tiny_checkpoints["llama"], peft=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    summary = model_summary(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    q_out = model.config.num_attention_heads * model.config.head_dim
    v_out = model.config.num_key_value_heads * model.config.head_dim
    assert lora == layers * 4 * ((hidden + q_out) + (hidden + v_out))  # r*(in+out) per adapted layer
    assert summary.trainable_params == lora
    assert summary.adapter == "LORA r=4 on q_proj, v_proj"
    assert summary.to_dict()["model_class"] == "LlamaForCausalLM"
    assert "trainable" in str(summary)


# ----------------------------------------------------------------------------------------- bad input


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match=r"task='causal-llm'.*did you mean 'causal-lm'.*Use one of"):
        normalize_task("causal-llm")
    with pytest.raises(TypeError, match="task must be a string"):
        normalize_task(3)
    assert normalize_task("Text_Generation") == "causal-lm"


def test_task_the_architecture_lacks(tiny_checkpoints):
    with pytest.raises(
        ValueError, match=r"task='seq2seq-lm' is not available for model_type='bert'.*supports:"
    ):
        load_model(tiny_checkpoints["bert"], "seq2seq-lm")


def test_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"looks like a local path but does not exist"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer("./models/not-here")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ValueError, match="folder without config.json"):
        load_model(tmp_path / "weights")


def test_invalid_repo_id():
    with pytest.raises(ValueError, match="neither an existing folder nor a valid Hub repo id"):
        load_model("bad repo id!")


def test_uncached_repo_while_offline_says_offline(tmp_path):
    with pytest.raises(
        OSError, match=r"'someone/not-cached' is not in the local Hugging Face cache.*offline"
    ):
        load_model("someone/not-cached", cache_dir=str(tmp_path))


@pytest.mark.parametrize("value", ["3bit", "int16", "fp8"])
def test_quantization_value_not_understood(value):
    with pytest.raises(ValueError, match=rf"quantization='{value}' is not understood.*'4bit'"):
        resolve_quantization(value)


def test_quantization_wrong_type_and_bad_dict():
    with pytest.raises(TypeError, match="quantization must be None, '4bit'"):
        resolve_quantization(4)
    with pytest.raises(ValueError, match="not a valid BitsAndBytesConfig"):
        resolve_quantization({"load_in_3bit": True})
    assert resolve_quantization({"load_in_4bit": True}).load_in_4bit
    cfg = resolve_quantization("4bit")
    assert cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    # fp32 without a GPU (bf16 matmuls would be slow on the CPU), bf16 with one
    assert cfg.bnb_4bit_compute_dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def test_missing_bitsandbytes_gives_the_install_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'bitsandbytes"):
        resolve_quantization("8bit")


def test_quantization_that_wraps_no_layer(tiny_checkpoints):
    skip_all = BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["model", "lm_head"])
    with pytest.raises(
        ValueError, match=r"bitsandbytes quantized no layer of LlamaForCausalLM.*without quantization"
    ):
        load_model(tiny_checkpoints["llama"], quantization=skip_all)


def test_peft_targets_that_match_nothing_list_the_real_layers(tiny_checkpoints):
    with pytest.raises(ValueError, match=r"target_modules=\['query_key_value'\] match no module.*q_proj"):
        load_model(tiny_checkpoints["llama"], peft={"target_modules": ["query_key_value"]})


def test_bad_peft_values():
    with pytest.raises(ValueError, match="peft='qlora' is not a known shorthand"):
        resolve_peft_config("qlora", "causal-lm")
    with pytest.raises(ValueError, match="not a valid adapter config"):
        resolve_peft_config({"rank": 8}, "causal-lm")
    with pytest.raises(TypeError, match="peft must be None, 'lora'"):
        resolve_peft_config(8, "causal-lm")
    given = LoraConfig(r=2)
    resolved = resolve_peft_config(given, "sequence-classification")
    assert resolved.task_type == "SEQ_CLS" and given.task_type is None  # the caller's object is not changed


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype='int8' is not a floating point dtype"):
        resolve_dtype("int8")
    with pytest.raises(TypeError, match="dtype must be"):
        resolve_dtype(16)
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("auto") == "auto"


def test_remote_code_needs_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "my-own-arch",
                "auto_map": {
                    "AutoConfig": "configuration_mine.MyConfig",
                    "AutoModelForCausalLM": "modeling_mine.MyModel",
                },
            }
        )
    )
    with pytest.raises(
        ValueError, match=r"ships its own model code.*trust_remote_code=True only after reading"
    ):
        load_model(tmp_path)


def test_unknown_architecture_without_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "from-the-future"}))
    with pytest.raises(ValueError, match=r"model_type='from-the-future', unknown to transformers.*Upgrade"):
        load_model(tmp_path)


def test_bad_padding_side_and_gradient_checkpointing_type(tiny_checkpoints):
    with pytest.raises(ValueError, match="padding_side='middle'"):
        load_tokenizer(tiny_checkpoints["gpt2"], padding_side="middle")
    with pytest.raises(TypeError, match="gradient_checkpointing must be True or False"):
        load_model(tiny_checkpoints["gpt2"], gradient_checkpointing="yes")


def test_name_of_the_wrong_type_and_a_file_instead_of_a_folder(tiny_checkpoints):
    with pytest.raises(TypeError, match="name_or_path must be a Hub repo id or a folder path"):
        load_model(42)
    with pytest.raises(ValueError, match=r"is a file; pass the checkpoint folder"):
        load_model(f"{tiny_checkpoints['llama']}/config.json")


def test_public_functions_are_not_shadowed_by_submodules():
    import hf_lite.exporting.writer  # noqa: F401  (importing a submodule must not replace the function)

    assert callable(hf_lite.export) and hf_lite.export.__name__ == "export"
    assert hf_lite.push_to_hub.__name__ == "push_to_hub"


@pytest.mark.parametrize("peft", [None, "lora"])
def test_gradient_checkpointing_without_quantization(tiny_checkpoints, peft):
    model = load_model(tiny_checkpoints["llama"], dtype="float32", peft=peft, gradient_checkpointing=True)
    inner = model.get_base_model() if peft else model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    batch = _batch(load_tokenizer(tiny_checkpoints["llama"]))
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
