"""The model card of a compressed checkpoint: what was done, what it cost, the measured figures.

>>> from hf_lite.card import build_model_card, CompressionSummary  # doctest: +SKIP
"""

from __future__ import annotations

from hf_lite.card.build import CheckpointInfo, CompressionSummary, ModelFigures, build_model_card, inspect_checkpoint

__all__ = ["ModelFigures", "CompressionSummary", "CheckpointInfo", "inspect_checkpoint", "build_model_card"]
