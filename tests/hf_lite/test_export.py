"""hf_lite.exporting.writer: atomic checkpoint export (adapters merged or separate, bnb 4/8-bit, pruning made permanent)
checked by reloading with stock transformers / PEFT. Tiny checkpoints, everything under tmp_path."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from hf_lite import load_model, load_tokenizer
from hf_lite._utils import is_hub_id
from hf_lite.exporting import (
    ExportReport,
    default_check_inputs,
    export,
    unpack_bnb_cpu_weights_,
)

# bitsandbytes on CPU warns about casting inputs to fp16 for int8 matmuls and about optional kernels.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IDS = torch.tensor([[1, 5, 9, 3, 7, 11, 2, 4], [6, 8, 10, 12, 14, 16, 18, 20]])


def _logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()
    model.train(was_training)
    return out


def _lora(seed: int = 0) -> LoraConfig:
    torch.manual_seed(seed)
    # Random B as well as A (init_lora_weights=False): the adapter changes the outputs, so merging is tested.
    return LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )


def _keys(folder, name: str = "model.safetensors") -> dict[str, str]:
    with safe_open(folder / name, "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def _siblings(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith((".tmp-", ".old-")))


# ------------------------------------------------------------------------------------------- full precision


def test_plain_export_is_a_stock_checkpoint_with_tokenizer(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["llama"], dtype="float32")
    tokenizer = load_tokenizer(tiny_checkpoints["llama"])
    out = tmp_path / "out"
    report = export(model, out, tokenizer=tokenizer)

    assert isinstance(report, ExportReport) and report.kind == "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        report.files
    )
    assert (
        report.max_abs_diff == 0.0 and report.check_output == "logits" and report.check_inputs_shape == (2, 8)
    )
    assert report.parameters == sum(p.numel() for p in model.parameters())
    assert report.bytes_on_disk == (out / "model.safetensors").stat().st_size
    assert report.dtype == "float32" and report.quantization is None and report.sparsity is None
    assert report.base_model is None  # loaded from a local folder: no Hub id to name
    assert _siblings(out) == []  # the temporary folder was renamed, nothing left beside it
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(_logits(reloaded), _logits(model))
    assert AutoTokenizer.from_pretrained(out)("the cat")["input_ids"] == tokenizer("the cat")["input_ids"]
    assert json.dumps(report.to_dict())  # JSON-serializable


@pytest.mark.parametrize(
    ("name", "task", "output"),
    [
        ("gpt2", "causal-lm", "logits"),
        ("bert", "sequence-classification", "logits"),
        ("t5", "seq2seq-lm", "logits"),
    ],
)
def test_other_families_reload_identically(tiny_checkpoints, tmp_path, name, task, output):
    model = load_model(tiny_checkpoints[name], task, dtype="float32")
    report = export(model, tmp_path / name)  # T5: the default check inputs include decoder_input_ids
    assert report.max_abs_diff == 0.0 and report.check_output == output


def test_overwrite_is_refused_then_atomic_and_a_failed_check_leaves_the_old_folder(
    tiny_checkpoints, tmp_path
):
    model = load_model(tiny_checkpoints["llama"], dtype="float32")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export\n")
    with pytest.raises(ValueError, match="exists and is not empty. Pass overwrite=True"):
        export(model, out)
    assert (out / "old.txt").exists()

    # A check that cannot pass (bf16 rounding vs atol 0): nothing is written, the previous folder is intact.
    with pytest.raises(RuntimeError, match=r"export check failed: .* > check_atol=0"):
        export(model, out, dtype="bfloat16", overwrite=True, check_atol=0.0)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"] and _siblings(out) == []

    report = export(model, out, overwrite=True, check_atol=0.0)
    assert "old.txt" not in report.files and not (out / "old.txt").exists() and _siblings(out) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(model, empty, check=False).max_abs_diff is None  # an empty folder is fine without overwrite


def test_pruning_is_made_permanent_on_a_copy(tiny_checkpoints, tmp_path):
    from torch.nn.utils import parametrize, prune

    class Mask(torch.nn.Module):
        def __init__(self, mask: torch.Tensor):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight * self.mask

    model = load_model(tiny_checkpoints["llama"], dtype="float32")
    up = model.model.layers[0].mlp.up_proj
    prune.l1_unstructured(up, "weight", amount=0.5)  # weight_orig + weight_mask + a forward pre-hook
    down = model.model.layers[1].mlp.down_proj
    parametrize.register_parametrization(down, "weight", Mask((down.weight.abs() > 0.01).float()))
    before = _logits(model)

    out = tmp_path / "pruned"
    report = export(model, out)
    keys = _keys(out)
    assert "model.layers.0.mlp.up_proj.weight" in keys and "model.layers.1.mlp.down_proj.weight" in keys
    assert not [k for k in keys if "orig" in k or "mask" in k or "parametrizations" in k]
    assert report.pruning_made_permanent == [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]
    assert report.max_abs_diff == 0.0
    assert report.sparsity is not None and report.sparsity > 0.05  # counted: half of one layer of 14 is zero
    with safe_open(out / "model.safetensors", "pt") as f:
        assert int((f.get_tensor("model.layers.0.mlp.up_proj.weight") == 0).sum()) == up.weight.numel() // 2

    # The in-memory model still carries its masks (it can keep training) and computes the same.
    assert hasattr(up, "weight_orig") and parametrize.is_parametrized(down)
    assert torch.equal(_logits(model), before)


def test_dtype_cast_on_a_copy(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["llama"], dtype="float32")
    report = export(model, tmp_path / "bf16", dtype="bf16")
    assert set(_keys(tmp_path / "bf16").values()) == {"BF16"}
    assert report.dtype == "bfloat16" and 0 < report.max_abs_diff < 0.05  # bf16 rounding of the weights
    assert model.dtype == torch.float32


# ------------------------------------------------------------------------------------------- adapters


def test_lora_separate_and_merged(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["llama"], dtype="float32", peft=_lora())
    adapted = _logits(model)

    sep = export(model, tmp_path / "adapter", base_model="test-org/tiny-base")
    assert sep.kind == "adapter" and not sep.adapter_merged and sep.max_abs_diff == 0.0
    assert sep.files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = (tmp_path / "adapter" / "README.md").read_text()  # hf-lite's card replaces PEFT's template
    assert (
        "library_name: peft" in card and str(tmp_path) not in card and tiny_checkpoints["llama"] not in card
    )
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (
        config["base_model_name_or_path"] == "test-org/tiny-base" and sep.base_model == "test-org/tiny-base"
    )
    assert sep.adapter.startswith("LORA r=4 on down_proj, q_proj, v_proj")

    merged = export(model, tmp_path / "merged", merge_adapter=True)
    assert merged.kind == "model" and merged.adapter_merged and merged.max_abs_diff < 1e-5
    assert "adapter_config.json" not in merged.files
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(reloaded), adapted, rtol=0, atol=1e-5)  # fp32 merge: rounding only

    # The in-memory model is still an unmerged PeftModel giving the same outputs.
    assert isinstance(model, PeftModel) and torch.equal(_logits(model), adapted)
    # The separate adapter loads with stock PEFT onto the base (here a local folder) too.
    config["base_model_name_or_path"] = tiny_checkpoints["llama"]
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    assert torch.equal(_logits(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")), adapted)


def test_lora_merged_onto_a_dequantized_4bit_base(tiny_checkpoints, tmp_path):
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    model = load_model(tiny_checkpoints["llama"], quantization="4bit", peft=_lora())
    report = export(model, tmp_path / "merged", merge_adapter=True)
    assert report.adapter_merged and report.dequantized_from == "bnb-4bit (nf4, double quant)"
    assert report.quantization is None and report.dtype == "float32"  # the base checkpoint's dtype
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    # Against the in-memory model (4-bit kernel: bf16 arithmetic on AVX512-BF16 CPUs) the logits agree to ~1e-3.
    assert report.max_abs_diff < 1e-2

    # The merge itself is exact w.r.t. the dequantized weights: rebuild one layer independently of hf-lite
    # from a freshly loaded 4-bit base (transformers' dequantization) and the adapter's A, B and scaling.
    fresh = load_model(tiny_checkpoints["llama"], quantization="4bit")
    q_fresh = fresh.model.layers[1].self_attn.q_proj
    lora = model.base_model.model.model.layers[1].self_attn.q_proj
    delta = lora.lora_B["default"].weight @ lora.lora_A["default"].weight * lora.scaling["default"]
    expected = (dequantize_bnb_weight(q_fresh.weight).float() + delta.detach()).cpu()
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
        saved = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
    torch.testing.assert_close(saved, expected, rtol=0, atol=1e-6)

    bf16 = export(model, tmp_path / "merged-bf16", merge_adapter=True, dtype="bfloat16")
    assert bf16.dtype == "bfloat16" and set(_keys(tmp_path / "merged-bf16").values()) == {"BF16"}


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_bnb_checkpoint_saved_as_is_reloads_exactly(tiny_checkpoints, tmp_path, bits):
    model = load_model(tiny_checkpoints["llama"], quantization=bits)
    before = _logits(model)  # a forward first: on AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights here
    report = export(model, tmp_path / bits)
    assert report.quantization.startswith(f"bnb-{bits}") and report.max_abs_diff == 0.0
    assert report.parameters == sum(p.numel() for p in load_model(tiny_checkpoints["llama"]).parameters())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / bits)
    cls = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    assert isinstance(reloaded.model.layers[0].mlp.down_proj, cls)
    assert torch.equal(_logits(reloaded), before) and torch.equal(_logits(model), before)

    dequantized = export(model, tmp_path / f"{bits}-float", dtype="float32")
    assert dequantized.quantization is None and dequantized.dequantized_from == report.quantization
    assert dequantized.max_abs_diff < 2e-2  # fp32 matmuls vs the bnb CPU kernels (bf16 / int8 activations)


def test_4bit_without_double_quant_survives_a_forward_before_saving(tiny_checkpoints, tmp_path):
    """bitsandbytes' own save of CPU-repacked weights writes the absmax transposed when it is not double
    quantized (down_proj, 128 inputs = 2 blocks, would be scrambled); export restores the layout first."""
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=False,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = load_model(tiny_checkpoints["llama"], quantization=quant)
    before = _logits(model)
    report = export(model, tmp_path / "nf4")
    assert report.max_abs_diff == 0.0
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "nf4")), before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes repacks 4-bit weights on the CPU only")
def test_unpack_bnb_cpu_weights_is_exact_and_restores_the_standard_layout(tiny_checkpoints):
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = load_model(tiny_checkpoints["llama"], quantization=quant)
    full = load_model(tiny_checkpoints["llama"], dtype="float32")
    before = _logits(model)
    layer = model.model.layers[0].mlp.down_proj
    packed = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)  # True on AVX512-BF16 CPUs
    assert unpack_bnb_cpu_weights_(model) == (14 if packed else 0)
    assert unpack_bnb_cpu_weights_(model) == 0  # idempotent
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    # The standard dequantization reads it right again: within 4-bit error of the original weights.
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert (weight.float() - full.model.layers[0].mlp.down_proj.weight).abs().max() < 0.05
    assert torch.equal(_logits(model), before)  # (this forward repacks it: bitsandbytes' CPU inference path)
    assert unpack_bnb_cpu_weights_(torch.nn.Linear(2, 2)) == 0


# ------------------------------------------------------------------------------------------- bad input


def test_bad_arguments_fail_early_with_clear_errors(tiny_checkpoints, tmp_path):
    plain = load_model(tiny_checkpoints["llama"], dtype="float32")
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"merge_adapter=True but the model \(LlamaForCausalLM\) has no adapter"
    ):
        export(plain, out, merge_adapter=True)
    with pytest.raises(TypeError, match="model must be a transformers PreTrainedModel or a peft.PeftModel"):
        export(torch.nn.Linear(2, 2), out)
    with pytest.raises(TypeError, match="output_dir must be a path"):
        export(plain, 123)
    with pytest.raises(TypeError, match="merge_adapter must be True or False"):
        export(plain, out, merge_adapter="yes")
    with pytest.raises(TypeError, match="tokenizer must be a tokenizer or processor"):
        export(plain, out, tokenizer=object())
    with pytest.raises(TypeError, match="check_inputs must be a dict"):
        export(plain, out, check_inputs=[1, 2])
    with pytest.raises(ValueError, match="check_atol=-1 must be a non-negative number"):
        export(plain, out, check_atol=-1)
    with pytest.raises(ValueError, match=r"base_model='/tmp/base' is not a Hub repo id"):
        export(plain, out, base_model="/tmp/base")
    with pytest.raises(ValueError, match=r"dtype='float64' is not supported for saving a checkpoint"):
        export(plain, out, dtype="float64")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a folder path"):
        export(plain, tmp_path / "file")
    assert not out.exists() and _siblings(out) == []

    quantized = load_model(tiny_checkpoints["llama"], quantization="4bit")
    for dtype in ("int8", torch.float64):
        with pytest.raises(
            ValueError, match=r"is not supported for dequantizing a bnb-4bit \(nf4, double quant\)"
        ):
            export(quantized, out, dtype=dtype)
    adapter = load_model(tiny_checkpoints["llama"], quantization="4bit", peft=_lora())
    with pytest.raises(
        ValueError, match=r"separate adapter \(merge_adapter=False\): only the adapter is saved"
    ):
        export(adapter, out, dtype="float32")
    with pytest.raises(ValueError, match="no usable vocab_size"):
        default_check_inputs(object())
    assert not out.exists()


def test_is_hub_id(tmp_path):
    assert is_hub_id("org/name") and is_hub_id("gpt2")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("./x") and not is_hub_id("~/x")
    assert (
        not is_hub_id("a/b/c") and not is_hub_id("bad..name") and not is_hub_id(None) and not is_hub_id("C:x")
    )


# ------------------------------------------------------------------------------------------- labelled check


def test_qlora_merge_reports_the_exact_reference_and_the_quantized_model_labelled(tiny_checkpoints, tmp_path):
    """issue 14 item 9: the merged weights are exact; the figure users read must say so. The exact reference is
    rebuilt here without hf-lite: a float32 model whose linear weights are transformers' dequantization of a
    freshly loaded 4-bit base, with the same LoRA weights applied unmerged by PEFT."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    from hf_lite.exporting.writer import EXACT_MERGE

    model = load_model(tiny_checkpoints["llama"], quantization="4bit", peft=_lora())
    inputs = default_check_inputs(model.get_base_model().config)
    report = export(model, tmp_path / "merged", merge_adapter=True)

    fresh = load_model(tiny_checkpoints["llama"], quantization="4bit")
    reference = load_model(tiny_checkpoints["llama"], dtype="float32")
    for name, module in fresh.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            reference.get_submodule(name).weight.data = dequantize_bnb_weight(module.weight).float().cpu()
    reference = get_peft_model(reference, _lora())
    set_peft_model_state_dict(reference, get_peft_model_state_dict(model))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    exact = _logits(reference, inputs["input_ids"])
    from_files = _logits(reloaded, inputs["input_ids"])
    in_memory = _logits(model, inputs["input_ids"])

    assert report.check_reference == EXACT_MERGE
    assert report.max_abs_diff == pytest.approx(float((from_files - exact).abs().max()), abs=1e-6)
    assert report.max_abs_diff < 1e-5  # float32 merge: rounding only
    assert report.max_abs_diff_vs_quantized == pytest.approx(
        float((from_files - in_memory).abs().max()), rel=1e-5
    )
    text = report.check_text()
    assert "vs exact reference: dequantized base + adapter, float32" in text
    assert "vs the in-memory quantized model (bitsandbytes kernels)" in text
    assert report.to_dict()["max_abs_diff_vs_quantized"] == report.max_abs_diff_vs_quantized
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "the exact reference they stand for (dequantized base + adapter, float32" in card
    assert f"differs from them by up to {report.max_abs_diff_vs_quantized:.3g}" in card

    # check_atol judges the exact reference; bf16 weights differ from it by their rounding.
    bf16 = export(model, tmp_path / "bf16", merge_adapter=True, dtype="bfloat16", check_atol=0.05)
    assert bf16.check_reference == EXACT_MERGE and 0 < bf16.max_abs_diff < 0.05


def test_dequantized_export_without_adapter_and_plain_exports_are_labelled(tiny_checkpoints, tmp_path):
    from hf_lite.exporting.writer import EXACT_DEQUANTIZED, IN_MEMORY

    quantized = load_model(tiny_checkpoints["llama"], quantization="8bit")
    report = export(quantized, tmp_path / "int8-float", dtype="float32")
    assert (
        report.check_reference == EXACT_DEQUANTIZED and report.max_abs_diff == 0.0
    )  # float32 in, float32 out
    assert (
        report.max_abs_diff_vs_quantized is not None and report.max_abs_diff_vs_quantized > 0
    )  # int8 kernel

    saved_as_is = export(
        quantized, tmp_path / "int8"
    )  # no dequantization: the in-memory model is the reference
    assert saved_as_is.check_reference == IN_MEMORY and saved_as_is.max_abs_diff_vs_quantized is None
    plain = export(load_model(tiny_checkpoints["llama"], dtype="float32"), tmp_path / "plain")
    assert plain.check_reference == IN_MEMORY and plain.max_abs_diff_vs_quantized is None
    assert plain.check_text() == "max |diff| of logits 0 vs in-memory model"
    assert (
        export(load_model(tiny_checkpoints["llama"]), tmp_path / "unchecked", check=False).check_text()
        is None
    )


# ------------------------------------------------------------------------------------------- use_cache, card


@pytest.mark.parametrize(
    ("name", "task"), [("llama", "causal-lm"), ("gpt2", "causal-lm"), ("t5", "seq2seq-lm")]
)
def test_generative_exports_switch_the_kv_cache_back_on(tiny_checkpoints, tmp_path, name, task):
    model = load_model(
        tiny_checkpoints[name], task, dtype="float32", peft=_lora() if name == "llama" else None
    )
    base = model.get_base_model() if name == "llama" else model
    base.config.use_cache = False  # what gradient checkpointing / k-bit preparation leave behind
    export(model, tmp_path / name, merge_adapter=name == "llama")
    assert json.loads((tmp_path / name / "config.json").read_text())["use_cache"] is True
    generation = tmp_path / name / "generation_config.json"
    if generation.exists():
        assert json.loads(generation.read_text()).get("use_cache", True) is True
    assert base.config.use_cache is False  # the in-memory model is not changed
    if task == "causal-lm":
        assert AutoModelForCausalLM.from_pretrained(tmp_path / name).config.use_cache is True


def test_encoder_export_keeps_its_config(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["bert"], "sequence-classification", dtype="float32")
    model.config.use_cache = False
    export(model, tmp_path / "bert")
    assert json.loads((tmp_path / "bert" / "config.json").read_text()).get("use_cache", False) is False


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
def test_exported_card_is_the_pushed_card_without_the_repo_name(hub_server, tiny_checkpoints, tmp_path):
    from hf_lite.hub import push_to_hub

    summary = {
        "teacher": "test-org/tiny-teacher",
        "task": "text-generation",
        "dataset": "test-org/tiny-corpus",
        "student": {"parameters": 82_624, "metrics": {"perplexity": 40.5}},
    }
    model = load_model(tiny_checkpoints["llama"], dtype="float32", peft=_lora())
    tokenizer = load_tokenizer(tiny_checkpoints["llama"])
    for merge, repo in ((True, "test-user/tiny-merged"), (False, "test-user/tiny-adapter")):
        out = tmp_path / repo.split("/")[1]
        export(
            model,
            out,
            tokenizer=tokenizer,
            merge_adapter=merge,
            base_model="test-org/tiny-base",
            card_report=summary,
        )
        push_to_hub(
            model,
            repo,
            tokenizer=tokenizer,
            merge_adapter=merge,
            base_model="test-org/tiny-base",
            report=summary,
        )
        pushed = hub_server.files(repo)["README.md"].decode()
        exported = (out / "README.md").read_text()
        assert exported != pushed and repo not in exported  # the repo name is only known when pushing
        hub_only = pushed.replace(repo, "your-org/your-model").replace(
            repo.split("/")[1], "hf-lite compressed model"
        )
        assert exported == hub_only


def test_card_options(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["llama"], dtype="float32")
    report = export(model, tmp_path / "bare", card=False)
    assert "README.md" not in report.files and not (tmp_path / "bare" / "README.md").exists()
    with_card = export(model, tmp_path / "card", card_report={"pruning": "magnitude", "sparsity": 0.5})
    card = (tmp_path / "card" / "README.md").read_text()
    assert "README.md" in with_card.files and "- **Pruning**: magnitude; 50.00%" in card
    assert "# hf-lite compressed model" in card and 'from_pretrained("your-org/your-model")' in card
    with pytest.raises(ValueError, match="card_report is given but card=False"):
        export(model, tmp_path / "x", card=False, card_report={"pruning": "magnitude"})
    with pytest.raises(TypeError, match="card must be True or False; got str 'yes'"):
        export(model, tmp_path / "x", card="yes")
    with pytest.raises(ValueError, match="unknown"):
        export(model, tmp_path / "x", card_report={"prunning": "magnitude"})
    assert not (tmp_path / "x").exists()


def test_reference_helpers_refuse_what_they_cannot_compare():
    from hf_lite.exporting.adapters import dequantized_adapter_model
    from hf_lite.exporting.check import max_abs_diff

    with pytest.raises(TypeError, match=r"model must be a peft.PeftModel \(with an adapter to put back"):
        dequantized_adapter_model(torch.nn.Linear(2, 2))
    with pytest.raises(
        RuntimeError, match=r"reloaded checkpoint's logits have shape \(2, 3\), the reference's \(2, 4\)"
    ):
        max_abs_diff(torch.zeros(2, 3), torch.zeros(2, 4), "logits")
    assert max_abs_diff(torch.tensor([1.0, -2.0]), torch.tensor([1.5, 1.0]), "logits") == 3.0
    assert max_abs_diff(torch.zeros(0), torch.zeros(0), "logits") == 0.0
