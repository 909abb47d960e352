"""`hf-lite demo` end to end on reduced steps, and the command's argument handling."""

from __future__ import annotations

import json
import math

import pytest

from hf_lite.cli import main
from hf_lite.demo import make_corpus, run_demo


@pytest.mark.integration
def test_demo_writes_a_measured_report(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--steps", "60"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    out = capsys.readouterr().out
    assert "| QLoRA (4-bit base + LoRA) |" in out and "report.json" in out
    assert (tmp_path / "report.md").read_text().strip() in out
    ppl = [report[k] for k in ("perplexity_pretrained", "perplexity_base_on_shift", "perplexity_qlora_on_shift")]
    assert all(math.isfinite(p) and p >= 1.0 for p in ppl)
    # Fine-tuning on the shifted corpus lowers perplexity there.
    assert report["perplexity_qlora_on_shift"] < report["perplexity_base_on_shift"]
    base, qlora = report["base"], report["qlora"]
    assert qlora["quantization"].startswith("bnb-4bit") and qlora["adapter"].startswith("LORA r=16")
    assert 0 < qlora["trainable_params"] < base["total_params"]
    # The 4-bit base plus adapter takes less memory than the fp32 base although it has more parameters.
    assert qlora["total_params"] > base["total_params"] and qlora["bytes_in_memory"] < base["bytes_in_memory"]
    # The saved base is an ordinary checkpoint; the adapter is saved on its own.
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_corpus_is_seeded_and_shift_uses_plural_subjects():
    assert make_corpus(20, seed=3) == make_corpus(20, seed=3) != make_corpus(20, seed=4)
    shifted = make_corpus(50, seed=0, shift=True)
    assert all(s.split()[2] in {"cats", "dogs", "birds", "children", "trees"} for s in shifted)


def test_demo_rejects_too_few_steps(tmp_path):
    with pytest.raises(ValueError, match="steps=1 is too few"):
        run_demo(tmp_path, steps=1)


def test_cli_version_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "hf-lite 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
