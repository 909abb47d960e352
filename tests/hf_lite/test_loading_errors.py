"""Mistakes that used to end in a traceback deep inside transformers, PEFT, bitsandbytes or the Hub client
(issue 19, item 5): each ends in a typed exception naming the argument and the fix (API), or in one
``error:`` line (the ``hf-lite`` command, the QLoRA example). And a BERT-family checkpoint loaded as a
causal LM attends causally (``is_decoder`` set): no position sees the tokens after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_lite.hub as hub_module
from hf_lite import load_model
from hf_lite.app.cli import main
from hf_lite.hub import push_to_hub
from hf_lite.loading import decoder_overrides
from hf_lite.quantization import unquantized_bnb_layers
from hf_lite.testing import save_tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

ROOT = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[5, 9, 13, 7, 11, 6, 8, 10, 12, 14]])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A tiny BERT encoder checkpoint without any LM head (like all-MiniLM-L6-v2)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("enc") / "bert-base", "bert", "base")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


# ------------------------------------------------------------------------------------ is_decoder


def test_bert_loaded_as_causal_lm_does_not_see_future_tokens(encoder):
    model = load_model(encoder, task="causal-lm", dtype="float32")
    assert model.config.is_decoder is True
    base = _logits(model, IDS)
    for i in (0, 3, 7):
        changed = IDS.clone()
        changed[0, i + 1 :] += 1  # every later token differs
        assert (changed[0, i + 1 :] != IDS[0, i + 1 :]).all()
        out = _logits(model, changed)
        torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[:, i + 1 :], base[:, i + 1 :])  # later positions do read them

    # the reference: stock from_pretrained leaves is_decoder off, and position 0 then reads later tokens
    stock = AutoModelForCausalLM.from_pretrained(encoder)
    assert stock.config.is_decoder is False
    changed = IDS.clone()
    changed[0, 1:] += 1
    assert not torch.allclose(_logits(stock, changed)[:, :1], _logits(stock, IDS)[:, :1], atol=1e-4)


def test_decoder_overrides_only_for_configs_with_the_switch():
    from transformers import BertConfig, GPT2Config

    assert decoder_overrides(BertConfig(), "causal-lm", {}) == {"is_decoder": True}
    assert decoder_overrides(BertConfig(is_decoder=True), "causal-lm", {}) == {}
    assert decoder_overrides(BertConfig(), "sequence-classification", {}) == {}
    assert decoder_overrides(GPT2Config(), "causal-lm", {}) == {}
    assert decoder_overrides(BertConfig(), "causal-lm", {"is_decoder": True}) == {}


def test_is_decoder_false_with_causal_lm_is_refused(encoder):
    with pytest.raises(ValueError, match=r"is_decoder=False with task='causal-lm'.*Drop is_decoder"):
        load_model(encoder, task="causal-lm", is_decoder=False)


# ------------------------------------------------------------- quantized layers the checkpoint lacks


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_newly_initialised_head_is_refused_with_a_fix_that_works(encoder, bits):
    with pytest.raises(
        ValueError, match=r"has no weights for 1 layer\(s\).*cls\.predictions\.transform\.dense"
    ) as info:
        load_model(encoder, task="causal-lm", quantization=bits, peft="lora")
    message = str(info.value)
    assert f"quantization={bits!r}" in message and "llm_int8_skip_modules" in message
    # the fix the message gives loads, and QLoRA training gets gradients into the adapter
    fix = eval(message.split("keep those layers in full precision: quantization=")[1].rstrip("."))  # noqa: S307
    model = load_model(encoder, task="causal-lm", quantization=fix, peft="lora")
    assert unquantized_bnb_layers(model) == []
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert torch.isfinite(loss) and grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_unquantized_bnb_layers_finds_a_plain_parameter_in_a_4bit_layer():
    import bitsandbytes as bnb

    layer = torch.nn.Sequential(bnb.nn.Linear4bit(64, 64))
    assert unquantized_bnb_layers(layer) == ["0"]  # never quantized: what a missing checkpoint weight leaves
    layer[0].weight = torch.nn.Parameter(torch.zeros(64, 64))
    assert unquantized_bnb_layers(layer) == ["0"]
    assert unquantized_bnb_layers(torch.nn.Sequential(torch.nn.Linear(4, 4))) == []


def test_qlora_example_on_an_encoder_stops_with_one_error_line(encoder, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"line {i} of some text" for i in range(40)) + "\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "qlora_finetune.py"), "--model_name_or_path", str(encoder),
         "--train_file", str(text), "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--use_cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "qlora_finetune.py: error: quantization='4bit'" in proc.stderr
    assert "cls.predictions.transform.dense" in proc.stderr


# ---------------------------------------------------------------------------------- push, no network


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The Hub client pointed at a closed local port, online mode, a token set, no retry waits."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module, "RETRY_BASE_WAIT", 0.0)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("push") / "llama", "llama", "causal-lm")


def test_push_without_network_is_a_connection_error_naming_the_fix(unreachable_hub, checkpoint):
    with pytest.raises(
        ConnectionError,
        match=r"Cannot reach the Hugging Face Hub at http://127\.0\.0\.1:9.*after 1 retry.*HTTPS_PROXY",
    ):
        push_to_hub(checkpoint, "me/tiny", max_retries=1)


def test_push_while_offline_says_to_unset_hf_hub_offline(unreachable_hub, checkpoint, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"HF_HUB_OFFLINE=1\)\. Unset HF_HUB_OFFLINE"):
        push_to_hub(checkpoint, "me/tiny", max_retries=3)


def test_cli_push_without_network_prints_one_error_line(unreachable_hub, checkpoint, capsys):
    assert main(["push", str(checkpoint), "--repo_id", "me/tiny"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-lite: error:")]
    assert len(lines) == 1 and "Cannot reach the Hugging Face Hub" in lines[0]
    assert "Traceback" not in err and "ConnectError(" not in err


def test_push_losing_the_network_after_creating_the_repo_removes_it_and_says_so(
    hub_server, checkpoint, monkeypatch
):
    from huggingface_hub import HfApi

    from hf_lite._hub_commit import is_network_error

    monkeypatch.setattr(hub_module, "RETRY_BASE_WAIT", 0.0)
    calls = []

    def drop(self, *args, **kwargs):  # the connection goes away once the repo exists
        calls.append(args)
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(HfApi, "repo_info", drop)
    assert is_network_error(ConnectionResetError())
    with pytest.raises(
        ConnectionError, match=r"Cannot reach the Hugging Face Hub.*after 2 retries.*push again"
    ):
        push_to_hub(checkpoint, "test-user/lost", max_retries=2)
    assert len(calls) == 3  # first try + 2 retries
    monkeypatch.undo()
    assert not HfApi().repo_exists("test-user/lost")  # the repo this push created is gone again
