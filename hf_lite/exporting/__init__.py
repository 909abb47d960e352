"""Export a compressed model as an ordinary checkpoint folder that stock ``from_pretrained`` loads.

The steps: merge adapters, dequantize, make sparsity permanent, write atomically, reload with stock
transformers and compare.

:func:`export` and :class:`ExportReport` live in :mod:`~hf_lite.exporting.writer`; the steps it takes in
:mod:`~hf_lite.exporting.adapters` (merge), :mod:`~hf_lite.exporting.quantization` (bitsandbytes),
:mod:`~hf_lite.exporting.sparsity` (pruning made permanent, zeros counted) and
:mod:`~hf_lite.exporting.check` (reload and compare).

>>> from hf_lite.exporting import export, ExportReport
"""

from __future__ import annotations

from hf_lite.exporting.adapters import merge_adapter_
from hf_lite.exporting.check import default_check_inputs
from hf_lite.exporting.quantization import dequantize_bnb_, strip_quantization_, unpack_bnb_cpu_weights_
from hf_lite.exporting.writer import ExportReport, export

__all__ = [
    "ExportReport",
    "export",
    "unpack_bnb_cpu_weights_",
    "dequantize_bnb_",
    "strip_quantization_",
    "merge_adapter_",
    "default_check_inputs",
]
