"""Prompt/completion and conversational data for causal LMs: TRL's dataset formats, tokenized with loss masks.

The formats (TRL's names, recognised from the columns by :func:`detect_data_format`):

* ``"text"`` (language modelling): a ``text`` column; :func:`hf_lite.data.tokenize_data` cuts it into blocks.
* ``"prompt-completion"``: ``prompt`` and ``completion`` columns, both plain strings or both lists of messages
  (``[{"role": "user", "content": "..."}]``, "conversational").
* ``"prompt"`` (prompt only): a ``prompt`` column; the rows have no labels (nothing to learn until a model
  writes the completions: on-policy distillation).
* ``"messages"`` (conversational): a ``messages`` column of whole conversations.

Conversational rows are rendered with the tokenizer's own chat template (``apply_chat_template``; prompts with
``add_generation_prompt=True``) and tokenized without adding special tokens again (the template writes BOS if
the model wants one). Plain strings: ``tokenizer(prompt)`` (special tokens as the tokenizer adds them), then the
completion as ``tokenizer(prompt + completion)`` continues it (tokenized alone where a token would straddle the
boundary) and the EOS token, so that ``input_ids[:prompt_length]`` is always exactly ``tokenizer(prompt)``: the
prompt a model is given to generate from.

Which tokens count (label ``!= -100``): the completion only (``completion_only_loss=True``, the default; the
completion's EOS, or for conversations the template's end-of-turn marker, included) and, for ``messages``, every
assistant turn and nothing else (``assistant_only_loss=True``, the default; system, user and tool turns and the
assistant headers excluded). ``False`` makes every token count.

Assistant spans are found by **incremental prefix rendering**: for assistant message ``i`` the loss starts after
``render(messages[:i], add_generation_prompt=True)`` and ends after ``render(messages[:i + 1])``, each of which must
be a token prefix of ``render(messages)``. This needs no offsets, no ``{% generation %}`` markers in the template
and no knowledge of its markers, and is right for ChatML and Llama-3-style templates (whose end-of-turn tokens
``<|im_end|>``/``<|eot_id|>`` then fall inside the span, with what the template writes after them up to the next
turn, e.g. ChatML's newline). A template that renders earlier turns differently once
later ones follow (e.g. one that drops the reasoning of earlier turns) is not prefix-stable: a ``ValueError``
says so rather than mask the wrong tokens.

Over-long rows (more than ``max_length`` tokens) lose **prompt** tokens from the left (the start of the
conversation, BOS and system prompt first); the completion (for ``messages``: the last assistant turn and what
follows it) is always kept whole, and a row whose completion alone leaves no room for one prompt token
(``len(completion) >= max_length``) is refused with a ``ValueError``.

Rows come out with ``input_ids``, ``attention_mask``, ``labels`` (not for prompt-only data) and ``prompt_length``:
the number of leading prompt tokens (for ``messages``: everything before the last assistant turn, i.e. the
generation prompt of that turn). :class:`~hf_lite.data.collate.CompletionCollator` pads them into batches.

>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> from transformers import PreTrainedTokenizerFast
>>> words = ["<unk>", "<eos>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hi", "hello", "there"]
>>> backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
>>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
>>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
>>> _ = tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
>>> tok.chat_template = CHATML_TEMPLATE
>>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
>>> row = encode_messages(tok, chat, max_length=32)
>>> [t for t, y in zip(tok.convert_ids_to_tokens(row["input_ids"]), row["labels"]) if y != -100]
['hello', 'there', '<|im_end|>']
>>> row["prompt_length"], encode_prompt_completion(tok, "hi", "hello", max_length=8)["labels"]
(6, [-100, 7, 1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

from hf_lite._utils import did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHATML_TEMPLATE",
    "DATA_FORMATS",
    "detect_data_format",
    "encode_messages",
    "encode_prompt",
    "encode_prompt_completion",
    "tokenize_chat",
]

#: The formats, as ``data_format`` names them: TRL's language modelling, prompt-completion, prompt-only and
#: conversational formats.
DATA_FORMATS = ("text", "prompt-completion", "prompt", "messages")
#: The columns each format reads.
FORMAT_COLUMNS = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "prompt": ("prompt",),
    "messages": ("messages",),
}
#: A ChatML template (Qwen, SmolLM2-Instruct): ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_NO_TEMPLATE_FIX = (
    "set tokenizer.chat_template to the model's template (for example hf_lite.data.chat.CHATML_TEMPLATE for a "
    "ChatML model), use the tokenizer of the instruction-tuned model, or give prompt/completion as plain strings"
)


def detect_data_format(columns: Sequence[str]) -> str:
    """The format of a dataset with these columns: ``messages`` > ``prompt`` + ``completion`` > ``prompt`` >
    ``text``.

    Raises:
        ValueError: when no format's columns are present (the message lists the formats and their columns).

    >>> detect_data_format(["prompt", "completion", "id"]), detect_data_format(["messages"])
    ('prompt-completion', 'messages')
    """
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "prompt" in cols:
        return "prompt-completion" if "completion" in cols else "prompt"
    if "text" in cols:
        return "text"
    hint = ""
    if {"chosen", "rejected"} & cols:
        hint = " Preference data (chosen/rejected) is not a training format here; use the chosen side as 'messages'."
    elif "completion" in cols:
        hint = " A 'completion' needs its 'prompt' column."
    raise ValueError(
        f"the dataset's columns {sorted(cols)} match no data format: {_formats_help()}; rename the columns "
        f"(load_data(columns=...)) or pass data_format=...{hint}"
    )


def _formats_help() -> str:
    return ", ".join(f"{name!r} ({' + '.join(cols)})" for name, cols in FORMAT_COLUMNS.items())


def check_data_format(data_format: str, columns: Sequence[str]) -> None:
    """Raise a ``ValueError`` when ``data_format`` is unknown or its columns are missing.

    >>> check_data_format("prompt-completion", ["prompt", "completion"])
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format={data_format!r} is not a data format{did_you_mean(data_format, DATA_FORMATS)}; choose "
            f"one of {_formats_help()}, or None to detect it from the columns."
        )
    missing = [c for c in FORMAT_COLUMNS[data_format] if c not in columns]
    if missing:
        raise ValueError(
            f"data_format={data_format!r} needs the column(s) {missing}, but the dataset has {sorted(columns)}; "
            "rename the columns or pass data_format=None to detect the format."
        )


# ------------------------------------------------------------------------------------------------ rendering


def _is_conversation(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(m, Mapping) for m in value)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    """Checked messages with ``None`` fields dropped (``datasets`` fills absent struct fields with ``None``)."""
    if not _is_conversation(value) or not value:
        raise TypeError(
            f"{where} must be a non-empty list of messages {{'role': ..., 'content': ...}}; got "
            f"{type(value).__name__} {str(value)[:80]!r}."
        )
    out = []
    for k, message in enumerate(value):
        if not isinstance(message.get("role"), str) or not {"content", "tool_calls"} & set(message):
            raise ValueError(
                f"{where}[{k}]={dict(message)!r} is not a message: each needs a 'role' string and a 'content' "
                "(or the 'tool_calls' of an assistant)."
            )
        out.append({key: v for key, v in message.items() if v is not None})
    return out


def _check_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}) has no chat template, which conversational data "
            f"(lists of messages) needs: {_NO_TEMPLATE_FIX}."
        )


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool, where: str
) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template (no special tokens added again)."""
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as err:  # jinja2's TemplateError and what templates raise themselves
        raise ValueError(
            f"{where}: the chat template failed to render {len(messages)} message(s) (add_generation_prompt="
            f"{generation_prompt}): {err}. The loss mask renders every prefix of a conversation up to each "
            "assistant turn; check the roles and their order."
        ) from err
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_prefix(full: list[int], prefix: list[int], where: str, what: str) -> None:
    if full[: len(prefix)] != prefix:
        raise ValueError(
            f"{where}: the chat template is not prefix-stable: {what} does not render (and tokenize) as a prefix "
            "of the whole conversation, so the assistant tokens cannot be located. Use a template that renders "
            "earlier turns the same whatever follows, or pass assistant_only_loss=False (every token counts)."
        )


def _opening(tokenizer: PreTrainedTokenizerBase, where: str) -> list[int]:
    """What a template writes before a conversation that opens with the assistant (BOS, a default system
    prompt, the assistant header); nothing when it cannot render an empty conversation."""
    try:
        return _render(tokenizer, [], True, where)
    except ValueError:
        return []


def _eos(tokenizer: PreTrainedTokenizerBase) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "the tokenizer has no eos token, which ends every plain-string completion (the model must learn to "
            "stop); set tokenizer.eos_token (for example to the model's end-of-text token)."
        )
    return int(eos)


# -------------------------------------------------------------------------------------------------- rows


def _fit(
    ids: list[int], loss: list[bool] | None, prompt_length: int, max_length: int, where: str
) -> dict[str, Any]:
    """Drop prompt tokens from the left until ``max_length`` tokens remain; refuse an over-long completion."""
    excess = len(ids) - max_length
    if excess > 0:
        completion = len(ids) - prompt_length
        if completion >= max_length:
            raise ValueError(
                f"{where}: the completion has {completion} tokens, which leaves no room for the prompt within "
                f"max_length={max_length}. Over-long rows lose prompt tokens from the left, never completion "
                f"tokens; raise max_length above {completion} or remove this row (e.g. dataset.filter)."
            )
        ids, prompt_length = ids[excess:], prompt_length - excess
        loss = loss[excess:] if loss is not None else None
    row: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
    if loss is not None:
        row["labels"] = [t if keep else -100 for t, keep in zip(ids, loss, strict=True)]
    row["prompt_length"] = prompt_length
    return row


def encode_prompt_completion(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    completion: str | list[dict[str, Any]],
    *,
    max_length: int,
    completion_only_loss: bool = True,
    where: str = "row",
) -> dict[str, Any]:
    """One prompt/completion pair as ``input_ids``, ``attention_mask``, ``labels`` and ``prompt_length``.

    Plain strings: the prompt is ``tokenizer(prompt)``; the completion is the rest of
    ``tokenizer(prompt + completion)`` when the prompt's ids are a prefix of it (as TRL tokenizes), else (a token
    would straddle the boundary) ``tokenizer(completion, add_special_tokens=False)``; then EOS (not doubled when
    the completion already ends with it). Either way ``input_ids[:prompt_length]`` is ``tokenizer(prompt)``. Conversational (lists of messages): the template's
    ``render(prompt, add_generation_prompt=True)`` is the prompt and the rest of ``render(prompt + completion)``
    the completion (its end-of-turn marker included). ``labels`` are the completion's ids and ``-100`` on the
    prompt (every id with ``completion_only_loss=False``). Longer than ``max_length``: prompt tokens are dropped
    from the left; a completion of ``max_length`` tokens or more is a ``ValueError``.

    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["the cat sat on the mat"])  # GPT-style: EOS <|endoftext|> = id 1
    >>> encode_prompt_completion(tok, "the cat", "sat", max_length=8)
    {'input_ids': [6, 2, 5, 1], 'attention_mask': [1, 1, 1, 1], 'labels': [-100, -100, 5, 1], 'prompt_length': 2}
    >>> encode_prompt_completion(tok, "the cat sat on the", "mat", max_length=4)["input_ids"]  # prompt cut
    [4, 6, 3, 1]
    """
    plain = isinstance(prompt, str) and isinstance(completion, str)
    if not plain and not (_is_conversation(prompt) and _is_conversation(completion)):
        raise TypeError(
            f"{where}: prompt and completion must both be strings or both be lists of messages; got "
            f"{type(prompt).__name__} and {type(completion).__name__}."
        )
    if plain:
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        joint = list(tokenizer(prompt + completion)["input_ids"])
        if len(joint) > len(prompt_ids) and joint[: len(prompt_ids)] == prompt_ids:
            completion_ids = joint[len(prompt_ids) :]  # the completion as tokenized in context (" 4" -> "Ġ4")
        else:  # a token spans the boundary (prompt "A: " + "4"): the prompt's own tokens stay the prompt
            completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        eos = _eos(tokenizer)
        if not completion_ids or completion_ids[-1] != eos:
            completion_ids.append(eos)
        ids = prompt_ids + completion_ids
    else:
        _check_template(tokenizer)
        prompt_msgs = _messages(prompt, f"{where}: prompt")
        full_msgs = prompt_msgs + _messages(completion, f"{where}: completion")
        prompt_ids = _render(tokenizer, prompt_msgs, True, where)
        ids = _render(tokenizer, full_msgs, False, where)
        _check_prefix(ids, prompt_ids, where, "the prompt with its generation prompt")
    n_prompt = len(prompt_ids)
    loss = [i >= n_prompt or not completion_only_loss for i in range(len(ids))]
    return _fit(ids, loss, n_prompt, max_length, where)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    *,
    max_length: int,
    where: str = "row",
) -> dict[str, Any]:
    """A prompt alone (prompt-only data): ``input_ids``, ``attention_mask`` and ``prompt_length`` (all of it), no
    labels. Conversational prompts end with the template's generation prompt; an over-long prompt keeps its last
    ``max_length`` tokens.

    >>> from hf_lite.testing import build_tokenizer
    >>> encode_prompt(build_tokenizer(["the cat sat"]), "the cat sat", max_length=2)
    {'input_ids': [2, 3], 'attention_mask': [1, 1], 'prompt_length': 2}
    """
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt)["input_ids"])
    else:
        _check_template(tokenizer)
        ids = _render(tokenizer, _messages(prompt, f"{where}: prompt"), True, where)
    ids = ids[-max_length:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "prompt_length": len(ids)}


def encode_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    *,
    max_length: int,
    assistant_only_loss: bool = True,
    where: str = "row",
) -> dict[str, Any]:
    """One conversation as ``input_ids``, ``attention_mask``, ``labels`` and ``prompt_length``.

    ``labels`` keep the ids of every assistant turn (content and end-of-turn marker; not the ``assistant``
    header the generation prompt writes) and are ``-100`` elsewhere; with ``assistant_only_loss=False`` every
    id counts. ``prompt_length`` is the length of ``render(messages[:last], add_generation_prompt=True)``, ``last``
    the last assistant message. Spans come from incremental prefix rendering (module docstring).

    Raises:
        ValueError: no chat template, no assistant message, a template that is not prefix-stable, or a last
            assistant turn of ``max_length`` tokens or more.

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    >>> row = encode_messages(tok, chat, max_length=64)  # doctest: +SKIP
    >>> tok.decode([t for t in row["labels"] if t != -100]).strip()  # doctest: +SKIP
    'Hello!<|im_end|>'

    (A tokenizer built in place: the module docstring.)
    """
    _check_template(tokenizer)
    messages = _messages(messages, f"{where}: messages")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        roles = [m["role"] for m in messages]
        raise ValueError(
            f"{where}: messages have no assistant turn (roles {roles}), so there is nothing to learn; add the "
            "assistant's reply, or give the conversation as a 'prompt' column (prompt-only data) for on-policy "
            "distillation."
        )
    ids = _render(tokenizer, messages, False, where)
    loss = [not assistant_only_loss] * len(ids)
    start = 0
    for i in turns:
        start_ids = _render(tokenizer, messages[:i], True, where) if i else _opening(tokenizer, where)
        end_ids = _render(tokenizer, messages[: i + 1], False, where)
        _check_prefix(ids, start_ids, where, f"messages[:{i}] with the generation prompt")
        _check_prefix(ids, end_ids, where, f"messages[:{i + 1}] (up to assistant turn {i})")
        start = len(start_ids)
        for k in range(start, len(end_ids)):
            loss[k] = True
    return _fit(ids, loss, start, max_length, where)


# ------------------------------------------------------------------------------------------------ datasets


def tokenize_chat(
    dataset: Dataset | DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    data_format: str | None = None,
    max_length: int = 1024,
    completion_only_loss: bool = True,
    assistant_only_loss: bool = True,
    num_proc: int | None = None,
) -> Dataset | DatasetDict:
    """Tokenize prompt-completion, prompt-only or ``messages`` rows (``datasets.map``; all columns replaced).

    Args:
        dataset: a ``Dataset`` or ``DatasetDict``.
        tokenizer: the model's tokenizer (with a chat template for conversational rows).
        data_format: ``"prompt-completion"``, ``"prompt"`` or ``"messages"``; ``None`` detects it from the
            columns (:func:`detect_data_format`). ``"text"`` is for :func:`hf_lite.data.tokenize_data`.
        max_length: the most tokens of a row (prompt tokens dropped from the left beyond it).
        completion_only_loss: labels on the completion only (prompt-completion rows).
        assistant_only_loss: labels on the assistant turns only (``messages`` rows).
        num_proc: processes for ``map``.

    Returns:
        rows with ``input_ids``, ``attention_mask``, ``labels`` (not for prompt-only data) and ``prompt_length``.

    >>> from datasets import Dataset
    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["the cat sat on the mat"])
    >>> ds = Dataset.from_dict({"prompt": ["the cat"], "completion": ["sat"]})
    >>> row = tokenize_chat(ds, tok, max_length=8)[0]
    >>> tok.convert_ids_to_tokens(row["input_ids"]), row["labels"][:2], row["prompt_length"]
    (['the', 'cat', 'sat', '<|endoftext|>'], [-100, -100], 2)
    """
    for name, flag in (
        ("completion_only_loss", completion_only_loss),
        ("assistant_only_loss", assistant_only_loss),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {type(flag).__name__} {flag!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2.")
    splits = dict(dataset) if isinstance(dataset, DatasetDict) else {"dataset": dataset}
    out = {}
    for split, ds in splits.items():
        fmt = data_format if data_format is not None else detect_data_format(ds.column_names)
        check_data_format(fmt, ds.column_names)
        if fmt == "text":
            raise ValueError(
                "data_format='text' is plain language modelling: tokenize it with hf_lite.data.tokenize_data("
                "task='causal-lm'), or give prompt/completion or messages columns."
            )

        def encode(row: dict[str, Any], index: int, fmt: str = fmt, split: str = split) -> dict[str, Any]:
            where = f"{split} row {index}"
            if fmt == "messages":
                return encode_messages(
                    tokenizer,
                    row["messages"],
                    max_length=max_length,
                    assistant_only_loss=assistant_only_loss,
                    where=where,
                )
            if fmt == "prompt":
                return encode_prompt(tokenizer, row["prompt"], max_length=max_length, where=where)
            return encode_prompt_completion(
                tokenizer,
                row["prompt"],
                row["completion"],
                max_length=max_length,
                completion_only_loss=completion_only_loss,
                where=where,
            )

        out[split] = ds.map(
            encode,
            with_indices=True,
            num_proc=num_proc,
            remove_columns=ds.column_names,
            desc=f"Tokenizing ({fmt})",
        )
    return DatasetDict(out) if isinstance(dataset, DatasetDict) else out["dataset"]
