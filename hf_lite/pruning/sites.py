"""Architecture introspection: where the blocks, FFNs, attention projections and config of a model are.

Everything the pruning code needs to *find* in a transformers model lives here: the layers that hold weights
(``nn.Linear`` and transformers' ``Conv1D``, whose weight is stored transposed), the layer a PEFT adapter
wraps, the output embeddings, the model's config, its stack of transformer blocks, and per block the FFN
(:class:`FfnSite`, fused gate/up layers such as Phi3's ``gate_up_proj`` included) and the self-attention
projections (:class:`AttentionSite`, separate or Phi3's fused ``qkv_proj``), and the head layout
(:func:`head_layout`: is the head size in the config, or can it be written there?).

>>> from hf_lite.testing import build_tiny_model
>>> model, _ = build_tiny_model("llama")
>>> len(find_layer_list(model)), head_layout(model), find_ffn_sites(model)[0].width
(2, (4, 2, 16), 128)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_lite._utils import unwrap_model

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "AttentionSite",
    "FfnSite",
    "base_layer",
    "build_block",
    "find_attention_sites",
    "find_ffn_sites",
    "find_layer_list",
    "head_layout",
    "in_features_dim",
    "in_out_features",
    "is_prunable",
    "model_config",
    "neuron_rows",
    "output_embeddings",
    "stored_head_dim",
]

# FFN layouts: (layers whose output features are the neurons, layer whose input features are the neurons,
# config keys that may hold the width, first present wins). Names are relative to one module of a block.
_FFN_LAYOUTS: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("gate_proj", "up_proj"), "down_proj", ("intermediate_size",)),  # Llama, Mistral, Qwen2, Gemma ...
    (("up_proj",), "down_proj", ("intermediate_size",)),  # non-gated variants (e.g. Nemotron)
    (("c_fc",), "c_proj", ("n_inner",)),  # GPT-2 (Conv1D, weight (in, out))
    (("intermediate.dense",), "output.dense", ("intermediate_size",)),  # BERT, RoBERTa, ...
    (("fc1",), "fc2", ("ffn_dim", "intermediate_size")),  # OPT, Phi
    (("gate_up_proj",), "down_proj", ("intermediate_size",)),  # Phi3: gate and up fused, chunk(2)
    (("dense_h_to_4h",), "dense_4h_to_h", ("ffn_hidden_size", "intermediate_size")),  # Falcon, GPT-NeoX
    (("lin1",), "lin2", ("hidden_dim",)),  # DistilBERT (ffn.lin1/ffn.lin2)
    (("Wi",), "Wo", ("intermediate_size",)),  # ModernBERT: input and gate fused, chunk(2)
)
# Expanding layers that stack several equal blocks of neurons along their outputs (split with ``chunk``): neuron
# ``j`` of a width-``W`` FFN owns rows ``j, W + j, ...``.
_FUSED_EXPAND = {"gate_up_proj": 2, "Wi": 2}
_ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_FUSED_ATTN_PROJECTIONS = ("qkv_proj", "o_proj")  # Phi3: rows [queries | keys | values], head by head


def is_prunable(module: nn.Module) -> bool:
    """Whether ``module`` is a layer this package prunes (``nn.Linear`` or transformers ``Conv1D``).

    >>> import torch
    >>> is_prunable(torch.nn.Linear(2, 2)), is_prunable(torch.nn.LayerNorm(2))
    (True, False)
    """
    return isinstance(module, (torch.nn.Linear, Conv1D))


def in_features_dim(module: nn.Module) -> int:
    """The dimension of ``module.weight`` that indexes input features: ``1`` for ``nn.Linear``
    (weight ``(out, in)``), ``0`` for transformers ``Conv1D`` (weight ``(in, out)``).

    Args:
        module: an ``nn.Linear`` or ``Conv1D``.

    Returns:
        ``0`` or ``1``.

    >>> import torch
    >>> from transformers.pytorch_utils import Conv1D
    >>> in_features_dim(torch.nn.Linear(3, 5)), in_features_dim(Conv1D(5, 3))
    (1, 0)
    """
    if isinstance(module, Conv1D):
        return 0
    if isinstance(module, torch.nn.Linear):
        return 1
    raise TypeError(
        f"module must be a torch.nn.Linear or a transformers Conv1D; got {type(module).__name__}."
    )


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """``model.get_output_embeddings()``, or ``None`` when the model has none (or cannot say).

    >>> import torch
    >>> output_embeddings(torch.nn.Linear(2, 2)) is None
    True
    """
    getter = getattr(model, "get_output_embeddings", None)
    if getter is None:
        return None
    try:
        return getter()
    except (AttributeError, NotImplementedError):
        return None


def model_config(model: nn.Module) -> PretrainedConfig:
    """The ``config`` of a transformers model (or of the model inside a PEFT wrapper); ``TypeError`` if none.

    >>> from hf_lite.testing import build_tiny_model
    >>> model_config(build_tiny_model("gpt2")[0]).n_layer
    2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (a transformers model); got {type(model).__name__}."
        )
    config = getattr(unwrap_model(model, peft_base=True), "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"model ({type(model).__name__}) has no transformers config; structural pruning edits the config "
            "so that from_pretrained can rebuild the smaller model. Pass a transformers PreTrainedModel."
        )
    return config


def base_layer(module: nn.Module) -> nn.Module:
    """The layer holding the weight: ``module`` itself, or the ``base_layer`` a PEFT adapter wraps.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> base_layer(layer) is layer
    True
    """
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def _is_weight_layer(module: nn.Module | None) -> bool:
    if module is None:
        return False
    base = base_layer(module)
    if isinstance(base, (nn.Linear, Conv1D)):
        return True
    return type(base).__module__.startswith("bitsandbytes")  # refused later with a clear message


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return module.get_submodule(dotted)
    except AttributeError:
        return None


def find_layer_list(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks (``config.num_hidden_layers`` of them).

    >>> from hf_lite.testing import build_tiny_model
    >>> type(find_layer_list(build_tiny_model("bert")[0])[0]).__name__
    'BertLayer'
    """
    config = model_config(model)
    root = unwrap_model(model, peft_base=True)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"model is an encoder-decoder ({type(root).__name__}); structural pruning supports "
            "decoder-only (Llama, GPT-2, ...) and encoder-only (BERT, ...) models, whose config has one "
            "num_hidden_layers and one FFN width. Use unstructured pruning (magnitude_prune_, wanda_prune_) "
            "for encoder-decoder models."
        )
    num_hidden_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_hidden_layers, int):
        raise ValueError(
            f"config of {type(config).__name__} has no integer num_hidden_layers (got {num_hidden_layers!r}), "
            "so hf-lite cannot tell which modules are the transformer blocks. Structural pruning supports "
            "text models whose config has num_hidden_layers (for a multimodal model, prune its text model)."
        )
    lists = [
        m
        for m in root.modules()
        if isinstance(m, nn.ModuleList) and len(m) == num_hidden_layers and len({type(b) for b in m}) == 1
    ]
    if len(lists) != 1:
        raise ValueError(
            f"found {len(lists)} lists of {num_hidden_layers} identical blocks in {type(root).__name__} "
            "(config.num_hidden_layers), expected exactly one; structural pruning supports models with one "
            "stack of transformer blocks."
        )
    return lists[0]


@dataclass(frozen=True)
class FfnSite:
    """The FFN of one block: ``expand`` layers produce the neurons, ``project`` consumes them.

    Args:
        layer: block index.
        parent: the module holding the FFN layers (``mlp`` for Llama/GPT-2, the block itself for BERT).
        expand: layers whose *output* features are the neurons (gate/up, ``c_fc``, ``intermediate.dense``).
        project: layer whose *input* features are the neurons (``down_proj``, ``c_proj``, ``output.dense``).
        config_key: the config attribute holding the width (``intermediate_size``, ``n_inner``, ...).
        fused: how many equal blocks of neurons each ``expand`` layer stacks along its outputs, split by the
            model with ``chunk`` (2 for Phi3's ``gate_up_proj`` and ModernBERT's ``Wi``, 1 otherwise): neuron
            ``j`` owns rows ``j, width + j, ...`` (see :func:`neuron_rows`).

    >>> from hf_lite.testing import build_tiny_model
    >>> site = find_ffn_sites(build_tiny_model("bert")[0])[0]
    >>> site.width, site.config_key, type(site.parent).__name__, site.fused
    (128, 'intermediate_size', 'BertLayer', 1)
    """

    layer: int
    parent: nn.Module
    expand: tuple[nn.Module, ...]
    project: nn.Module
    config_key: str
    fused: int = 1

    @property
    def width(self) -> int:
        """Current number of neurons."""
        return in_out_features(self.project)[0]


@dataclass(frozen=True)
class AttentionSite:
    """The self-attention of one block: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` layers, or a fused
    ``qkv_proj`` (Phi3) with ``o_proj``.

    Args:
        layer: block index.
        module: the attention module.
        q, k, v, o: its projections (possibly wrapped by a PEFT adapter); with a fused ``qkv_proj``, ``q``,
            ``k`` and ``v`` are that one layer.
        fused_qkv: ``q``/``k``/``v`` are one layer whose output rows are all query heads, then all key heads,
            then all value heads, each ``head_dim`` rows (Phi3's ``qkv_proj``).

    >>> from hf_lite.testing import build_tiny_model
    >>> site = find_attention_sites(build_tiny_model("llama")[0])[1]
    >>> site.layer, type(site.module).__name__, tuple(site.o.weight.shape)
    (1, 'LlamaAttention', (64, 64))
    """

    layer: int
    module: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    fused_qkv: bool = False


def neuron_rows(index: torch.Tensor, width: int, fused: int = 1) -> torch.Tensor:
    """The output rows of a fused expanding layer that belong to the neurons ``index`` of a width-``width`` FFN
    whose layer stacks ``fused`` blocks of neurons (``index + k * width`` for each block ``k``), block by block.

    >>> import torch
    >>> neuron_rows(torch.tensor([0, 2]), 4, fused=2).tolist()
    [0, 2, 4, 6]
    """
    return torch.cat([index + k * width for k in range(fused)])


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or Conv1D layer (or of the layer a PEFT adapter wraps).

    >>> import torch
    >>> in_out_features(torch.nn.Linear(3, 5))
    (3, 5)
    """
    base = base_layer(module)
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1]
    return base.weight.shape[1], base.weight.shape[0]


def find_ffn_sites(model: nn.Module) -> list[FfnSite]:
    """The FFN of every block, in block order; ``ValueError`` when a block has none or several.

    >>> from hf_lite.testing import build_tiny_model
    >>> [site.config_key for site in find_ffn_sites(build_tiny_model("gpt2")[0])]
    ['n_inner', 'n_inner']
    """
    config = model_config(model)
    sites = []
    for i, block in enumerate(find_layer_list(model)):
        found = []
        for _, parent in block.named_modules():
            for expand_names, project_name, keys in _FFN_LAYOUTS:
                expand = [_get(parent, n) for n in expand_names]
                project = _get(parent, project_name)
                if all(_is_weight_layer(m) for m in [*expand, project]):
                    present = [k for k in keys if hasattr(config, k)]
                    width = in_out_features(project)[0]  # type: ignore[arg-type]
                    key = next((k for k in present if getattr(config, k) == width), None)
                    key = key if key is not None else next(iter(present), None)
                    if key is not None:
                        fused = _FUSED_EXPAND.get(expand_names[0], 1) if len(expand_names) == 1 else 1
                        found.append(FfnSite(i, parent, tuple(expand), project, key, fused))  # type: ignore[arg-type]
                    break  # the first matching layout of a module wins (gate+up before up alone)
        if len(found) != 1:
            what = "no FFN it recognizes" if not found else f"{len(found)} FFNs (a mixture of experts?)"
            raise ValueError(
                f"block {i} ({type(block).__name__}) has {what}. FFN pruning supports one dense FFN per block "
                "laid out as gate_proj/up_proj/down_proj (Llama family), gate_up_proj/down_proj (Phi3), c_fc/c_proj "
                "(GPT-2), intermediate.dense/output.dense (BERT family), fc1/fc2 (Phi, OPT), "
                "dense_h_to_4h/dense_4h_to_h (GPT-NeoX, Falcon), lin1/lin2 (DistilBERT) or Wi/Wo (ModernBERT), "
                "with its width in the config."
            )
        sites.append(found[0])
    return sites


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The self-attention of every block: separate q/k/v/o projections, or Phi3's fused ``qkv_proj`` and ``o_proj``.

    >>> from hf_lite.testing import build_tiny_model
    >>> site = find_attention_sites(build_tiny_model("llama")[0])[0]
    >>> tuple(site.k.weight.shape), site.fused_qkv   # 2 key/value heads of 16
    ((32, 64), False)
    """
    sites = []
    for i, block in enumerate(find_layer_list(model)):
        found = []
        for _, module in block.named_modules():
            projections = [_get(module, n) for n in _ATTN_PROJECTIONS]
            fused = [_get(module, n) for n in _FUSED_ATTN_PROJECTIONS]
            if all(_is_weight_layer(p) for p in projections):
                found.append(AttentionSite(i, module, *projections))  # type: ignore[arg-type]
            elif all(_is_weight_layer(p) for p in fused):
                qkv, o = fused
                found.append(AttentionSite(i, module, qkv, qkv, qkv, o, fused_qkv=True))  # type: ignore[arg-type]
        if len(found) != 1:
            raise ValueError(
                f"block {i} ({type(block).__name__}) has {len(found)} attention modules with separate "
                "q_proj/k_proj/v_proj/o_proj layers (or a fused qkv_proj with o_proj, as Phi3); head pruning "
                "supports exactly one (self-attention of a decoder of the Llama or Phi3 family)."
            )
        sites.append(found[0])
    return sites


def build_block(block: nn.Module, config: PretrainedConfig) -> nn.Module | None:
    """A block of ``block``'s class built from ``config`` on the meta device, or ``None`` if that fails.

    >>> from hf_lite.testing import build_tiny_model
    >>> model = build_tiny_model("llama")[0]
    >>> build_block(model.model.layers[0], model.config).mlp.up_proj.weight.device.type
    'meta'
    """
    for args, kwargs in (((config,), {"layer_idx": 0}), ((config, 0), {}), ((config,), {})):
        try:
            with torch.device("meta"):
                return type(block)(*args, **kwargs)
        except Exception:  # noqa: BLE001 - an unknown constructor signature: skip the shape check
            continue
    return None


def _attention_reads_head_dim(model: nn.Module, config: PretrainedConfig, head_dim: int) -> bool:
    """Whether the blocks read ``config.head_dim`` when the config carries one (Qwen2 and Phi3 do, with
    ``hidden_size // num_attention_heads`` as the default): a block built with ``head_dim`` doubled has other
    shapes than one built from ``config`` as it is."""
    probe = copy.deepcopy(config)
    try:
        probe.head_dim = 2 * head_dim
    except AttributeError:  # a read-only property derived from other entries (Falcon)
        return False
    block = find_layer_list(model)[0]
    built = [build_block(block, c) for c in (config, probe)]
    if any(b is None for b in built):
        return False
    shapes = [{n: tuple(p.shape) for n, p in b.named_parameters()} for b in built]
    return shapes[0] != shapes[1]


def stored_head_dim(config: PretrainedConfig) -> int | None:
    """``config.head_dim`` when the config stores it as an entry (saved in ``config.json``), else ``None``.

    >>> from transformers import LlamaConfig, Qwen2Config
    >>> stored_head_dim(LlamaConfig(hidden_size=64, num_attention_heads=4)), stored_head_dim(Qwen2Config())
    (16, None)
    """
    value = vars(config).get("head_dim")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def head_layout(model: nn.Module) -> tuple[int, int, int]:
    """``(num_attention_heads, num_key_value_heads, head_dim)``; ``ValueError`` when the config cannot express
    head pruning.

    A config without a ``head_dim`` entry can still express fewer heads when the attention reads ``head_dim``
    from the config if present (Qwen2, Phi3): the head size is then ``hidden_size // num_attention_heads`` and
    head pruning writes it into the config. Where the attention always derives it from ``hidden_size``
    (BERT, GPT-2, GPT-NeoX, Falcon, OPT), fewer heads cannot be described and head pruning is refused.

    >>> from hf_lite.testing import build_tiny_model
    >>> head_layout(build_tiny_model("llama")[0])
    (4, 2, 16)
    """
    config = model_config(model)
    heads = getattr(config, "num_attention_heads", None)
    head_dim = stored_head_dim(config)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None)
    if (
        head_dim is None
        and isinstance(heads, int)
        and isinstance(hidden, int)
        and heads
        and not hidden % heads
    ):
        implied = hidden // heads
        head_dim = implied if _attention_reads_head_dim(model, config, implied) else None
    if not isinstance(head_dim, int) or not isinstance(heads, int):
        family = type(config).__name__.removesuffix("Config")
        raise ValueError(
            f"head pruning is not possible for {family} (model_type={getattr(config, 'model_type', None)!r}): "
            "its config has no head_dim that its attention reads, so the head size is implied as hidden_size / "
            "num_attention_heads and a model with fewer heads cannot be described by the config "
            "(from_pretrained would rebuild the original shapes). Prune FFN neurons (prune_ffn_) or whole "
            "layers (prune_layers_) instead."
        )
    if heads % kv_heads:
        raise ValueError(
            f"config has num_attention_heads={heads} not divisible by num_key_value_heads={kv_heads}; "
            "this is not a valid grouped-query attention layout."
        )
    return heads, kv_heads, head_dim
