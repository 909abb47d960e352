"""``DistillationConfig``: the ``TrainingArguments`` of a distillation run, and the student-teacher layer map.

Every field is a command-line flag and a YAML key (``HfArgumentParser``); the loss-type vocabulary comes
from :mod:`hf_lite.losses`, so the choices here are the losses' own.

>>> from transformers import HfArgumentParser
>>> (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
...     ["--output_dir", "out", "--loss_type", "jsd", "--report_to", "none"]
... )
>>> args.loss_type, resolve_layer_map(args.layer_map, 2, 4)
('jsd', [(1, 2), (2, 4)])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from hf_lite.losses import AttentionLossKind, HiddenLossKind, LossType

logger = logging.getLogger(__name__)

__all__ = ["CROSS_TOKENIZER_LOSSES", "DistillationConfig", "parse_layer_map", "resolve_layer_map"]

#: ``cross_tokenizer_loss`` values: GOLD's hybrid (shared tokens one to one, ULD for the rest) or plain ULD.
CROSS_TOKENIZER_LOSSES = ("hybrid", "uld")


@dataclass
class DistillationConfig(TrainingArguments):
    """``TrainingArguments`` plus the distillation settings; every field is a command-line flag and a YAML key.

    The training loss is ``alpha * loss_kd + (1 - alpha) * loss_ce + hidden_weight * loss_hidden
    + attention_weight * loss_attention``. With ``lmbda > 0`` (on-policy distillation, GKD) a batch is, with
    probability ``lmbda``, the student's own completions of its prompts (``max_new_tokens``,
    ``generation_temperature``, ``top_p``); cross-entropy has no target there, so such a batch's loss is
    ``alpha * loss_kd`` (plus the hidden/attention terms): ``1 - alpha`` weighs CE on the data's batches only.
    With ``teacher_tokenizer`` (a teacher with another vocabulary) ``loss_kd`` is ``cross_tokenizer_loss`` over
    the spans where the two tokenizations align (:mod:`trainers.distillation_cross_tokenizer`).

    >>> args = DistillationConfig("out", temperature=4.0, alpha=0.9, loss_type="jsd", beta=0.5)
    >>> args.temperature, args.loss_type
    (4.0, 'jsd')
    """

    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature T > 0 of both models; the KD loss is scaled by T**2."},
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the distillation loss in [0, 1]; 1 - alpha weighs cross-entropy on the labels."
        },
    )
    loss_type: LossType = field(
        default="forward_kl",
        metadata={"help": "Divergence between the token distributions (see hf_lite.losses)."},
    )
    beta: float = field(
        default=0.5, metadata={"help": "Interpolation of the generalized JSD in [0, 1] (loss_type='jsd')."}
    )
    chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Compute the logit loss over this many tokens at a time (large vocabularies; same value and "
            "gradient; e.g. 128: benchmarks/RESULTS.md has the memory it saves)."
        },
    )
    skip_prompt_logits: bool = field(
        default=True,
        metadata={
            "help": "Causal LMs with labels: compute the logits (student and teachers) only from the first position "
            "that predicts a label of the batch (logits_to_keep), so the prompt of prompt/completion, chat and "
            "on-policy data costs no output-layer work or loss; the same loss and gradient. False computes all."
        },
    )
    compile_loss: bool = field(
        default=False,
        metadata={
            "help": "Run the logit loss through torch.compile. The first steps pay a few seconds of compilation; "
            "without a working compiler it warns once and runs eagerly. On the CPU the default (eager, blocked) "
            "loss measured as fast (benchmarks/RESULTS.md)."
        },
    )
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of hidden-state matching (0 turns it off)."}
    )
    hidden_loss: HiddenLossKind = field(default="mse", metadata={"help": "Hidden-state distance."})
    layer_map: str = field(
        default="uniform",
        metadata={
            "help": "Student->teacher layer pairs for hidden/attention matching: 'uniform', 'last', or explicit "
            "pairs 's:t,s:t' (hidden_states indices: 0 is the embeddings, i the output of layer i)."
        },
    )
    hidden_projection: bool = field(
        default=True,
        metadata={
            "help": "Learn a linear map from student to teacher width when they differ (saved beside the student)."
        },
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight of attention-map matching (0 turns it off)."}
    )
    attention_loss: AttentionLossKind = field(default="kl", metadata={"help": "Attention-map distance."})
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of several teachers' distributions (default: equal); sum to 1."},
    )
    teacher_quantization: str | None = field(
        default=None,
        metadata={"help": "Load a teacher given by id/path in '4bit' or '8bit' (None: full precision)."},
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy distillation (GKD's lambda): probability in [0, 1] that a batch is replaced by the "
            "student's own completions of its prompts, scored by the teacher(s). 0 trains on the data only "
            "(off-policy); 1 on the student's samples only. Needs prompt/completion data (prompt_input_ids)."
        },
    )
    max_new_tokens: int = field(
        default=128,
        metadata={
            "help": "On-policy generation (lmbda > 0): at most this many tokens per completion (>= 1)."
        },
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={
            "help": "On-policy generation (lmbda > 0): sampling temperature >= 0 of the student (0 = greedy). "
            "Not the distillation `temperature`, which softens both models' distributions in the loss."
        },
    )
    top_p: float = field(
        default=1.0,
        metadata={"help": "On-policy generation (lmbda > 0): nucleus sampling mass in (0, 1] (1 = off)."},
    )

    teacher_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "The teacher's tokenizer (Hub id or folder) when it differs from the student's: distil across "
            "tokenizers (each text tokenized for both models, aligned spans, ULD or the hybrid loss). With the "
            "student's own tokenizer the ordinary token-level path is used."
        },
    )
    cross_tokenizer: bool = field(
        default=True,
        metadata={
            "help": "A teacher given as a folder whose saved tokenizer differs from the student's (and no "
            "teacher_tokenizer): distil across tokenizers with that tokenizer (True), or stop with an error (False)."
        },
    )
    cross_tokenizer_loss: Literal["hybrid", "uld"] = field(
        default="hybrid",
        metadata={
            "help": "Across tokenizers: 'hybrid' (GOLD: tokens both vocabularies spell the same compared with "
            "loss_type, the rest by sorted probabilities) or 'uld' (sorted probabilities only, Boizard et al. 2024)."
        },
    )
    hybrid_matched_weight: float = field(
        default=1.0,
        metadata={"help": "cross_tokenizer_loss='hybrid': weight >= 0 of the shared-vocabulary part."},
    )
    hybrid_unmatched_weight: float = field(
        default=1.0,
        metadata={"help": "cross_tokenizer_loss='hybrid': weight >= 0 of the ULD part on the other tokens."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cross_tokenizer_loss not in CROSS_TOKENIZER_LOSSES:
            raise ValueError(
                f"cross_tokenizer_loss={self.cross_tokenizer_loss!r} must be one of {', '.join(CROSS_TOKENIZER_LOSSES)}."
            )
        for name in ("hybrid_matched_weight", "hybrid_unmatched_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be >= 0 (1.0 by default; 0 drops that part)."
                )
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (typical: 1 to 4).")
        if not isinstance(self.cross_tokenizer, bool):
            raise ValueError(
                f"cross_tokenizer={self.cross_tokenizer!r} must be True or False (from YAML or the command line: "
                "true/false)."
            )
        if not isinstance(self.skip_prompt_logits, bool):
            raise ValueError(
                f"skip_prompt_logits={self.skip_prompt_logits!r} must be True or False (from YAML or the command "
                "line: true/false)."
            )
        if not isinstance(self.compile_loss, bool):
            raise ValueError(
                f"compile_loss={self.compile_loss!r} must be True or False (from YAML or the command line: true/false)."
            )
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1].")
        for name in ("hidden_weight", "attention_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 turns the loss off).")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} must be a positive number of tokens, or None.")
        if self.teacher_weights is not None:
            weights = list(self.teacher_weights)
            if any(not 0.0 <= w <= 1.0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
                raise ValueError(
                    f"teacher_weights={weights} must each be in [0, 1] and sum to 1 (one weight per teacher)."
                )
        parse_layer_map(self.layer_map)  # syntax only; ranges are checked against the models
        self._check_generation()
        if self.loss_type != "jsd" and self.beta != 0.5:
            logger.warning("beta=%s is ignored: it only applies to loss_type='jsd'.", self.beta)
        if self.loss_type == "mse" and self.temperature != 2.0:
            logger.warning("temperature=%s is ignored by loss_type='mse' (it cancels out).", self.temperature)

    def _check_generation(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(
                f"lmbda={self.lmbda} must be in [0, 1]: the probability that a batch is generated by the student "
                "(0 = off-policy, the data only; 1 = on-policy only; GKD uses 0.5)."
            )
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1: on-policy generation must be able "
                "to write at least one token (typical: 64 to 512)."
            )
        if not self.generation_temperature >= 0:
            raise ValueError(
                f"generation_temperature={self.generation_temperature} must be >= 0: 0 generates greedily, "
                "> 0 samples (typical: 0.7 to 1.0)."
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"top_p={self.top_p} must be in (0, 1]: the probability mass sampled from (1 = no nucleus "
                "filtering; 0 would keep no token)."
            )
        defaults = {"max_new_tokens": 128, "generation_temperature": 1.0, "top_p": 1.0}
        changed = [k for k, v in defaults.items() if getattr(self, k) != v]
        if self.lmbda == 0 and changed:
            logger.warning("%s only apply to on-policy generation (lmbda > 0) and are ignored.", changed)
        elif self.generation_temperature == 0 and self.top_p != 1.0:
            logger.warning("top_p=%s is ignored: generation_temperature=0 generates greedily.", self.top_p)
        if self.lmbda == 1 and self.alpha < 1:
            logger.warning(
                "alpha=%s with lmbda=1: every batch is generated by the student, where cross-entropy has no "
                "target, so the loss is alpha * loss_kd (no loss_ce). Set alpha=1.0.",
                self.alpha,
            )


def parse_layer_map(spec: str | Sequence[Sequence[int]]) -> str | list[tuple[int, int]]:
    """Parse ``"uniform"``, ``"last"`` or pairs (``"1:2,2:4"`` or ``[[1, 2], [2, 4]]``).

    >>> parse_layer_map("1:2, 3:6")
    [(1, 2), (3, 6)]
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("uniform", "last"):
            return text
        if not re.fullmatch(r"\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*", text):
            raise ValueError(
                f"layer_map={spec!r} is not understood. Use 'uniform', 'last', or student:teacher pairs "
                "such as '2:4,4:8' (hidden_states indices; 0 is the embedding output)."
            )
        return [(int(a), int(b)) for a, b in (pair.split(":") for pair in text.split(","))]
    pairs = [tuple(int(x) for x in pair) for pair in spec]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"layer_map={spec!r}: each pair must be (student_layer, teacher_layer).")
    return pairs  # type: ignore[return-value]


def resolve_layer_map(
    spec: str | Sequence[Sequence[int]], n_student: int, n_teacher: int
) -> list[tuple[int, int]]:
    """Student/teacher ``hidden_states`` index pairs for ``n_student`` and ``n_teacher`` layers.

    ``"uniform"`` pairs student layer ``i`` with teacher layer ``round(i * n_teacher / n_student)``
    (DistilBERT/TinyBERT); ``"last"`` pairs the last layers. Index 0 is the embedding output.

    >>> resolve_layer_map("uniform", 3, 6)
    [(1, 2), (2, 4), (3, 6)]
    >>> resolve_layer_map("last", 3, 6)
    [(3, 6)]
    """
    parsed = parse_layer_map(spec)
    if parsed == "uniform":
        return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    if parsed == "last":
        return [(n_student, n_teacher)]
    for s, t in parsed:
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise ValueError(
                f"layer_map pair {s}:{t} is out of range: the student has layers 0..{n_student} and the teacher "
                f"0..{n_teacher} (0 is the embedding output)."
            )
    return list(parsed)
