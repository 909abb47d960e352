"""README.md runs as written: every Python block of the Quickstart, in order and in one namespace (as a reader
pastes them into one session), and the `hf-lite` command lines, on tiny local checkpoints.

The only edits are the substitutions of SUBSTITUTIONS, applied to the block text before it runs: Hub ids become
tiny checkpoints of the same family saved under the test's temporary folder, the shared data files become small
files of the same format, and the organisation of the pushed repo becomes the one of the local Hub server
(tests/hub_server/). Every key must occur in the README, so the table cannot go stale. Blocks that are not run
are listed in SKIPPED by name with the reason, and every block of the README is either run or listed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from hf_lite.app.cli import main

pytestmark = [
    pytest.mark.integration,  # the Distil and Prune snippets train a few steps
    pytest.mark.filterwarnings("ignore::UserWarning"),  # bitsandbytes on CPU
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: README text -> what the test puts there ({llama}, {bert}, {tmp} are filled in per test).
SUBSTITUTIONS = {
    '"Qwen/Qwen2.5-0.5B"': '"{llama}"',  # Qwen2 and Llama: the same decoder layout (GQA, gated MLP)
    '"meta-llama/Llama-3.2-1B"': '"{llama}"',
    '"sentence-transformers/all-MiniLM-L6-v2"': '"{bert}"',
    '"bert-base-uncased"': '"{bert}"',
    'load_model("my-org/minilm-sst2"': 'load_model("{bert}"',  # the teacher's weights (not the card's Hub id)
    'load_tokenizer("my-org/minilm-sst2")': 'load_tokenizer("{bert}")',
    '"../shared/data/sst2/train.tsv"': '"{tmp}/sst2/train.tsv"',
    '"../shared/data/tinyshakespeare/input.txt"': '"{tmp}/input.txt"',
    '"my-org/student"': '"test-org/student"',  # an organisation of the local Hub server
    '"SmolLM2-135M-Instruct.Q4_1.gguf"': '"{gguf}"',  # a tiny Llama GGUF with a chat template
    '"chats.jsonl"': '"{tmp}/chats.jsonl"',
    '"prompts.jsonl"': '"{tmp}/prompts.jsonl"',
}
#: The same for command lines (shell words).
CLI_SUBSTITUTIONS = {
    "my-org/minilm-sst2": "{bert}",
    "../shared/data/sst2/train.tsv": "{tmp}/sst2/train.tsv",
    "../shared/data/sst2/dev.tsv": "{tmp}/sst2/dev.tsv",
}

#: Blocks that are not run here, by name (section heading, language, number within the section), and why.
SKIPPED = {
    "Set up [bash 1]": "creates a virtual environment and installs from the network; the demo it runs is "
    "tests/hf_lite/test_cli_demo.py",
    "Set up [bash 2]": "the test command itself (what CI runs)",
    "Several processes: `accelerate launch` [bash 1]": "accelerate launch of a recipe whose teacher is on the Hub "
    "(network); the 2-process runs are tests/test_launch.py and tests/test_finetune_ddp_runs.py",
    "Benchmarks [bash 1]": "installs extras and downloads benchmark models (network); tests/test_benchmarks.py",
    "Development [bash 1]": "runs the test suite",
}
#: Command lines of the run blocks that are not run, by their first words, and why.
SKIPPED_LINES = {
    "hf-lite plan examples/recipes/distill_encoder.yaml": "the recipe's teacher is a Hub model (network); "
    "tests/test_cli_runner.py::test_plan_each_example_recipe plans every shipped recipe on a tiny teacher",
    "hf-lite run examples/recipes/distill_encoder.yaml": "fine-tunes the recipe's Hub teacher on SST-2 (network, "
    "an hour of CPU); tests/test_cli_runner.py runs recipes on tiny models",
}

WORDS = "the a cat dog bird fish tree house river red green blue big small old new good bad happy sad".split()


def readme_blocks() -> list[tuple[str, str, str]]:
    """``(name, language, text)`` of every fenced block, named ``"<section> [<language> <n>]"``."""
    blocks, counts, section = [], {}, ""
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("```") and line.strip() != "```":
            lang = line.strip("`").strip()
            end = lines.index("```", i + 1)
            key = (section, lang)
            counts[key] = counts.get(key, 0) + 1
            blocks.append((f"{section} [{lang} {counts[key]}]", lang, "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


def _substitute(text: str, table: dict[str, str], values: dict[str, str]) -> str:
    for old, new in table.items():
        text = text.replace(old, new.format(**values))
    return text


def _commands(text: str) -> list[str]:
    """The command lines of a bash block (continuation lines joined, comments dropped)."""
    return [" ".join(shlex.split(line, comments=True)) for line in text.replace("\\\n", " ").splitlines()]


@pytest.fixture
def values(tiny_checkpoints, tmp_path, monkeypatch) -> dict[str, str]:
    """Small stand-ins of the README's data files; the working directory is the test's folder."""
    (tmp_path / "sst2").mkdir()
    for split, rows in (("train", 40), ("dev", 8)):
        lines = ["sentence\tlabel"] + [
            f"{' '.join(WORDS[(i + j) % len(WORDS)] for j in range(6))}\t{i % 2}" for i in range(rows)
        ]
        (tmp_path / "sst2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    passages = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(40)]
    (tmp_path / "input.txt").write_text("\n\n".join(passages) + "\n")
    chats = [
        {"messages": [{"role": "user", "content": " ".join(WORDS[i : i + 4])},
                      {"role": "assistant", "content": " ".join(WORDS[i + 4 : i + 7])}]}
        for i in range(8)
    ]  # fmt: skip
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": " ".join(WORDS[i : i + 5])}) + "\n" for i in range(4))
    )
    from tests.gguf_writer import save_tiny_gguf

    save_tiny_gguf(tmp_path / "chat.gguf")
    monkeypatch.chdir(tmp_path)
    return {
        "llama": tiny_checkpoints["llama"],
        "bert": tiny_checkpoints["bert"],
        "tmp": str(tmp_path),
        "gguf": str(tmp_path / "chat.gguf"),
    }


def test_every_block_is_run_or_skipped_with_a_reason():
    names = [name for name, _, _ in readme_blocks()]
    run = [n for n, lang, _ in readme_blocks() if lang == "python"] + [CLI_BLOCK]
    assert sorted(set(names) - set(run)) == sorted(SKIPPED)  # a new block must be run or listed here
    text = README.read_text(encoding="utf-8")
    missing = [k for k in [*SUBSTITUTIONS, *CLI_SUBSTITUTIONS] if k not in text]
    assert missing == []  # a substitution whose README text changed would silently run nothing


CLI_BLOCK = "The `hf-lite` command and YAML recipes [bash 1]"


def test_quickstart_python_blocks_run_as_written(values, hub_server, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    namespace: dict = {"__name__": "__readme__"}
    blocks = [(name, text) for name, lang, text in readme_blocks() if lang == "python"]
    assert [name.split(" [")[0] for name, _ in blocks] == [
        "Load the lightweight way",
        "Distil",
        "Prune",
        "Distil a chat model",
        "Distil across tokenizers",
        "Export and push",
    ]
    for name, text in blocks:
        exec(compile(_substitute(text, SUBSTITUTIONS, values), f"README.md: {name}", "exec"), namespace)

    # What the blocks promise, checked on what they left behind.
    assert namespace["calibration_batches"] and namespace["lm"].config.num_hidden_layers == 1  # half of 2
    student_out = Path(values["tmp"]) / "student-out"
    assert (student_out / "README.md").is_file() and "test-org/student" in hub_server.files(
        "test-org/student"
    )["README.md"].decode()
    AutoModelForSequenceClassification.from_pretrained(student_out)
    reloaded = AutoModelForCausalLM.from_pretrained(Path(values["tmp"]) / "qwen-merged")
    assert reloaded.config.use_cache is True and "quantization_config" not in reloaded.config.to_dict()
    assert namespace["chat_trainer"].state.global_step > 0 and len(namespace["answers"]) == len(
        namespace["prompts"]
    )
    cross = namespace["cross_trainer"]
    assert cross.cross is not None and cross.state.global_step > 0  # the span path, not the token-level one
    printed = capsys.readouterr().out
    assert "vs in-memory model" in printed  # the student's export check
    assert "vs exact reference: dequantized base + adapter, float32" in printed  # the QLoRA merge's
    assert "vs the in-memory quantized model" in printed


def test_cli_lines_run_as_written(values, capsys):
    block = next(text for name, _, text in readme_blocks() if name == CLI_BLOCK)
    ran = []
    for command in _commands(block):
        if not command or any(command.startswith(skipped) for skipped in SKIPPED_LINES):
            continue
        argv = shlex.split(_substitute(command, CLI_SUBSTITUTIONS, values))
        assert argv[0] == "hf-lite"
        if "--help" in argv:
            with pytest.raises(SystemExit) as exit_info:
                main(argv[1:])
            assert exit_info.value.code == 0
        else:
            assert main(argv[1:]) == 0, capsys.readouterr().err
        ran.append(argv[1])
    assert ran == ["distill", "--help", "distill"]
    assert re.search(r"\bdistill\b", capsys.readouterr().out)
    assert (Path(values["tmp"]) / "runs" / "d" / "distill" / "model" / "config.json").is_file()
