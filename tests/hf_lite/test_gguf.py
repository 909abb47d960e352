"""GGUF checkpoints as sources (issue 15, deliverable 1): a tiny Llama written here with the ``gguf`` package's
writer (F32 tensors, token embeddings and MLP matrices quantized to Q8_0, a byte-level BPE tokenizer with a
chat template) loads through ``load_model``/``load_tokenizer``/``load_teacher``, the recipe and the CLI as the
model that was written (dequantized weights equal to ``gguf.quants.dequantize``), and exports as an ordinary
safetensors checkpoint that stock ``from_pretrained`` reloads with the same logits."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_lite import export, load_model, load_teacher, load_tokenizer, model_summary
from hf_lite.gguf import (
    GGUFInfo,
    check_gguf_architecture,
    find_packaged_gguf,
    read_gguf_info,
    require_gguf,
    split_gguf_source,
    supported_gguf_architectures,
)
from tests.gguf_writer import CHAT_TEMPLATE, save_tiny_gguf, write_minimal_gguf

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path of the written file, state dict loading must give, the tokenizer it was written from, the model)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    expected, tokenizer, model = save_tiny_gguf(path)
    return path, expected, tokenizer, model


IDS = torch.tensor([[5, 60, 13, 7, 111, 6, 8, 210, 12, 14]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------ pure helpers


def test_split_gguf_source_file_folder_and_other_sources(tmp_path):
    file = tmp_path / "m.Q4_1.gguf"
    file.write_bytes(b"GGUF")
    expected = (str(tmp_path), str(file))
    assert split_gguf_source(file) == split_gguf_source(str(file)) == expected
    assert split_gguf_source(tmp_path, gguf_file="m.Q4_1.gguf") == expected
    assert split_gguf_source(tmp_path, gguf_file=file) == expected  # an absolute file name is kept
    assert split_gguf_source("org/model") is None and split_gguf_source(tmp_path) is None


def test_split_gguf_source_errors(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match=r"names a GGUF file that does not exist"):
        split_gguf_source(tmp_path / "missing.gguf")
    with pytest.raises(
        FileNotFoundError, match=r"gguf_file='other.gguf' is not a file in .*GGUF files there: m.gguf"
    ):
        split_gguf_source(tmp_path, gguf_file="other.gguf")
    with pytest.raises(ValueError, match=r"gguf_file='model.safetensors' is not a .gguf file"):
        split_gguf_source(tmp_path, gguf_file="model.safetensors")
    with pytest.raises(TypeError, match=r"gguf_file must be a file name or path; got int"):
        split_gguf_source(tmp_path, gguf_file=3)
    with pytest.raises(ValueError, match=r"is a GGUF file and gguf_file='m.gguf' names another"):
        split_gguf_source(tmp_path / "m.gguf", gguf_file="m.gguf")
    with pytest.raises(ValueError, match=r"needs name_or_path to be a local folder.*hf download"):
        split_gguf_source("org/model-GGUF", gguf_file="m.gguf")


def test_a_folder_of_gguf_files_without_config_points_at_gguf_file(tmp_path):
    (tmp_path / "m.Q4_1.gguf").write_bytes(b"GGUF")
    (tmp_path / "m.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(
        ValueError,
        match=r"without config.json.*pass gguf_file= naming one of its GGUF files \(m.Q4_1.gguf, m.Q8_0.gguf\)",
    ):
        load_tokenizer(tmp_path)


def test_require_gguf_names_the_extra(monkeypatch):
    assert require_gguf() is gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "hf-lite\[gguf\]"'):
        require_gguf()


def test_missing_gguf_package_stops_loading_with_the_extra(tiny_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r"needs the gguf package.*hf-lite\[gguf\]"):
        load_model(tiny_gguf[0])
    with pytest.raises(ImportError, match=r"needs the gguf package.*hf-lite\[gguf\]"):
        load_tokenizer(tiny_gguf[0])


def test_read_gguf_info_predominant_type_over_matrices(tiny_gguf):
    path, expected, _, model = tiny_gguf
    info = read_gguf_info(path)
    counts = {"Q8_0": 0, "F32": 0}
    for name, tensor in model.state_dict().items():
        if tensor.ndim == 2:
            counts["Q8_0" if "mlp" in name or "embed_tokens" in name else "F32"] += tensor.numel()
    assert info.tensor_types == counts and counts["Q8_0"] > counts["F32"]
    assert (info.architecture, info.quantization, info.name, info.quantized) == (
        "llama",
        "Q8_0",
        "tiny llama",
        True,
    )
    assert (
        info.describe(torch.float32)
        == "weights from a GGUF Q8_0 quantization (llama), dequantized to float32"
    )
    assert GGUFInfo("x", "llama", "F16", {}).describe("float32") == (
        "weights from a GGUF F16 file (llama), loaded as float32"
    )


def test_read_gguf_info_refuses_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a gguf file" * 4)
    with pytest.raises(ValueError, match=r"is not a readable GGUF file"):
        read_gguf_info(bad)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    assert {"llama", "qwen2", "qwen2moe", "gemma3"} <= set(supported_gguf_architectures())
    with pytest.raises(
        ValueError, match=r"architecture 'rwkv6', which transformers .* cannot load from GGUF.*llama"
    ):
        check_gguf_architecture(GGUFInfo(str(tmp_path / "x.gguf"), "rwkv6", "Q4_0", {}))
    path = tmp_path / "rwkv.gguf"
    write_minimal_gguf(path, "rwkv6")
    with pytest.raises(ValueError, match=r"architecture 'rwkv6'.*Architectures it loads: .*llama"):
        load_model(path)


def test_find_packaged_gguf_does_not_import_the_package(tmp_path, monkeypatch):
    package = tmp_path / "fake_model_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('importing this package is not allowed')\n")
    (package / "Model.Q4_1.gguf").write_bytes(b"GGUF")
    (package / "Model.Q8_0.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_packaged_gguf("fake_model_pkg", "*Q4_1.gguf") == package / "Model.Q4_1.gguf"
    assert "fake_model_pkg" not in sys.modules
    with pytest.raises(
        ValueError, match=r"has 2 files matching pattern='\*.gguf'.*Model.Q4_1.gguf, Model.Q8_0.gguf"
    ):
        find_packaged_gguf("fake_model_pkg")
    with pytest.raises(ImportError, match=r"not installed.*pip install no-such-pkg"):
        find_packaged_gguf("no_such_pkg")
    with pytest.raises(ValueError, match=r"must be the name of an installed top-level package"):
        find_packaged_gguf("fake_model_pkg.sub")


# ------------------------------------------------------------------------------------------ loading


@pytest.mark.integration
def test_load_model_gives_the_written_weights_dequantized(tiny_gguf, caplog):
    path, expected, _, _ = tiny_gguf
    with caplog.at_level(logging.INFO, logger="hf_lite.loading"):
        model = load_model(path)
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name  # q/k un-permuted, Q8_0 exactly gguf's dequantization
    assert model.dtype == torch.float32
    # a plain dense model, not one transformers counts as quantized (which could not be trained or saved)
    assert getattr(model.config, "quantization_config", None) is None and not getattr(
        model, "is_quantized", False
    )
    summary = model_summary(model)
    assert summary.source == "weights from a GGUF Q8_0 quantization (llama), dequantized to float32"
    assert summary.quantization is None and summary.source in str(summary)
    assert summary.source in caplog.text  # the load summary says it
    # the folder + gguf_file spelling, and an explicit use_safetensors (GGUF is not pickle), load the same
    same = load_model(path.parent, gguf_file=path.name, use_safetensors=True)
    assert torch.equal(_logits(same), _logits(model))


@pytest.mark.integration
def test_every_matrix_in_q8_0_loads_as_gguf_dequantizes_it(tmp_path):
    path = tmp_path / "all.Q8_0.gguf"
    expected, _, model = save_tiny_gguf(path, quantize=("proj", "embed_tokens", "lm_head"))
    assert read_gguf_info(path).tensor_types == {
        "Q8_0": sum(p.numel() for p in model.parameters() if p.ndim == 2)
    }
    state = load_model(path).state_dict()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name  # q/k quantized after llama.cpp's row permutation too
    assert not torch.equal(
        state["model.layers.0.self_attn.q_proj.weight"], model.model.layers[0].self_attn.q_proj.weight
    )


@pytest.mark.integration
def test_gguf_with_bitsandbytes_and_lora_is_quantized_from_the_dequantized_weights(tiny_gguf, tmp_path):
    path = tiny_gguf[0]
    load_model(path).save_pretrained(tmp_path / "dense")  # the reference: the same weights through a folder
    reference = load_model(tmp_path / "dense", quantization="4bit", peft="lora")
    model = load_model(path, quantization="4bit", peft="lora")
    assert torch.equal(_logits(model), _logits(reference))  # LoRA's B starts at 0: the quantized base decides
    assert not Path(model.get_base_model().config.name_or_path).exists()  # the temporary folder is gone
    summary = model_summary(model)
    assert summary.quantization.startswith("bnb-4bit") and summary.adapter.startswith("LORA")
    assert summary.source == "weights from a GGUF Q8_0 quantization (llama), dequantized to float32"
    assert summary.trainable_params == model_summary(reference).trainable_params > 0


@pytest.mark.integration
def test_load_tokenizer_from_gguf_round_trip_and_chat_template(tiny_gguf):
    path, _, original, _ = tiny_gguf
    tok = load_tokenizer(path)
    same = load_tokenizer(path.parent, gguf_file=path.name)
    text = "the lazy fox, or not to be the question"
    ids = tok(text).input_ids
    assert ids == original(text).input_ids == same(text).input_ids
    assert tok.decode(ids) == text
    assert len(tok) == len(original) and tok.eos_token == "<|im_end|>" and tok.pad_token == tok.eos_token
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "to be"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nto be<|im_end|>\n<|im_start|>assistant\n"
    assert tok("<|im_start|>user").input_ids[0] == original.convert_tokens_to_ids(
        "<|im_start|>"
    )  # kept whole


@pytest.mark.integration
def test_load_teacher_from_gguf_is_frozen_with_the_summary(tiny_gguf):
    path, expected, _, _ = tiny_gguf
    teacher = load_teacher(str(path))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.model.embed_tokens.weight, expected["model.embed_tokens.weight"])
    assert "GGUF Q8_0 quantization" in str(model_summary(teacher))


@pytest.mark.integration
def test_gguf_model_exports_as_safetensors_that_stock_transformers_reloads(tiny_gguf, tmp_path):
    path, _, _, _ = tiny_gguf
    model, tok = load_model(path), load_tokenizer(path)
    report = export(model, tmp_path / "out", tokenizer=tok)
    assert report.max_abs_diff == 0.0 and report.kind == "model"
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "model.safetensors" in files and not any(name.endswith(".gguf") for name in files)
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(_logits(stock), _logits(model))
    stock_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert stock_tok("to be or not").input_ids == tok("to be or not").input_ids
    assert stock_tok.chat_template == CHAT_TEMPLATE


# ------------------------------------------------------------------------------------------ CLI and recipes


@pytest.mark.integration
def test_cli_export_and_recipe_plan_take_a_gguf_model(tiny_gguf, tmp_path, capsys):
    from hf_lite.app.cli import main

    path, _, _, _ = tiny_gguf
    assert main(["export", "--model", str(path), "--output_dir", str(tmp_path / "run")]) == 0
    out = tmp_path / "run" / "export" / "model"
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(_logits(stock), _logits(load_model(path)))

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: r\ntask: causal-lm\nteacher: {path}\noutput_dir: {tmp_path / 'plan'}\n"
        f"stages:\n  - {{name: export, type: export, model: teacher}}\n  - {{name: again, type: export, model: {path}}}\n"
    )
    assert main(["plan", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert f"teacher: {path} (llama)" in printed
    assert (
        f"again (export) reads {path}: {sum(p.numel() for p in load_model(path).parameters()):,} parameters"
        in printed
    )
