"""Publishing a compressed model as an ordinary checkpoint: merge adapters, dequantize, make sparsity
permanent, write atomically, reload with stock transformers and compare.

>>> from hf_lite.exporting import export, ExportReport  # doctest: +SKIP
"""

from __future__ import annotations

from hf_lite.exporting.writer import (
    ExportReport,
    default_check_inputs,
    dequantize_bnb_,
    export,
    strip_quantization_,
    unpack_bnb_cpu_weights_,
)

__all__ = [
    "ExportReport",
    "export",
    "unpack_bnb_cpu_weights_",
    "dequantize_bnb_",
    "strip_quantization_",
    "default_check_inputs",
]
