"""Prompt/completion, prompt-only and conversational data: exact loss masks against hand-built references (ChatML
and Llama-3 templates), over-long rows, the collator, the errors, and one distillation step on completion data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hf_lite.data import (
    CompletionCollator,
    detect_data_format,
    encode_messages,
    encode_prompt,
    encode_prompt_completion,
    load_data,
    tokenize_chat,
    tokenize_data,
)
from hf_lite.data.chat import CHATML_TEMPLATE

WORDS = "system user assistant tool be brief the cat sat on mat a dog red blue fish yes no hi".split()
LLAMA3_TEMPLATE = (  # Meta-Llama-3-8B-Instruct's template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the cat"},
    {"role": "assistant", "content": "a dog"},
    {"role": "user", "content": "red"},
    {"role": "assistant", "content": "blue fish"},
]
# The reference tokenizations of CHAT: (token, counts in the loss). Assistant content and end-of-turn count;
# system/user turns, the assistant headers and BOS do not.
S, E = "<|im_start|>", "<|im_end|>"
CHATML_REF = [
    *[(S, 0), ("system", 0), ("be", 0), ("brief", 0), (E, 0)],
    *[(S, 0), ("user", 0), ("the", 0), ("cat", 0), (E, 0)],
    *[(S, 0), ("assistant", 0), ("a", 1), ("dog", 1), (E, 1)],
    *[(S, 0), ("user", 0), ("red", 0), (E, 0)],
    *[(S, 0), ("assistant", 0), ("blue", 1), ("fish", 1), (E, 1)],
]
H, EH, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
LLAMA3_REF = [
    ("<|begin_of_text|>", 0),
    *[(H, 0), ("system", 0), (EH, 0), ("be", 0), ("brief", 0), (EOT, 0)],
    *[(H, 0), ("user", 0), (EH, 0), ("the", 0), ("cat", 0), (EOT, 0)],
    *[(H, 0), ("assistant", 0), (EH, 0), ("a", 1), ("dog", 1), (EOT, 1)],
    *[(H, 0), ("user", 0), (EH, 0), ("red", 0), (EOT, 0)],
    *[(H, 0), ("assistant", 0), (EH, 0), ("blue", 1), ("fish", 1), (EOT, 1)],
]


def _tokenizer(specials: list[str], *, eos: str, template: str | None, bos: str | None = None):
    """A word-level fast tokenizer (whitespace split) with ``specials`` as special tokens; with ``bos``, plain
    ``tokenizer(text)`` prepends it (as Llama's does), which chat-template text must not get twice."""
    vocab = {t: i for i, t in enumerate(["<unk>", *specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=eos, bos_token=bos)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def chatml():
    return _tokenizer(["<|endoftext|>", S, E], eos="<|endoftext|>", template=CHATML_TEMPLATE)


@pytest.fixture(scope="module")
def llama3():
    specials = ["<|begin_of_text|>", H, EH, EOT]
    return _tokenizer(specials, eos=EOT, template=LLAMA3_TEMPLATE, bos="<|begin_of_text|>")


def _check(tok, row, ref, prompt_length):
    """``row`` is ``ref`` token by token, its labels are the ids exactly where ``ref`` counts, -100 elsewhere."""
    assert tok.convert_ids_to_tokens(row["input_ids"]) == [t for t, _ in ref]
    expected = [i if counts else -100 for i, (_, counts) in zip(row["input_ids"], ref, strict=True)]
    assert row["labels"] == expected
    assert row["attention_mask"] == [1] * len(ref)
    assert row["prompt_length"] == prompt_length


# ----------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("name", "ref", "prompt_length"), [("chatml", CHATML_REF, 21), ("llama3", LLAMA3_REF, 27)]
)
def test_messages_count_every_assistant_turn_and_nothing_else(request, name, ref, prompt_length):
    tok = request.getfixturevalue(name)
    row = encode_messages(tok, CHAT, max_length=64)
    _check(tok, row, ref, prompt_length)
    # prompt_length: the last turn's generation prompt, exactly what a model generates the reply from
    prompt = tok.apply_chat_template(CHAT[:4], tokenize=False, add_generation_prompt=True)
    assert row["input_ids"][:prompt_length] == tok(prompt, add_special_tokens=False)["input_ids"]
    every = encode_messages(tok, CHAT, max_length=64, assistant_only_loss=False)
    assert every["labels"] == every["input_ids"] == row["input_ids"]


def test_plain_prompt_completion_counts_the_completion_and_its_eos(chatml, llama3):
    row = encode_prompt_completion(chatml, "the cat", "sat on the mat", max_length=16)
    ref = [("the", 0), ("cat", 0), ("sat", 1), ("on", 1), ("the", 1), ("mat", 1), ("<|endoftext|>", 1)]
    _check(chatml, row, ref, 2)
    # the tokenizer's own special tokens on the prompt (Llama's BOS), the EOS after the completion, not doubled
    row = encode_prompt_completion(llama3, "the cat", f"sat {EOT}", max_length=16)
    _check(llama3, row, [("<|begin_of_text|>", 0), ("the", 0), ("cat", 0), ("sat", 1), (EOT, 1)], 3)
    every = encode_prompt_completion(chatml, "the cat", "sat", max_length=16, completion_only_loss=False)
    assert every["labels"] == every["input_ids"] and every["prompt_length"] == 2


def test_plain_completion_is_tokenized_in_context_unless_a_token_straddles_the_prompt():
    """Byte-level BPE (GPT-2/Llama-3/SmolLM2 style), where a space joins the next word: " 4" after the prompt is
    one token, as in the whole text; a prompt that ends with the space keeps its own tokens."""
    from tokenizers import decoders

    chars = ["<|endoftext|>", "A", ":", "4", "Ġ"]
    vocab = {t: i for i, t in enumerate([*chars, "Ġ4"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "4")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    row = encode_prompt_completion(tok, "A:", " 4", max_length=8)
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["A", ":", "Ġ4", "<|endoftext|>"]
    assert row["prompt_length"] == 2 and row["input_ids"][:3] == tok("A: 4")["input_ids"]
    row = encode_prompt_completion(tok, "A: ", "4", max_length=8)  # "A: 4" would merge "Ġ4" across the prompt
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["A", ":", "Ġ", "4", "<|endoftext|>"]
    assert row["input_ids"][: row["prompt_length"]] == tok("A: ")["input_ids"]
    assert row["labels"] == [-100, -100, -100, vocab["4"], 0]


@pytest.mark.parametrize(("name", "ref", "cut"), [("chatml", CHATML_REF, 10), ("llama3", LLAMA3_REF, 13)])
def test_conversational_prompt_completion_counts_the_reply(request, name, ref, cut):
    tok = request.getfixturevalue(name)
    row = encode_prompt_completion(tok, CHAT[:2], CHAT[2:3], max_length=64)
    turn = ref[: cut + (5 if name == "chatml" else 6)]  # system, user, then the assistant turn
    _check(tok, row, [(t, int(i >= len(turn) - 3)) for i, (t, _) in enumerate(turn)], len(turn) - 3)


def test_prompt_only_rows_have_no_labels_and_end_with_the_generation_prompt(chatml):
    row = encode_prompt(chatml, CHAT[:2], max_length=64)
    assert chatml.convert_ids_to_tokens(row["input_ids"]) == [t for t, _ in CHATML_REF[:10]] + [
        S,
        "assistant",
    ]
    assert row["prompt_length"] == 12 and "labels" not in row
    plain = encode_prompt(chatml, "the cat sat", max_length=2)  # an over-long prompt keeps its end
    assert chatml.convert_ids_to_tokens(plain["input_ids"]) == ["cat", "sat"] and plain["prompt_length"] == 2


def test_over_long_rows_lose_prompt_tokens_from_the_left(chatml):
    row = encode_prompt_completion(chatml, "the cat sat on the mat", "a dog", max_length=5)
    _check(chatml, row, [("the", 0), ("mat", 0), ("a", 1), ("dog", 1), ("<|endoftext|>", 1)], 2)
    row = encode_messages(
        chatml, CHAT, max_length=8
    )  # the last turn kept, the earlier ones cut from the left
    _check(chatml, row, CHATML_REF[-8:], 5)
    assert encode_prompt_completion(chatml, "the cat", "a dog", max_length=4)["prompt_length"] == 1


def test_tokenize_data_detects_the_format_of_each_dataset(chatml):
    ds = DatasetDict(
        {
            "train": Dataset.from_list([{"messages": CHAT}, {"messages": CHAT[:3]}]),
            "eval": Dataset.from_list([{"messages": CHAT}]),
        }
    )
    out = tokenize_data(ds, chatml, task="causal-lm", max_length=64)
    assert out["train"].column_names == ["input_ids", "attention_mask", "labels", "prompt_length"]
    assert out["train"][0] == {**encode_messages(chatml, CHAT, max_length=64)}
    pc = Dataset.from_dict({"prompt": ["the cat"], "completion": ["sat"], "id": [7]})
    assert detect_data_format(pc.column_names) == "prompt-completion"
    sat = chatml.convert_tokens_to_ids("sat")
    assert tokenize_data(pc, chatml, task="causal-lm", max_length=8)[0]["labels"] == [-100, -100, sat, 1]
    prompts = tokenize_data(pc.remove_columns("completion"), chatml, task="causal-lm", max_length=8)
    assert prompts.column_names == ["input_ids", "attention_mask", "prompt_length"]
    forced = tokenize_data(pc, chatml, task="causal-lm", max_length=8, data_format="prompt")
    assert forced.column_names == prompts.column_names


def test_load_data_keeps_chat_columns_from_jsonl(chatml, tmp_path):
    rows = [
        {"messages": CHAT},
        {"messages": [{**m, "name": "x"} if i == 1 else m for i, m in enumerate(CHAT)]},
    ]
    rows.append({"messages": []})  # blank: dropped
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_data(path, eval_fraction=0)
    assert ds["train"].column_names == ["messages"] and ds["train"].num_rows == 2
    assert ds["train"][1]["messages"][1]["name"] == "x"  # message fields the template does not read are kept
    out = tokenize_data(ds, chatml, task="causal-lm", max_length=64)["train"]
    _check(chatml, out[0], CHATML_REF, 21)
    _check(chatml, out[1], CHATML_REF, 21)
    pc = tmp_path / "pc.jsonl"
    pc.write_text(json.dumps({"prompt": CHAT[:2], "completion": CHAT[2:3], "label": 1}) + "\n")
    assert load_data(pc, eval_fraction=0)["train"].column_names == ["prompt", "completion"]
    mapped = load_data(pc, eval_fraction=0, columns={"prompt": "prompt"})["train"]
    assert mapped.column_names == ["prompt"]


# -------------------------------------------------------------------------------------------- collator


def test_collator_right_pads_rows_and_left_pads_prompts(chatml):
    rows = [
        encode_prompt_completion(chatml, "the cat sat", "a", max_length=16),  # 3 + 2
        encode_prompt_completion(chatml, "red", "blue fish on", max_length=16),  # 1 + 4
        encode_prompt_completion(chatml, "a", "dog", max_length=16),  # 1 + 2
    ]
    pad = chatml.eos_token_id  # no pad token: the EOS pads (masked anyway)
    batch = CompletionCollator(chatml, pad_to_multiple_of=4)(rows)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "prompt_input_ids",
        "prompt_attention_mask",
    }
    assert batch["input_ids"].shape == (3, 8) and batch["prompt_input_ids"].shape == (3, 4)
    for i, row in enumerate(rows):
        n, p = len(row["input_ids"]), row["prompt_length"]
        assert batch["input_ids"][i].tolist() == row["input_ids"] + [pad] * (8 - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (8 - n)
        assert batch["labels"][i].tolist() == row["labels"] + [-100] * (8 - n)
        assert batch["prompt_input_ids"][i].tolist() == [pad] * (4 - p) + row["input_ids"][:p]
        assert batch["prompt_attention_mask"][i].tolist() == [0] * (4 - p) + [1] * p
    plain = CompletionCollator(chatml)([{"input_ids": [4, 5]}, {"input_ids": [6]}])
    assert set(plain) == {"input_ids", "attention_mask"} and plain["attention_mask"].tolist() == [
        [1, 1],
        [1, 0],
    ]


# ---------------------------------------------------------------------------------------------- errors


NOT_PREFIX_STABLE = (  # earlier assistant turns shortened once a later turn follows (as reasoning is dropped)
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ 'no' }}{% else %}{{ m['content'] }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_bad_rows_are_clear_errors(chatml):
    no_template = _tokenizer(["<|endoftext|>", S, E], eos="<|endoftext|>", template=None)
    for call in (
        lambda: encode_messages(no_template, CHAT, max_length=64),
        lambda: encode_prompt_completion(no_template, CHAT[:2], CHAT[2:3], max_length=64),
    ):
        with pytest.raises(
            ValueError, match=r"has no chat template.*set tokenizer.chat_template.*plain strings"
        ):
            call()
    with pytest.raises(
        ValueError, match=r"row 0: messages have no assistant turn \(roles \['system', 'user'\]\)"
    ):
        tokenize_chat(Dataset.from_list([{"messages": CHAT[:2]}]), chatml, max_length=64)
    with pytest.raises(ValueError, match=r"the completion has 3 tokens.*max_length=3.*from the left"):
        encode_prompt_completion(chatml, "the cat", "a dog", max_length=3)
    with pytest.raises(ValueError, match=r"the completion has 3 tokens.*max_length=3"):
        encode_messages(chatml, CHAT, max_length=3)
    unstable = _tokenizer(["<|endoftext|>", S, E], eos="<|endoftext|>", template=NOT_PREFIX_STABLE)
    with pytest.raises(ValueError, match=r"not prefix-stable: messages\[:3\].*assistant_only_loss=False"):
        encode_messages(unstable, CHAT, max_length=64)
    with pytest.raises(TypeError, match=r"both be strings or both be lists of messages; got str and list"):
        encode_prompt_completion(chatml, "the cat", CHAT[2:3], max_length=64)
    with pytest.raises(TypeError, match=r"messages must be a non-empty list of messages"):
        encode_messages(chatml, "the cat", max_length=64)
    with pytest.raises(ValueError, match=r"messages\[0\]=.* is not a message: each needs a 'role'"):
        encode_messages(chatml, [{"content": "hi"}], max_length=64)
    no_eos = _tokenizer([S, E], eos=None, template=CHATML_TEMPLATE)
    with pytest.raises(ValueError, match=r"no eos token.*set tokenizer.eos_token"):
        encode_prompt_completion(no_eos, "the cat", "sat", max_length=64)


@pytest.mark.parametrize(
    ("columns", "kwargs", "match"),
    [
        (["question", "answer"], {}, r"match no data format: 'text' \(text\), 'prompt-completion'"),
        (["chosen", "rejected"], {}, r"Preference data \(chosen/rejected\)"),
        (["completion"], {}, r"A 'completion' needs its 'prompt' column"),
        (["prompt", "completion"], {"data_format": "prompt_completion"}, r"did you mean 'prompt-completion'"),
        (["prompt", "completion"], {"data_format": "messages"}, r"needs the column\(s\) \['messages'\]"),
        (["text"], {"data_format": "text"}, r"data_format='text' is plain language modelling"),
        (["prompt", "completion"], {"max_length": 1}, r"max_length=1 must be an integer >= 2"),
        (
            ["prompt", "completion"],
            {"completion_only_loss": "yes"},
            r"completion_only_loss must be True or False",
        ),
    ],
)
def test_tokenize_chat_errors(chatml, columns, kwargs, match):
    ds = Dataset.from_dict({c: ["the cat"] for c in columns})
    with pytest.raises((ValueError, TypeError), match=match):
        tokenize_chat(ds, chatml, **{"max_length": 8, **kwargs})


def test_tokenize_data_and_collator_errors(chatml):
    pc = Dataset.from_dict({"prompt": ["the cat"], "completion": ["sat"]})
    with pytest.raises(ValueError, match=r"data_format='messages' applies to causal-LM data"):
        tokenize_data(pc, chatml, task="sequence-classification", data_format="messages")
    with pytest.raises(ValueError, match=r"padding/add_eos apply to text blocks"):
        tokenize_data(pc, chatml, task="causal-lm", add_eos=True)
    mixed = DatasetDict({"train": pc, "eval": Dataset.from_dict({"text": ["the cat"]})})
    with pytest.raises(ValueError, match=r"the splits mix data formats \['prompt-completion', 'text'\]"):
        tokenize_data(mixed, chatml, task="causal-lm")
    collate = CompletionCollator(chatml)
    with pytest.raises(ValueError, match=r"got columns \['text'\] it does not pad"):
        collate([{"input_ids": [4], "text": "a"}])
    with pytest.raises(ValueError, match=r"some rows have labels and others not"):
        collate([{"input_ids": [4], "labels": [4]}, {"input_ids": [5]}])
    with pytest.raises(ValueError, match=r"got no rows"):
        collate([])
    with pytest.raises(ValueError, match=r"pad_to_multiple_of=0 must be a positive integer"):
        CompletionCollator(chatml, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match=r"neither a pad token nor an eos token"):
        CompletionCollator(_tokenizer([S, E], eos=None, template=None))


# ---------------------------------------------------------------------------------- training on the mask


@pytest.mark.integration
def test_distillation_counts_completion_tokens_only(chatml, tmp_path):
    """One step at learning rate 0: the logged KD and CE are the reference KL and CE over the completion
    positions only (prompt positions left out), and they move when a completion token changes."""
    from hf_lite.testing import build_tiny_model
    from trainers import DistillationConfig, DistillationTrainer

    teacher = build_tiny_model("llama", tokenizer=chatml, seed=1)[0]
    student = build_tiny_model("llama", tokenizer=chatml, seed=2)[0]
    pairs = [("the cat sat", "on the mat"), ("red", "blue fish"), ("a dog", "yes"), ("hi", "no no")]

    def logged(pairs, only=True):
        data = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
        data = tokenize_data(data, chatml, task="causal-lm", max_length=16, completion_only_loss=only)
        args = DistillationConfig(
            str(tmp_path / "out"),
            max_steps=1,
            per_device_train_batch_size=4,
            learning_rate=0.0,
            alpha=0.5,
            temperature=1.0,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            data_collator=CompletionCollator(chatml),
            processing_class=chatml,
        )
        trainer.train()
        log = trainer.state.log_history[0]
        return (log["loss_kd"], log["loss_ce"]), data

    def reference(data):
        kl, ce, n = 0.0, 0.0, 0
        with torch.no_grad():
            for row in data:
                ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"][1:])
                s, t = student(input_ids=ids).logits[0, :-1], teacher(input_ids=ids).logits[0, :-1]
                keep = labels != -100
                log_s, log_t = torch.log_softmax(s[keep], -1), torch.log_softmax(t[keep], -1)
                kl += (log_t.exp() * (log_t - log_s)).sum().item()
                ce += torch.nn.functional.cross_entropy(s[keep], labels[keep], reduction="sum").item()
                n += int(keep.sum())
        return kl / n, ce / n

    got, data = logged(pairs)
    assert got == pytest.approx(reference(data), rel=1e-4)
    every, every_data = logged(pairs, only=False)  # prompt positions counted too: other figures
    assert every == pytest.approx(reference(every_data), rel=1e-4) and every[1] != pytest.approx(
        got[1], rel=1e-3
    )
    changed, _ = logged([*pairs[:3], ("hi", "no yes")])  # one completion token changed
    assert abs(changed[1] - got[1]) > 1e-4


@pytest.mark.integration
def test_prompt_only_data_cannot_train_cross_entropy(chatml, tmp_path):
    from hf_lite.testing import build_tiny_model
    from trainers import DistillationConfig, DistillationTrainer

    data = Dataset.from_dict({"prompt": ["the cat", "red"]})
    data = tokenize_data(data, chatml, task="causal-lm", max_length=8)
    args = DistillationConfig(
        str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        alpha=0.5,
        report_to=[],
        use_cpu=True,
    )
    trainer = DistillationTrainer(
        model=build_tiny_model("llama", tokenizer=chatml, seed=2)[0],
        teacher_model=build_tiny_model("llama", tokenizer=chatml, seed=1)[0],
        args=args,
        train_dataset=data,
        data_collator=CompletionCollator(chatml),
    )
    with pytest.raises(
        ValueError, match=r"alpha=0.5 mixes in cross-entropy on the labels, but the batch has no"
    ):
        trainer.train()


# ------------------------------------------------------------------------------------------- from the CLI


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory, chatml):
    """A tiny Llama saved with the ChatML tokenizer (template included), and chat data as .jsonl files."""
    from hf_lite.testing import build_tiny_model

    root = tmp_path_factory.mktemp("chat-run")
    model = build_tiny_model("llama", tokenizer=chatml, seed=0, num_hidden_layers=4)[0]
    model.save_pretrained(root / "teacher")
    chatml.save_pretrained(root / "teacher")
    g = torch.Generator().manual_seed(0)
    content = WORDS[4:]

    def say(n: int) -> str:
        return " ".join(content[int(i)] for i in torch.randint(len(content), (n,), generator=g))

    chats = [
        [{"role": "user", "content": say(3)}, {"role": "assistant", "content": say(4)}] for _ in range(40)
    ]
    (root / "chats.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    prompts = "".join(json.dumps({"prompt": c[:1]}) + "\n" for c in chats)
    (root / "prompts.jsonl").write_text(prompts)
    return root


@pytest.mark.integration
def test_distill_command_on_chat_jsonl(chat_teacher, tmp_path):
    """`hf-lite distill --task causal-lm --data chats.jsonl`: messages found, assistant turns learned, evaluated."""
    from hf_lite.app.cli import main

    out = tmp_path / "d"
    argv = ["distill", "--task", "causal-lm", "--teacher", str(chat_teacher / "teacher")]
    argv += [
        "--data",
        str(chat_teacher / "chats.jsonl"),
        "--output_dir",
        str(out),
        "--student_layers",
        "[0, 3]",
    ]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "4"]
    assert main(argv) == 0
    assert (out / "distill" / "model" / "model.safetensors").is_file()
    report = json.loads((out / "evaluate" / "report.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["teacher", "distill"]
    assert all(math.isfinite(row["metrics"]["perplexity"]) for row in report["rows"])


def test_finetune_command_refuses_prompt_only_data(chat_teacher, tmp_path, capsys):
    from hf_lite.app.cli import main

    argv = ["finetune", "--task", "causal-lm", "--model", str(chat_teacher / "teacher")]
    argv += ["--data", str(chat_teacher / "prompts.jsonl"), "--output_dir", str(tmp_path / "f")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stage 'finetune' trains cross-entropy on labels, but the data has prompts only" in err
    assert "Add a 'completion' column" in err
