"""Gradual pruning during fine-tuning or distillation, as a ``transformers.TrainerCallback``.

:class:`PruningCallback` raises the sparsity of a model's linear layers on the cubic schedule of Zhu & Gupta
(2017) while any ``Trainer`` trains it, keeps pruned weights at zero after every optimizer step, checkpoints
its state beside the Trainer's and makes the pruning permanent at the end, so ``save_pretrained`` writes an
ordinary checkpoint whose zeros load with stock ``from_pretrained``. The mask maths lives in
:mod:`hf_lite.pruning`; this module only arranges it around the training loop.

>>> from transformers import Trainer
>>> from trainers.pruning_callback import PruningCallback
>>> callback = PruningCallback(target_sparsity=0.5, start_step=0, end_step=600, frequency=50)
>>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP
>>> callback.report().targeted_sparsity  # doctest: +SKIP
0.5
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import TrainerCallback

from hf_lite.pruning import (
    DEFAULT_EXCLUDE,
    CubicSchedule,
    apply_mask_,
    find_prunable_modules,
    global_unstructured_masks,
    in_features_dim,
    magnitude_scores,
    mask_sparsity,
    movement_scores,
    nm_mask,
    parse_pattern,
    sparsity_report,
    unstructured_mask,
)
from hf_lite.pruning.masks import check_sparsity

if TYPE_CHECKING:
    from torch import nn
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_lite.pruning import SparsityReport

__all__ = ["PruningConfig", "PruningCallback", "PRUNING_STATE_NAME", "PRUNING_STATE_JSON"]

logger = logging.getLogger(__name__)

#: File written into every checkpoint folder: masks (``masks.<layer>``, bool) and movement scores
#: (``scores.<layer>``, float32).
PRUNING_STATE_NAME = "pruning_state.safetensors"
#: Its companion: step, sparsity in force, the config and the layer names (plain JSON).
PRUNING_STATE_JSON = "pruning_state.json"
_FORMAT_VERSION = 1


@dataclass
class PruningConfig:
    """What to prune, how, and on which schedule (see :class:`PruningCallback`).

    Steps are optimizer steps (``TrainerState.global_step``), so gradient accumulation is already folded in.
    Sparsity rises from ``initial_sparsity`` at ``start_step`` to ``target_sparsity`` at ``end_step`` along
    :class:`hf_lite.pruning.CubicSchedule`, with masks recomputed every ``frequency`` steps.

    Args:
        method: importance score: ``"magnitude"`` (``|W|``) or ``"movement"`` (Sanh et al. 2020,
            ``-sum_t W * dL/dW`` accumulated every optimizer step; needs trainable weights, not PEFT, and
            holds one float32 copy of the targeted weights until ``end_step``).
        pattern: ``"unstructured"`` or ``"N:M"`` such as ``"2:4"`` (keep N of every M consecutive weights
            along the input dimension; implies ``target_sparsity = 1 - N/M``).
        scope: ``"layer"`` (each layer pruned to the scheduled sparsity) or ``"global"`` (one threshold over
            all targeted layers; unstructured only).
        target_sparsity: final fraction of zeros in the targeted layers, in ``[0, 1)``; required for
            ``"unstructured"``, implied by an N:M pattern.
        initial_sparsity: sparsity applied at ``start_step``.
        start_step: optimizer step of the first mask update.
        end_step: optimizer step at which ``target_sparsity`` is reached (required, ``> start_step``).
        frequency: recompute masks every this many optimizer steps (and once more at ``end_step``).
        include: regexes of layer names to prune (``None``: every ``nn.Linear``/``Conv1D``).
        exclude: regexes of layer names to leave dense; default :data:`hf_lite.pruning.DEFAULT_EXCLUDE`
            (heads, embeddings, norms, LoRA matrices). A value replaces the default: extend it with
            ``[*DEFAULT_EXCLUDE, "more"]``.

    >>> config = PruningConfig(pattern="2:4", end_step=100, frequency=10)
    >>> config.target_sparsity, config.nm
    (0.5, (2, 4))
    """

    method: Literal["magnitude", "movement"] = field(
        default="magnitude",
        metadata={"help": "Importance score: 'magnitude' (|W|) or 'movement' (-sum W*grad over steps)."},
    )
    pattern: str = field(
        default="unstructured",
        metadata={"help": "'unstructured', or 'N:M' such as '2:4' (keep N of every M consecutive weights)."},
    )
    scope: Literal["layer", "global"] = field(
        default="layer",
        metadata={"help": "'layer': every layer at the scheduled sparsity; 'global': one threshold for all."},
    )
    target_sparsity: float | None = field(
        default=None,
        metadata={
            "help": "Final fraction of zeros in [0, 1). Required for 'unstructured'; N:M implies 1-N/M."
        },
    )
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity applied at start_step."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step of the first mask update."})
    end_step: int | None = field(
        default=None,
        metadata={"help": "Optimizer step at which target_sparsity is reached (required, > start_step)."},
    )
    frequency: int = field(
        default=100, metadata={"help": "Recompute masks every this many optimizer steps (and at end_step)."}
    )
    include: list[str] | None = field(
        default=None, metadata={"help": "Regexes of layer names to prune (default: every Linear/Conv1D)."}
    )
    exclude: list[str] | None = field(
        default_factory=lambda: list(DEFAULT_EXCLUDE),
        metadata={"help": "Regexes of layer names left dense (default: heads, embeddings, norms, LoRA)."},
    )

    def __post_init__(self) -> None:
        if self.method not in ("magnitude", "movement"):
            raise ValueError(
                f"method={self.method!r} is not a pruning method. Use 'magnitude' (|W|, no data needed) or "
                "'movement' (weights moving toward zero during fine-tuning are pruned)."
            )
        if self.scope not in ("layer", "global"):
            raise ValueError(
                f"scope={self.scope!r} is not a pruning scope. Use 'layer' (every layer at the same sparsity) "
                "or 'global' (one threshold over all targeted layers)."
            )
        try:
            nm = parse_pattern(self.pattern)
        except (TypeError, ValueError) as err:
            raise type(err)(f"pattern={self.pattern!r}: {err}") from err
        if nm is None:
            if self.target_sparsity is None:
                raise ValueError(
                    "target_sparsity=None: pattern='unstructured' needs the final fraction of zeros. "
                    "Pass e.g. target_sparsity=0.5, or an N:M pattern such as pattern='2:4'."
                )
            self.target_sparsity = check_sparsity(self.target_sparsity, "target_sparsity")
        else:
            implied = 1.0 - nm[0] / nm[1]
            if self.target_sparsity is not None and not math.isclose(
                check_sparsity(self.target_sparsity, "target_sparsity"), implied, abs_tol=1e-9
            ):
                raise ValueError(
                    f"target_sparsity={self.target_sparsity!r} contradicts pattern={self.pattern!r}, which "
                    f"always ends at sparsity {implied:g}. Leave target_sparsity=None with an N:M pattern."
                )
            self.target_sparsity = implied
            if self.scope == "global":
                raise ValueError(
                    f"scope='global' cannot apply to pattern={self.pattern!r}: N:M sparsity is decided inside "
                    "each group of M weights, so there is no global threshold. Use scope='layer'."
                )
        if self.end_step is None:
            raise ValueError(
                "end_step=None: give the optimizer step at which target_sparsity is reached, e.g. 2/3 of "
                "max_steps, so that the last third of training recovers from the pruning."
            )
        self.include = self._check_patterns(self.include, "include")
        self.exclude = self._check_patterns(self.exclude, "exclude")
        # The schedule checks steps, frequency and initial <= target, naming the offending field.
        try:
            self.schedule()
        except (TypeError, ValueError) as err:
            message = str(err).replace("final_sparsity", "target_sparsity")
            raise type(err)(message) from err
        if self.method == "movement" and self.start_step == 0 and self.initial_sparsity > 0:
            raise ValueError(
                f"initial_sparsity={self.initial_sparsity!r} with method='movement' and start_step=0 would "
                "prune before any gradient is seen (all movement scores are 0). Use start_step >= 1 or "
                "initial_sparsity=0.0."
            )
        if self.frequency > self.end_step - self.start_step:
            logger.warning(
                "frequency=%d is larger than end_step - start_step = %d: masks are updated only at "
                "start_step=%d and end_step=%d, so sparsity jumps instead of ramping up.",
                self.frequency, self.end_step - self.start_step, self.start_step, self.end_step,
            )  # fmt: skip

    @staticmethod
    def _check_patterns(value: str | Iterable[str] | None, name: str) -> list[str] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (bytes, Mapping)) or not isinstance(items, Iterable):
            raise TypeError(f"{name} must be a regex string or a list of them; got {type(value).__name__}.")
        out = []
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"{name} must contain regex strings; got {type(item).__name__} {item!r}.")
            try:
                re.compile(item)
            except re.error as err:
                raise ValueError(
                    f"{name} pattern {item!r} is not a valid regular expression: {err}. Escape dots as '\\.'."
                ) from err
            out.append(item)
        return out

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, ``None`` for unstructured."""
        return parse_pattern(self.pattern)

    def schedule(self) -> CubicSchedule:
        """The :class:`~hf_lite.pruning.CubicSchedule` this config describes.

        >>> PruningConfig(target_sparsity=0.5, end_step=10, frequency=5).schedule().sparsity_at(5)
        0.4375
        """
        return CubicSchedule(
            final_sparsity=self.target_sparsity,
            end_step=self.end_step,
            start_step=self.start_step,
            initial_sparsity=self.initial_sparsity,
            frequency=self.frequency,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serializable dict (``PruningConfig(**d)`` rebuilds it).

        >>> PruningConfig(target_sparsity=0.3, end_step=10).to_dict()["target_sparsity"]
        0.3
        """
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose layers are pruned: DDP / DataParallel / torch.compile wrappers removed, and for a
    PEFT model its base model (LoRA's ``base_layer`` weights are pruned, the adapters stay dense)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_torch_compile=False)
    if hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
        model = model.get_base_model()
    return model


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` outside distributed runs."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _base_optimizer(optimizer: Any) -> Any:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (and similar ``.optimizer``) wrappers."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def _atomic_write(path: str, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: the file is complete or absent."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------------------
# the callback


class PruningCallback(TrainerCallback):
    """Gradual magnitude or movement pruning while a ``Trainer`` trains, with exact, counted sparsity.

    Lifecycle (the events of ``transformers.TrainerCallback``; "step" is ``TrainerState.global_step``):

    - ``on_init_end`` (inside ``Trainer.__init__``): the targeted layers are looked up once, so bad
      ``include``/``exclude`` patterns, N:M widths or frozen weights with ``method="movement"`` fail before
      training starts.
    - ``on_train_begin``: finds the target layers on the model (DDP/accelerate wrappers removed; for a PEFT
      model, the ``base_layer`` weights of its base model) and builds all-``True`` masks. When the Trainer
      resumes from a checkpoint (``state.global_step > 0``), masks, movement scores and the schedule position
      are read back from that checkpoint's :data:`PRUNING_STATE_NAME`/:data:`PRUNING_STATE_JSON`, looked up
      in ``args.resume_from_checkpoint`` and then in ``args.output_dir/checkpoint-<global_step>`` (where
      ``train(resume_from_checkpoint=True)`` finds it). If ``start_step == 0`` the step-0 update is made here.
    - ``on_pre_optimizer_step`` (movement only, until ``end_step``): adds ``-W * grad`` to the scores. The
      gradient is the accumulated, clipped, and under DDP already all-reduced one of this optimizer step.
    - ``on_optimizer_step``, after **every** optimizer step: at scheduled steps (``schedule.should_update``
      of the step just completed) the masks are recomputed at ``schedule.sparsity_at(step)`` from the
      scores, with pruned weights ranked lowest so masks only grow (once pruned, stays pruned); then the
      pruned weights and their floating-point optimizer state (Adam's ``exp_avg``/``exp_avg_sq``, SGD
      momentum) are set to zero so that no later step revives them. Between updates this is the only
      per-step work: two or three in-place multiplications by the mask per layer, no ranking.
    - ``on_save``: the main process writes the state into the new checkpoint folder (safetensors + JSON,
      atomically), so a resumed run ends with the same masks and weights as an uninterrupted one.
    - ``on_train_end``: the pruning is made permanent: weights zeroed in place, movement scores freed. The
      model never holds masks, hooks, parametrizations or ``weight_orig``, so ``save_pretrained`` writes an
      ordinary checkpoint. With ``load_best_model_at_end`` the masks saved with the best checkpoint are used.

    Under DDP every rank computes the same masks (same weights, gradients all-reduced before the optimizer
    step); rank 0's masks are also broadcast at each update, and :attr:`mask_disagreements` counts entries
    that differed before the broadcast (0 in a healthy run). FSDP and DeepSpeed ZeRO-3 shard weights and are
    not supported.

    Args:
        config: a :class:`PruningConfig` (or a dict of its fields).
        **kwargs: :class:`PruningConfig` fields, instead of ``config`` or overriding its fields.

    Attributes:
        masks: ``{layer name: bool tensor}`` (``True`` = kept), names relative to the unwrapped model.
        current_sparsity: the scheduled sparsity in force (``0.0`` before the first update).
        mask_disagreements: mask entries where this rank disagreed with rank 0 before a broadcast.

    Example:

    >>> callback = PruningCallback(target_sparsity=0.5, start_step=10, end_step=100, frequency=10)
    >>> callback.config.method, callback.current_sparsity
    ('magnitude', 0.0)
    >>> trainer = Trainer(model, args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
    """

    def __init__(self, config: PruningConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if config is None:
            config = self._build_config(kwargs)
        elif isinstance(config, Mapping):
            config = self._build_config({**config, **kwargs})
        elif isinstance(config, PruningConfig):
            if kwargs:
                self._check_kwargs(kwargs)
                config = dataclasses.replace(config, **kwargs)
        else:
            raise TypeError(
                f"config must be a PruningConfig, a dict of its fields or None; got {type(config).__name__}."
            )
        self.config: PruningConfig = config
        self.schedule: CubicSchedule = config.schedule()
        self.masks: dict[str, torch.Tensor] = {}
        self.current_sparsity: float = 0.0
        self.mask_disagreements: int = 0
        self._model: nn.Module | None = None
        self._modules: dict[str, nn.Module] = {}
        self._scores: dict[str, torch.Tensor] | None = None
        self._last_update_step: int | None = None
        self._any_pruned = False

    # -- configuration --------------------------------------------------------------------------------

    @staticmethod
    def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
        names = [f.name for f in dataclasses.fields(PruningConfig)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"PruningCallback got unknown argument(s) {unknown}; PruningConfig fields are: {', '.join(names)}."
            )

    @classmethod
    def _build_config(cls, kwargs: Mapping[str, Any]) -> PruningConfig:
        cls._check_kwargs(kwargs)
        return PruningConfig(**kwargs)

    # -- targets --------------------------------------------------------------------------------------

    def _find_targets(self, model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
        root = _unwrap(model)
        modules = find_prunable_modules(root, include=self.config.include, exclude=self.config.exclude)
        nm = self.config.nm
        if nm is not None:
            bad = [
                f"{name} ({m.weight.shape[in_features_dim(m)]} inputs)"
                for name, m in modules.items()
                if m.weight.shape[in_features_dim(m)] % nm[1]
            ]
            if bad:
                raise ValueError(
                    f"pattern={self.config.pattern!r} needs a number of input features divisible by {nm[1]}, "
                    f"which these layers lack: {', '.join(bad[:5])}. Exclude them "
                    "(exclude=[*DEFAULT_EXCLUDE, 'name']) or use pattern='unstructured'."
                )
        if self.config.method == "movement":
            frozen = [name for name, m in modules.items() if not m.weight.requires_grad]
            if frozen:
                raise ValueError(
                    f"method='movement' needs gradients of the pruned weights, but {len(frozen)} targeted "
                    f"layers are frozen (e.g. {frozen[0]}; PEFT freezes its base layers). Use "
                    "method='magnitude', or exclude the frozen layers."
                )
        return root, modules

    # -- masks ----------------------------------------------------------------------------------------

    def _set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = {name: masks[name].to(m.weight.device) for name, m in self._modules.items()}
        self._any_pruned = any(not bool(mask.all()) for mask in self.masks.values())

    def _scores_for_update(self) -> dict[str, torch.Tensor]:
        """Importance scores with already-pruned weights at ``-inf``, so a new mask prunes them first."""
        out = {}
        for name, module in self._modules.items():
            if self.config.method == "magnitude":
                scores = magnitude_scores(module.weight)
            elif self._scores is not None:
                scores = self._scores[name]
            else:
                scores = torch.zeros(module.weight.shape, dtype=torch.float32, device=module.weight.device)
            out[name] = scores.masked_fill(~self.masks[name], -math.inf)
        return out

    def _compute_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        scores = self._scores_for_update()
        nm = self.config.nm
        if nm is not None:
            masks = {}
            for name, s in scores.items():
                # Gradual N:M: only the M-N lowest of each group are candidates, and the `sparsity` fraction
                # of the layer with the lowest scores among them is pruned, so the pattern is N:M exactly when
                # the schedule reaches 1 - N/M and never violated on the way.
                group_keep = nm_mask(s, *nm, dim=in_features_dim(self._modules[name]))
                masks[name] = unstructured_mask(s.masked_fill(group_keep, math.inf), sparsity)
        elif self.config.scope == "global":
            masks = global_unstructured_masks(scores, sparsity)
        else:
            masks = {name: unstructured_mask(s, sparsity) for name, s in scores.items()}
        # The -inf scores already keep every pruned weight pruned; the AND only states the invariant.
        return {name: mask & self.masks[name] for name, mask in masks.items()}

    def _sync_masks(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Under DDP, broadcast rank 0's masks and count where this rank's differed."""
        rank, world = _world()
        if world == 1:
            return masks
        names = list(masks)
        flat = torch.cat([masks[n].reshape(-1) for n in names]).to(torch.uint8)
        local = flat.clone()
        torch.distributed.broadcast(flat, src=0)
        differ = int((flat != local).sum())
        if differ:
            self.mask_disagreements += differ
            logger.warning(
                "[rank %d] %d pruning-mask entries differed from rank 0 before the broadcast (weights or "
                "gradients are not identical across ranks); using rank 0's masks.", rank, differ,
            )  # fmt: skip
        out, offset = {}, 0
        for n in names:
            numel = masks[n].numel()
            out[n] = flat[offset : offset + numel].reshape(masks[n].shape).to(torch.bool)
            offset += numel
        return out

    def _update(self, step: int, optimizer: Any) -> None:
        sparsity = self.schedule.sparsity_at(step)
        masks = self._sync_masks(self._compute_masks(sparsity))
        self._set_masks(masks)
        self._last_update_step = step
        self.current_sparsity = sparsity
        if step >= self.schedule.end_step:
            self._scores = None  # no update follows: movement scores are no longer needed
        self._apply(optimizer)
        rank, _ = _world()
        logger.info(
            "[rank %d] step %d: pruning masks updated to sparsity %.4f (counted %.4f over %d layers)",
            rank, step, sparsity, mask_sparsity(self.masks), len(self.masks),
        )  # fmt: skip

    @torch.no_grad()
    def _apply(self, optimizer: Any) -> None:
        """Zero pruned weights and their floating-point optimizer state: the per-step hot path.

        A multiplication by the mask, read as uint8 without a copy: on CPU it is ~20x faster than
        ``masked_fill_`` with a bool mask (measured on 512x256 fp32: 29 us vs 520 us). A NaN stays NaN, so
        a diverged run is not hidden.
        """
        if not self._any_pruned:
            return
        base = _base_optimizer(optimizer)
        state = getattr(base, "state", None) or {}
        for name, module in self._modules.items():
            weight, keep = module.weight, self.masks[name].view(torch.uint8)  # (weight shape), 0 or 1
            weight.mul_(keep)
            param_state = state.get(weight)
            if param_state:
                for value in param_state.values():
                    # Moments shaped like the weight (Adam exp_avg/exp_avg_sq, momentum); quantized 8-bit
                    # states are left alone: 0 in their code space is not the value 0.
                    if (
                        isinstance(value, torch.Tensor)
                        and value.is_floating_point()
                        and value.shape == weight.shape
                    ):
                        value.mul_(keep)

    # -- state ----------------------------------------------------------------------------------------

    def _state_dict(self, global_step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"masks.{n}": m.detach().contiguous().cpu() for n, m in self.masks.items()}
        if self._scores is not None:
            tensors.update({f"scores.{n}": s.detach().contiguous().cpu() for n, s in self._scores.items()})
        meta = {
            "format_version": _FORMAT_VERSION,
            "global_step": int(global_step),
            "last_update_step": self._last_update_step,
            "current_sparsity": self.current_sparsity,
            "counted_sparsity": mask_sparsity(self.masks),
            "has_scores": self._scores is not None,
            "layers": list(self.masks),
            "config": self.config.to_dict(),
        }
        return tensors, meta

    def save_state(self, folder: str | os.PathLike, global_step: int) -> None:
        """Write masks, movement scores and schedule position into ``folder`` (atomically; no pickle).

        Called by ``on_save`` on the main process; call it yourself only to checkpoint outside a Trainer.

        Args:
            folder: an existing checkpoint folder.
            global_step: the optimizer step the state belongs to.

        >>> callback.save_state("out/checkpoint-100", 100)  # doctest: +SKIP
        """
        from safetensors.torch import save_file

        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"folder={folder!r} is not an existing folder; pass the checkpoint folder.")
        tensors, meta = self._state_dict(global_step)
        _atomic_write(os.path.join(folder, PRUNING_STATE_NAME),
                      lambda p: save_file(tensors, p, metadata={"format": "pt"}))  # fmt: skip

        def write_json(path: str) -> None:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)

        _atomic_write(os.path.join(folder, PRUNING_STATE_JSON), write_json)

    def _load_state(self, folder: str, global_step: int | None) -> dict[str, Any]:
        from safetensors.torch import load_file

        with open(os.path.join(folder, PRUNING_STATE_JSON), encoding="utf-8") as fh:
            meta = json.load(fh)
        if global_step is not None and meta.get("global_step") != global_step:
            raise ValueError(
                f"{folder}/{PRUNING_STATE_JSON} holds the pruning state of step {meta.get('global_step')}, but "
                f"the Trainer resumes at step {global_step}; resume from the checkpoint folder it came from."
            )
        layers = meta.get("layers", [])
        if layers != list(self._modules):
            missing = sorted(set(self._modules) - set(layers))
            extra = sorted(set(layers) - set(self._modules))
            raise ValueError(
                f"the pruning state in {folder} is for other layers than this run targets (missing: "
                f"{missing[:3]}, extra: {extra[:3]}). Resume with the include/exclude of the run that saved it."
            )
        saved = meta.get("config", {})
        changed = {k: (saved.get(k), v) for k, v in self.config.to_dict().items() if saved.get(k) != v}
        if changed:
            logger.warning(
                "resuming pruning with a changed config %s (saved, now): the result will differ from an "
                "uninterrupted run.", changed,
            )  # fmt: skip
        tensors = load_file(os.path.join(folder, PRUNING_STATE_NAME))
        masks = {}
        for name in self._modules:
            mask = tensors[f"masks.{name}"]
            weight = self._modules[name].weight
            if mask.dtype != torch.bool or mask.shape != weight.shape:
                raise ValueError(
                    f"{folder}/{PRUNING_STATE_NAME}: the mask of {name} has dtype {mask.dtype} and shape "
                    f"{tuple(mask.shape)}, the layer's weight {tuple(weight.shape)}; it is not this model's."
                )
            masks[name] = mask
        self._set_masks(masks)
        if meta.get("has_scores"):
            self._scores = {n: tensors[f"scores.{n}"].to(m.weight.device) for n, m in self._modules.items()}
        self._last_update_step = meta.get("last_update_step")
        self.current_sparsity = float(meta.get("current_sparsity", 0.0))
        return meta

    def _resume_folder(self, args: TrainingArguments, state: TrainerState) -> str:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        candidates = []
        if isinstance(args.resume_from_checkpoint, str) and args.resume_from_checkpoint:
            candidates.append(args.resume_from_checkpoint)
        candidates.append(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
        for folder in candidates:
            path = os.path.join(folder, PRUNING_STATE_JSON)
            if os.path.isfile(path) and os.path.isfile(os.path.join(folder, PRUNING_STATE_NAME)):
                with open(path, encoding="utf-8") as fh:
                    if json.load(fh).get("global_step") == state.global_step:
                        return folder
        raise ValueError(
            f"the Trainer resumes at step {state.global_step}, but no pruning state of that step "
            f"({PRUNING_STATE_NAME} and {PRUNING_STATE_JSON}) was found in {candidates}. PruningCallback "
            "writes it into every checkpoint it sees saved; set TrainingArguments(resume_from_checkpoint=<the "
            "checkpoint folder>) when it lies outside output_dir, or start pruning afresh without resuming."
        )

    # -- Trainer events -------------------------------------------------------------------------------

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is not None:
            self._find_targets(model)  # fail at Trainer(...) rather than at the first step

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is None:
            raise ValueError("PruningCallback.on_train_begin got no model; it needs the Trainer's model.")
        self._model, self._modules = self._find_targets(model)
        self._set_masks({n: torch.ones(m.weight.shape, dtype=torch.bool) for n, m in self._modules.items()})
        self._scores = None
        self._last_update_step = None
        self.current_sparsity = 0.0
        self.mask_disagreements = 0
        optimizer = kwargs.get("optimizer")
        if self.config.method == "movement" and state.global_step < self.schedule.end_step:
            self._scores = {
                n: torch.zeros(m.weight.shape, dtype=torch.float32, device=m.weight.device)
                for n, m in self._modules.items()
            }
        if state.global_step > 0:
            folder = self._resume_folder(args, state)
            self._load_state(folder, state.global_step)
            self._apply(optimizer)  # a PEFT checkpoint holds no base weights: zero them again
            logger.info("[rank %d] pruning state restored from %s (step %d, sparsity %.4f)",
                        _world()[0], folder, state.global_step, self.current_sparsity)  # fmt: skip
        elif self.schedule.should_update(0):
            self._update(0, optimizer)
        if state.max_steps and state.max_steps < self.schedule.end_step:
            logger.warning(
                "end_step=%d is beyond max_steps=%d: training ends at sparsity %.4f, not target_sparsity=%g.",
                self.schedule.end_step, state.max_steps, self.schedule.sparsity_at(state.max_steps),
                self.config.target_sparsity,
            )  # fmt: skip

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        if self._scores is None:
            return
        for name, module in self._modules.items():
            grad = module.weight.grad
            if grad is not None:
                self._scores[name] = movement_scores(module.weight, grad, self._scores[name])

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ):
        step = state.global_step + 1  # the optimizer step just taken; global_step is incremented after it
        if self.schedule.should_update(step):
            self._update(step, kwargs.get("optimizer"))
        else:
            self._apply(kwargs.get("optimizer"))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not args.should_save or not self._modules:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning("checkpoint folder %s not found; pruning state not saved with it.", folder)
            return
        self.save_state(folder, state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self._modules:
            return
        best = state.best_model_checkpoint if args.load_best_model_at_end else None
        if best and os.path.isfile(os.path.join(best, PRUNING_STATE_JSON)):
            # The Trainer has just loaded the best checkpoint's weights: keep the masks that belong to them.
            meta = self._load_state(best, None)
            logger.info("pruning masks of the best checkpoint %s (step %s, sparsity %.4f) kept",
                        best, meta.get("global_step"), self.current_sparsity)  # fmt: skip
        for name, module in self._modules.items():
            apply_mask_(module.weight, self.masks[name])
        self._apply(kwargs.get("optimizer"))
        self._scores = None
        self._any_pruned = False

    # -- reporting ------------------------------------------------------------------------------------

    def report(self) -> SparsityReport:
        """Counted sparsity of the pruned model: ``hf_lite.pruning.sparsity_report(model, masks)``.

        Returns:
            A :class:`hf_lite.pruning.SparsityReport` (zeros counted from the weights, per layer and overall).

        >>> trainer.train(); print(callback.report().to_markdown())  # doctest: +SKIP
        """
        if self._model is None:
            raise RuntimeError("PruningCallback.report() needs a model: call it after training has started.")
        return sparsity_report(self._model, self.masks)
