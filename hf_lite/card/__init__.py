"""The model card of a compressed checkpoint: what was done, what it cost, the measured figures.

:func:`build_model_card` (:mod:`~hf_lite.card.build`) assembles the card from the records of
:mod:`~hf_lite.card.records` and the sections of :mod:`~hf_lite.card.sections`. ``CheckpointInfo`` and
``inspect_checkpoint`` live in :mod:`hf_lite.checkpoint` and are re-exported here for compatibility.

>>> from hf_lite.card import build_model_card, CompressionSummary
>>> build_model_card(CompressionSummary(pruning="magnitude"), repo_id="me/tiny").data.tags
['hf-lite', 'pruning']
"""

from __future__ import annotations

from hf_lite.card.build import build_model_card
from hf_lite.card.records import CompressionSummary, ModelFigures
from hf_lite.checkpoint import CheckpointInfo, inspect_checkpoint

__all__ = ["ModelFigures", "CompressionSummary", "CheckpointInfo", "inspect_checkpoint", "build_model_card"]
