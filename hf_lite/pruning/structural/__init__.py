"""Structural pruning: remove FFN neurons, attention head groups or whole blocks, and edit the config.

The config is edited so that stock ``AutoModel*.from_pretrained`` rebuilds the smaller model (no hf-lite, no
remote code).

What the config can express decides what is supported:

- **FFN neurons** (:func:`prune_ffn_`): every block keeps the same number of neurons, so one
  ``intermediate_size`` (``n_inner`` for GPT-2, ``ffn_dim`` for OPT, ``hidden_dim`` for DistilBERT,
  ``ffn_hidden_size`` for Falcon) describes them. Llama-style gate/up/down, GPT-2's Conv1D ``c_fc``/``c_proj``,
  BERT's ``intermediate.dense``/``output.dense``, ``fc1``/``fc2``, GPT-NeoX's and Falcon's
  ``dense_h_to_4h``/``dense_4h_to_h`` and DistilBERT's ``ffn.lin1``/``ffn.lin2`` are sliced with their
  biases; fused gated layers (Phi3's ``gate_up_proj``, ModernBERT's ``Wi``) keep the same neurons in both
  halves.
- **Attention heads** (:func:`prune_attention_heads_`): for decoders whose attention takes its head size
  from ``config.head_dim``: configs that carry it (Llama family, Qwen3, Gemma) and configs whose attention
  reads it when present (Qwen2, Qwen2-MoE, Phi3: pruning writes ``head_dim`` into the config), so the head
  size survives a change of ``num_attention_heads``. Separate ``q_proj``/``k_proj``/``v_proj`` and Phi3's
  fused ``qkv_proj`` (rows: queries, keys, values) are sliced. Whole grouped-query groups are removed (a
  key/value head and the query heads that read it), the same number in every block; optionally each kept
  group also keeps fewer query heads (the same number in every group). BERT, GPT-2, GPT-NeoX, Falcon, OPT,
  DistilBERT and ModernBERT derive the head size from ``hidden_size / num_attention_heads`` whatever the
  config says: removing heads there cannot be saved as a config, so it is refused.
- **Experts** of mixture-of-experts blocks (:func:`prune_experts_`): the experts with the lowest router load
  on calibration data (:func:`expert_load`) are dropped, the same number in every MoE block: router rows and
  every per-expert tensor sliced, ``num_local_experts`` (Mixtral, GPT-OSS) or ``num_experts`` (Qwen2-MoE,
  Qwen3-MoE, OLMoE) set; at least ``num_experts_per_tok`` remain. **Expert FFN width**
  (:func:`prune_expert_ffn_`): every expert keeps its own most important neurons, the same number in each,
  written to ``moe_intermediate_size`` (Qwen2-MoE...) or ``intermediate_size`` (Mixtral); Qwen2-MoE's shared
  expert with ``shared_keep_ratio`` (``shared_expert_intermediate_size``). :func:`prune_ffn_` refuses MoE
  models and names these two.
- **Blocks** (:func:`prune_layers_`): explicit indices, or the blocks with the lowest block influence
  (ShortGPT). ``num_hidden_layers`` and per-layer config lists (``layer_types``, ...) are updated and the
  kept blocks' ``layer_idx`` attributes renumbered, so generation with a KV cache keeps working.

Every function checks, before touching a weight, that the result reloads into the same model: the edited
config round-trips through ``from_dict`` (the validation ``from_pretrained`` runs), and the stock class built
from it on the meta device has exactly the tensor names and shapes the pruned model saves, the same module
types in every block and the same module settings (``layer_idx``, sliding windows, sizes); see
:func:`~hf_lite.pruning.structural.reload.reload_mismatches`. Families that build blocks differently by
position are caught this way: ModernBERT's block 0 has no ``attn_norm`` (an ``Identity``), so dropping block 0
is refused (a LayerNorm is never an identity map, so no exact rewrite exists); Qwen2-MoE with
``decoder_sparse_step=2`` alternates dense and expert blocks, so only shifts that keep the pattern are accepted.
Blocks chosen by block influence skip such blocks. A LoRA adapter (PEFT) is sliced with its base layer: ``lora_B`` rows of removed output
features, ``lora_A`` columns of removed input features. Other adapter types, DoRA, and bitsandbytes-quantized
layers are refused (merge or prune first). After pruning an adapter-wrapped model, save a checkpoint that
stock transformers loads with ``model.merge_and_unload().save_pretrained(folder)``: the adapter saved alone
fits only the pruned base, not the original that its ``adapter_config.json`` names. These functions leave
optimizers alone: prune before creating one, or, to prune while training, use
:class:`trainers.StructuralPruningCallback`, which slices the Trainer's optimizer state with the weights.

Each function first computes a :class:`~hf_lite.pruning.structural.plan.StructuralPlan` (``plan_ffn``,
``plan_attention_heads``, ``plan_layers``, ``plan_experts``, ``plan_expert_ffn``: the parameters to slice with their kept indices, the config
entries to set) and then applies it (``apply_plan_``); ``slice_optimizer_state_`` applies the same plan to
an optimizer. Modules: ``plan`` (the slicing rule), ``checks`` (argument and config checks), ``ffn``,
``heads``, ``layers``, ``moe_sites`` (where MoE blocks are), ``experts``, ``expert_ffn``, ``expert_ffn_scores``, ``reload`` (what the pruned model saves against what stock transformers builds).

>>> from hf_lite.testing import build_tiny_model
>>> model, tok = build_tiny_model("llama", num_hidden_layers=3)
>>> _ = prune_ffn_(model, 0.5, multiple_of=8)
>>> _ = prune_attention_heads_(model, 0.5)
>>> prune_layers_(model, drop=[1])
[0, 2]
>>> c = model.config
>>> c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers
(64, 2, 1, 2)
"""

from __future__ import annotations

from hf_lite.pruning.structural.checks import config_error, keep_count, round_up, top_indices
from hf_lite.pruning.structural.expert_ffn import KeptExpertNeurons, plan_expert_ffn, prune_expert_ffn_
from hf_lite.pruning.structural.expert_ffn_scores import expert_neuron_scores
from hf_lite.pruning.structural.experts import expert_load, plan_experts, prune_experts_
from hf_lite.pruning.structural.ffn import plan_ffn, prune_ffn_
from hf_lite.pruning.structural.heads import (
    KeptHeads,
    loadable_group_counts,
    plan_attention_heads,
    prune_attention_heads_,
)
from hf_lite.pruning.structural.layers import (
    LAYER_INDEX_CONFIG_KEYS,
    PER_LAYER_CONFIG_KEYS,
    plan_layers,
    prune_layers_,
)
from hf_lite.pruning.structural.moe_sites import MoeSite, find_moe_sites
from hf_lite.pruning.structural.plan import (
    ParamSlice,
    StructuralPlan,
    apply_plan_,
    input_slices,
    output_slices,
    slice_optimizer_state_,
    take,
)
from hf_lite.pruning.structural.reload import reload_mismatches, saved_shapes

__all__ = [
    "KeptHeads",
    "prune_ffn_",
    "prune_attention_heads_",
    "prune_layers_",
    "plan_ffn",
    "plan_attention_heads",
    "plan_layers",
    "prune_experts_",
    "plan_experts",
    "expert_load",
    "find_moe_sites",
    "MoeSite",
    "prune_expert_ffn_",
    "plan_expert_ffn",
    "expert_neuron_scores",
    "KeptExpertNeurons",
    "StructuralPlan",
    "ParamSlice",
    "apply_plan_",
    "slice_optimizer_state_",
    "output_slices",
    "take",
    "input_slices",
    "config_error",
    "keep_count",
    "round_up",
    "top_indices",
    "loadable_group_counts",
    "reload_mismatches",
    "saved_shapes",
    "PER_LAYER_CONFIG_KEYS",
    "LAYER_INDEX_CONFIG_KEYS",
]
