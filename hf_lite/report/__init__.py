"""The compression report: one row per model (teacher and each stage), as JSON, Markdown and a PNG plot.

A :class:`CompressionReport` holds :class:`ReportRow` objects (parameters, nonzero parameters, bytes on
disk and in memory, latency at batch 1 and 32, throughput, task metrics, quantization, adapter, notes)
and the description of the machine that measured them (:func:`hf_lite.evaluation.machine_info`).

* :meth:`CompressionReport.to_json` / :meth:`CompressionReport.from_json` round-trip exactly.
* :meth:`CompressionReport.to_markdown` is the table printed at the end of a run: metrics, % of the
  teacher for every metric, parameters, bytes, latency (median and interquartile range) and speedup over
  the teacher, with the measurement setup, the load average, a note when the machine was busy and one
  when quantized models were timed on CPU underneath.
* :meth:`CompressionReport.plot` draws the primary metric against size and against latency (Agg
  backend, no display needed).

Reports are meant to be shared (model cards, issues, benchmarks): every string in a report is checked
when rows are added and when it is written, and a local absolute path or an access token is refused
(``ValueError``). Name models by stage (``"student-pruned"``) or Hub id (``"org/model"``). Every file is
written atomically (:func:`hf_lite._utils.atomic_write`: a temporary file in the same folder, then
``os.replace``).

Modules: :mod:`~hf_lite.report.rows` (:class:`ReportRow`, :func:`check_public`),
:mod:`~hf_lite.report.compression` (:class:`CompressionReport`, JSON), :mod:`~hf_lite.report.markdown`,
:mod:`~hf_lite.report.plot` (matplotlib, imported only when a plot is drawn).

>>> report = CompressionReport(task="sequence-classification")
>>> report.add(ReportRow("teacher", "teacher", parameters=22_700_000, metrics={"accuracy": 0.859}, latency_b1_ms=9.0))
>>> report.add(ReportRow("student", "distill", parameters=11_200_000, metrics={"accuracy": 0.846}, latency_b1_ms=4.5))
>>> print(report.to_markdown().splitlines()[2])
| teacher | teacher | 0.8590 | 100.0% | 22.70M | – | 9.00 / – | 1.00× / – |
"""

from __future__ import annotations

from hf_lite.report.compression import CompressionReport
from hf_lite.report.rows import LOW_BIT_CPU_NOTE, LOWER_IS_BETTER, ReportRow, check_public

__all__ = ["LOWER_IS_BETTER", "LOW_BIT_CPU_NOTE", "CompressionReport", "ReportRow", "check_public"]
