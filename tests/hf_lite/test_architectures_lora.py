"""Default LoRA and 4-bit loading on families whose layouts tripped them: DistilBERT (pre_classifier),
ModernBERT (head.dense), Mixtral and Qwen2-MoE (fused 3-D experts, a one-output shared-expert gate)."""

from __future__ import annotations

import logging

import bitsandbytes as bnb
import pytest
import torch
import transformers

from hf_lite import load_model, model_summary
from hf_lite.adapters import adapted_parameters
from hf_lite.heads import HEAD_NAMES, is_head
from hf_lite.loading import build_skeleton
from hf_lite.quantization import bnb_repacks_on_cpu, cpu_unpackable_layers, plan_unquantized_modules

ATTENTION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _config(family: str):
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, num_labels=3
        )
    if family == "modernbert":
        ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
        return transformers.ModernBertConfig(
            vocab_size=100,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_labels=3,
            **ids,
        )
    if family == "mixtral":
        return transformers.MixtralConfig(
            vocab_size=100,
            intermediate_size=128,
            num_local_experts=4,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
            **ATTENTION,
        )
    assert family == "qwen2_moe"
    return transformers.Qwen2MoeConfig(
        vocab_size=96,
        intermediate_size=128,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        **ATTENTION,
    )


TASK = {
    "distilbert": "sequence-classification",
    "modernbert": "sequence-classification",
    "mixtral": "causal-lm",
    "qwen2_moe": "causal-lm",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("arch-lora")
    out = {}
    for family, task in TASK.items():
        torch.manual_seed(0)
        cls = transformers.AutoModelForSequenceClassification if "classification" in task else None
        cls = cls or transformers.AutoModelForCausalLM
        cls.from_config(_config(family)).save_pretrained(root / family)
        out[family] = str(root / family)
    return out


def _batch(family: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2]) if "classification" in TASK[family] else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _train_step(model, family: str) -> dict[str, float]:
    """One AdamW step; returns how far each trainable parameter moved."""
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    loss = model(**_batch(family)).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    return {n: (p.detach() - before[n]).abs().max().item() for n, p in trainable.items()}


@pytest.mark.integration
@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_default_lora_on_encoders_with_head_transforms(checkpoints, family):
    model = load_model(checkpoints[family], TASK[family], peft="lora")
    inner = model.base_model.model
    adapted = [n.removesuffix(".lora_A") for n, _ in inner.named_modules() if n.endswith(".lora_A")]
    assert adapted and not any(is_head(n) for n in adapted)  # no head or head transform is adapted
    body = [n for n, m in inner.named_modules() if type(m).__name__ == "Linear" and not is_head(n)]
    assert len(adapted) == (12 if family == "distilbert" else 8)
    assert all(not n.startswith(("pre_classifier", "classifier", "head.")) for n in body)
    moved = _train_step(model, family)
    assert any("classifier.modules_to_save" in n for n in moved)  # the classifier is trained fully
    assert all(v > 0 for n, v in moved.items() if "lora_A" in n or "modules_to_save" in n), moved


@pytest.mark.integration
def test_default_lora_on_mixtral_experts_drops_dropout_and_trains(checkpoints, caplog):
    with caplog.at_level(logging.INFO, logger="hf_lite.adapters"):
        model = load_model(checkpoints["mixtral"], peft="lora")
    assert model.peft_config["default"].lora_dropout == 0.0
    assert "lora_dropout 0 instead of 0.05" in caplog.text and "gate_up_proj" in caplog.text
    moved = _train_step(model, "mixtral")
    # The fused expert tensors are adapted too (lora.ParamWrapper), and those adapters train.
    expert_lora = [n for n in moved if ".experts." in n and "lora_A" in n]
    assert len(expert_lora) == 2 * 2 and all(moved[n] > 0 for n in expert_lora)


@pytest.mark.integration
def test_default_lora_keeps_its_dropout_where_peft_adapts_no_parameter(checkpoints):
    # Qwen2-MoE: PEFT adapts the attention and shared-expert layers only, so dropout is allowed.
    model = load_model(checkpoints["qwen2_moe"], peft="lora")
    assert model.peft_config["default"].lora_dropout == 0.05
    assert adapted_parameters(model.get_base_model(), model.peft_config["default"]) == []
    moved = _train_step(model, "qwen2_moe")
    assert all(v > 0 for n, v in moved.items() if "lora_A" in n)


def test_user_lora_dropout_on_fused_experts_is_refused_with_the_fix(checkpoints):
    with pytest.raises(
        ValueError,
        match=r"lora_dropout=0.1 cannot apply to MixtralForCausalLM: .*gate_up_proj.*Pass lora_dropout=0",
    ):
        load_model(checkpoints["mixtral"], peft={"target_modules": "all-linear", "lora_dropout": 0.1})
    # Both fixes the message names work.
    no_dropout = load_model(
        checkpoints["mixtral"], peft={"target_modules": "all-linear", "lora_dropout": 0.0}
    )
    assert any(".experts." in n for n, p in no_dropout.named_parameters() if p.requires_grad)
    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = load_model(checkpoints["mixtral"], peft={"target_modules": attention, "lora_dropout": 0.1})
    assert model.peft_config["default"].lora_dropout == 0.1


# ------------------------------------------------------------------------------------- 4-bit, MoE gates


def test_unpackable_layers_are_those_off_the_cpu_kernels_grid():
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(_config("qwen2_moe"))
    gates = ["model.layers.0.mlp.shared_expert_gate", "model.layers.1.mlp.shared_expert_gate"]
    assert cpu_unpackable_layers(model) == gates  # lm_head: 96 outputs, 3 tiles of 32
    layers = torch.nn.ModuleDict(
        {
            "narrow_in": torch.nn.Linear(48, 64),  # a row is not a whole number of 64-weight blocks
            "ok": torch.nn.Linear(128, 96),
            "conv1d": Conv1D(nf=33, nx=64),  # GPT-2 layout: 33 outputs
            "subclass": type("FalconLike", (torch.nn.Linear,), {})(64, 1),  # transformers skips subclasses
        }
    )
    assert cpu_unpackable_layers(layers) == ["narrow_in", "conv1d"]


@pytest.mark.integration
def test_qwen2_moe_4bit_keeps_the_one_output_gate_in_full_precision_and_evaluates(checkpoints, caplog):
    repacks = bnb_repacks_on_cpu() and not torch.cuda.is_available()
    with caplog.at_level(logging.WARNING, logger="hf_lite.loading"):
        model = load_model(checkpoints["qwen2_moe"], quantization="4bit", peft="lora")
    base = model.get_base_model()
    gate = base.model.layers[0].mlp.shared_expert_gate
    gate = getattr(gate, "base_layer", gate)
    q_proj = base.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    summary = model_summary(model)
    if repacks:
        assert type(gate) is torch.nn.Linear
        assert "model.layers.0.mlp.shared_expert_gate" in caplog.text and "cannot repack" in caplog.text
        assert summary.unquantized == ("model.layers.*.mlp.shared_expert_gate",)
        assert "kept in full precision: model.layers.*.mlp.shared_expert_gate" in str(summary)
    else:
        assert isinstance(gate, bnb.nn.Linear4bit) and summary.unquantized == ()
    # Evaluation runs (bitsandbytes' CPU repacking on AVX512-BF16 crashed on the one-output gate). Training with
    # evaluations in between and the merged export: the architecture matrix (tests/test_architecture_matrix.py).
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in _batch("qwen2_moe").items() if k != "labels"}).logits
    assert torch.isfinite(logits).all()


def test_planning_without_a_skeleton_falls_back_to_the_head_names():
    config = transformers.BitsAndBytesConfig(load_in_4bit=True)
    planned, unpackable = plan_unquantized_modules(config, "token-classification", None, on_cpu=True)
    assert planned.llm_int8_skip_modules == list(HEAD_NAMES) and unpackable == []
    assert plan_unquantized_modules(config, "causal-lm", None, on_cpu=True) == (config, [])


def test_a_model_that_cannot_be_built_on_meta_gives_no_skeleton():
    class Broken:
        @staticmethod
        def from_config(config, **kwargs):
            raise RuntimeError("custom code needs real tensors")

    assert build_skeleton(Broken, _config("mixtral"), {"num_labels": 5}, False) is None
    skeleton = build_skeleton(
        transformers.AutoModelForSequenceClassification, _config("distilbert"), {"num_labels": 5}, False
    )
    assert skeleton.classifier.out_features == 5 and skeleton.classifier.weight.is_meta


def test_summary_lists_no_body_layer_when_everything_in_the_body_is_quantized(checkpoints):
    model = load_model(checkpoints["mixtral"], quantization="4bit")  # lm_head (100 outputs) is skipped anyway
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    summary = model_summary(model)
    assert summary.unquantized == () and "kept in full precision" not in str(summary)


def test_unpackable_layers_are_added_to_a_users_skip_list(checkpoints):
    if not bnb_repacks_on_cpu() or torch.cuda.is_available():
        pytest.skip("bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16 (this one has none)")
    mine = transformers.BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["lm_head", "q_proj"])
    model = load_model(checkpoints["qwen2_moe"], quantization=mine)
    skips = model.config.quantization_config.llm_int8_skip_modules
    assert skips[:2] == ["lm_head", "q_proj"] and "model.layers.1.mlp.shared_expert_gate" in skips
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert mine.llm_int8_skip_modules == ["lm_head", "q_proj"]


def test_falcon_4bit_refusal_names_its_linear_subclass(tmp_path):
    config = transformers.FalconConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    transformers.FalconForCausalLM(config).save_pretrained(tmp_path / "falcon")
    with pytest.raises(
        ValueError,
        match=r"quantized no layer of FalconForCausalLM: its linear layers are FalconLinear, subclasses of "
        r"torch.nn.Linear.*without quantization",
    ):
        load_model(tmp_path / "falcon", quantization="4bit")


@pytest.mark.parametrize("family", ["distilbert", "mixtral"])
def test_a_lora_dict_without_targets_where_peft_has_no_default_names_the_fix(checkpoints, family):
    name = {"distilbert": "DistilBertForSequenceClassification", "mixtral": "MixtralForCausalLM"}[family]
    with pytest.raises(
        ValueError,
        match=rf"peft: a LoraConfig without target_modules cannot adapt {name} \(model_type='{family}'\): PEFT "
        r"has no default list of layers that fits it .* Pass target_modules='all-linear'",
    ):
        load_model(checkpoints[family], TASK[family], peft={"r": 4, "lora_dropout": 0.0})
    model = load_model(
        checkpoints[family], TASK[family], peft={"r": 4, "lora_dropout": 0.0, "target_modules": "all-linear"}
    )
    assert model.peft_config["default"].r == 4 and any("lora_A" in n for n, _ in model.named_parameters())
