"""hf_lite.logs: third-party log floods shown once (issue 19, item 8), checked by counting the lines of a
captured log: in-process on synthetic records, and in a subprocess that runs a tiny 8-bit model with the
toolkit's loader and with stock transformers (the reference, where the flood is there)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from hf_lite.logs import (
    FLOOD_LOGGERS,
    KERNEL_FALLBACK,
    KERNEL_REPO,
    SHORT_KERNEL_FALLBACK,
    OnceFilter,
    install_log_filters,
)

CAST = "MatMul8bitLt: inputs will be cast from %s to float16 during quantization"


@pytest.fixture
def captured():
    """A fresh logger with a fresh OnceFilter and a handler that keeps the formatted lines."""
    log = logging.getLogger("tests.hf_lite.logs.flood")
    log.propagate, log.level = False, logging.DEBUG
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(f"{record.levelname} {record.getMessage()}")
    once = OnceFilter()
    log.addHandler(handler)
    log.addFilter(once)
    yield log, once, lines
    log.removeHandler(handler)
    log.removeFilter(once)


def test_a_repeated_message_is_shown_once_whatever_its_arguments(captured):
    log, once, lines = captured
    for i in range(500):
        log.warning(CAST, "torch.float32" if i % 2 else "torch.bfloat16")
    log.warning("another message")
    log.warning("another message")
    assert len(lines) == 2
    assert lines[0].startswith("WARNING MatMul8bitLt: inputs will be cast from torch.bfloat16")
    assert lines[0].endswith("[shown once; hf-lite hides repeats]")
    assert lines[1].startswith("WARNING another message")
    assert once.suppressed == 499 + 1


def test_kernel_download_message_becomes_one_short_info_line(captured):
    log, _, lines = captured
    for _ in range(3):
        log.warning(KERNEL_FALLBACK + ": %s. Please make sure ...", "could not verify publisher trust status")
    assert lines == [f"INFO {SHORT_KERNEL_FALLBACK}"]


def test_kernel_download_message_is_dropped_when_info_is_off(captured):
    log, _, lines = captured
    log.setLevel(logging.WARNING)
    log.warning(KERNEL_FALLBACK + ": %s", "offline")
    assert lines == []


def test_install_covers_every_flood_logger_once():
    logging.getLogger("bitsandbytes.some_new_module")  # an existing child is covered too
    once = install_log_filters()
    assert install_log_filters() is once
    for name in (*FLOOD_LOGGERS, "bitsandbytes.some_new_module"):
        assert logging.getLogger(name).filters.count(once) == 1, name


SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import torch
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    from hf_lite.testing import save_tiny_checkpoint
    path = save_tiny_checkpoint(sys.argv[2], "llama", "causal-lm")
    if sys.argv[1] == "hf_lite":
        from hf_lite import load_model
        model = load_model(path, quantization="8bit")
    else:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        for _ in range(20):
            model(input_ids=ids)
    """
)


@pytest.mark.integration
def test_an_8bit_model_logs_the_cast_warning_once_where_stock_transformers_floods(tmp_path):
    from bitsandbytes.functional import has_avx512bf16

    def run(mode: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode, str(tmp_path / mode)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr.splitlines()

    stock, ours = run("stock"), run("hf_lite")
    count = lambda lines, text: sum(text in line for line in lines)  # noqa: E731
    # reference: 20 forwards x 14 8-bit layers (7 per Llama block, 2 blocks) in stock transformers
    assert count(stock, "MatMul8bitLt: inputs will be cast") == 20 * 14
    assert count(ours, "MatMul8bitLt: inputs will be cast") == 1
    if has_avx512bf16():  # bitsandbytes only tries the kernel download on such CPUs
        assert count(stock, KERNEL_FALLBACK) == 1
    assert count(ours, KERNEL_FALLBACK) == 0 and count(ours, "kernels-community") == 0


def test_kernels_offline_trust_message_about_the_bnb_kernel_goes_to_info():
    log = logging.getLogger("kernels._internals.hf_hub")
    assert install_log_filters() in log.filters
    text = f"Skipping publisher trust check for '{KERNEL_REPO}' because Hugging Face Hub is in offline mode."
    before = log.level
    try:
        for level, shown in ((logging.INFO, True), (logging.WARNING, False)):
            log.setLevel(level)
            record = log.makeRecord(log.name, logging.WARNING, __file__, 1, text, (), None)
            assert OnceFilter().filter(record) is shown
            assert record.levelno == logging.INFO or not shown
        other = log.makeRecord(log.name, logging.WARNING, __file__, 1, "something else", (), None)
        assert OnceFilter().filter(other) is True and other.levelno == logging.WARNING
    finally:
        log.setLevel(before)


@pytest.mark.parametrize(
    ("code", "stock"),
    [
        ("from hf_lite import load_model; from transformers import TrainingArguments; import peft", False),
        ("import hf_lite.app.cli; from transformers import TrainingArguments", False),
        ("from transformers import TrainingArguments", True),  # the reference: bitsandbytes speaks at import
    ],
)
def test_bitsandbytes_import_message_is_hidden_once_hf_lite_is_imported_first(code, stock):
    from bitsandbytes.functional import has_avx512bf16

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = sum(KERNEL_FALLBACK in line or KERNEL_REPO in line for line in proc.stderr.splitlines())
    if stock and has_avx512bf16():  # offline, the kernels package adds its own line about the same kernel
        assert shown >= 1
    else:
        assert shown == 0
