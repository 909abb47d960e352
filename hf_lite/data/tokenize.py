"""Tokenize data for a task: classification rows, causal-LM blocks of ``max_length``, or chat/completion rows.

:func:`tokenize_data` tokenizes with the model's tokenizer: classification rows become
``input_ids``/``attention_mask``/``labels``; causal-LM text is concatenated and cut into blocks of
``max_length`` tokens with ``labels = input_ids`` (as transformers' ``run_clm`` example does); causal-LM
prompt/completion, prompt-only and ``messages`` data is tokenized row by row with loss masks
(:mod:`hf_lite.data.chat`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

from hf_lite.data.chat import check_data_format, detect_data_format, tokenize_chat
from hf_lite.tasks import normalize_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TOKENIZE_TASKS", "tokenize_data"]

#: Tasks :func:`tokenize_data` prepares rows for: names of :data:`hf_lite.tasks.TASKS` (token classification is
#: not implemented yet).
TOKENIZE_TASKS = ("sequence-classification", "causal-lm")


def tokenize_data(
    dataset: Dataset | DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    task: str,
    max_length: int = 128,
    padding: bool = False,
    add_eos: bool = False,
    batch_size: int = 1000,
    num_proc: int | None = None,
    data_format: str | None = None,
    completion_only_loss: bool = True,
    assistant_only_loss: bool = True,
) -> Dataset | DatasetDict:
    """Tokenize canonical ``text`` (and ``text_pair``/``label``) columns for ``task`` with ``datasets.map``.

    * ``"sequence-classification"``: ``tokenizer(text[, text_pair], truncation=True, max_length=...)``
      gives ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer makes them);
      ``label`` becomes ``labels``. Rows are unpadded unless ``padding=True`` (pad to ``max_length``);
      pad per batch with ``DataCollatorWithPadding``.
    * ``"causal-lm"``: every text is tokenized (special tokens as the tokenizer adds them, plus the eos
      token after each text when ``add_eos``), the ids of each map batch of ``batch_size`` texts are
      concatenated and cut into blocks of exactly ``max_length`` tokens; the remainder of each map batch is
      dropped. ``labels`` = ``input_ids`` (the model shifts them), ``attention_mask`` is all ones.
    * ``"causal-lm"`` with ``prompt``/``completion``, ``prompt`` only or ``messages`` columns (TRL's formats;
      ``data_format`` or detected from the columns, ``messages`` first, then ``prompt``, then ``text``): one row
      per example with ``input_ids``, ``attention_mask``, ``labels`` (``-100`` outside the completion or the
      assistant turns; no labels for prompt-only data) and ``prompt_length``; conversations through the
      tokenizer's chat template; over-long rows lose prompt tokens from the left
      (:func:`hf_lite.data.chat.tokenize_chat`). Batch them with :class:`hf_lite.data.CompletionCollator`.

    Token classification is not supported yet. All original columns are removed.

    Args:
        dataset: a ``Dataset`` or ``DatasetDict`` from :func:`load_data` (or any with a ``text`` column).
        tokenizer: the model's tokenizer.
        task: ``"sequence-classification"`` or ``"causal-lm"`` (aliases such as ``"text-classification"`` work).
        max_length: truncation length (classification) or block length (causal LM).
        padding: pad classification rows to ``max_length``.
        add_eos: append ``tokenizer.eos_token_id`` after each text (causal LM; use it for document datasets).
        batch_size: texts per ``map`` batch.
        num_proc: processes for ``map``.
        data_format: causal LM only: ``"text"``, ``"prompt-completion"``, ``"prompt"`` or ``"messages"``;
            ``None`` detects it from the columns.
        completion_only_loss: prompt-completion rows: labels on the completion only (else on every token).
        assistant_only_loss: ``messages`` rows: labels on the assistant turns only (else on every token).

    >>> from datasets import Dataset
    >>> from hf_lite.testing import build_tokenizer
    >>> tok = build_tokenizer(["the cat sat on the mat"], style="bert")
    >>> ds = Dataset.from_dict({"text": ["the cat sat", "the mat"], "label": [1, 0]})
    >>> out = tokenize_data(ds, tok, task="classification", max_length=8)
    >>> out.column_names, tok.convert_ids_to_tokens(out[1]["input_ids"]), out[1]["labels"]
    (['input_ids', 'attention_mask', 'labels'], ['[CLS]', 'the', 'mat', '[SEP]'], 0)
    """
    task = normalize_task(task)
    if task not in TOKENIZE_TASKS:
        raise ValueError(
            f"task={task!r} is not supported by tokenize_data; choose one of {list(TOKENIZE_TASKS)} "
            "(token classification is not implemented yet)."
        )
    if not isinstance(dataset, (Dataset, DatasetDict)):
        raise TypeError(f"dataset must be a datasets.Dataset or DatasetDict; got {type(dataset).__name__}.")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise TypeError(
            f"tokenizer must be a transformers tokenizer (AutoTokenizer.from_pretrained(...)); got "
            f"{type(tokenizer).__name__}."
        )
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2.")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000 and max_length > model_max:
        raise ValueError(
            f"max_length={max_length} exceeds the tokenizer's model_max_length={model_max}; the model has no "
            f"positions beyond it. Use max_length <= {model_max}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    if task == "causal-lm":
        formats = set()
        for ds in splits:
            fmt = data_format if data_format is not None else detect_data_format(ds.column_names)
            check_data_format(fmt, ds.column_names)
            formats.add(fmt)
        if formats != {"text"}:
            if padding or add_eos:
                raise ValueError(
                    f"padding/add_eos apply to text blocks; {sorted(formats - {'text'})} rows are tokenized one by "
                    "one (EOS after each plain completion) and padded per batch by hf_lite.data.CompletionCollator."
                )
            if "text" in formats:
                raise ValueError(
                    f"the splits mix data formats {sorted(formats)}; give every split the same columns."
                )
            return tokenize_chat(
                dataset,
                tokenizer,
                data_format=data_format,
                max_length=max_length,
                completion_only_loss=completion_only_loss,
                assistant_only_loss=assistant_only_loss,
                num_proc=num_proc,
            )
    elif data_format is not None:
        raise ValueError(
            f"data_format={data_format!r} applies to causal-LM data; task={task!r} reads a 'text' column. "
            "Leave data_format=None."
        )
    for ds in splits:
        if "text" not in ds.column_names:
            raise ValueError(
                f"dataset has no 'text' column (columns: {ds.column_names}); load it with load_data(columns="
                "{'text': <column>, ...}) or rename the column."
            )

    if task == "sequence-classification":
        if padding and tokenizer.pad_token_id is None:
            raise ValueError(
                "padding=True needs a pad token, but the tokenizer has none; set tokenizer.pad_token = "
                "tokenizer.eos_token (and the model's config.pad_token_id), or keep padding=False."
            )

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            pair = batch.get("text_pair")
            enc = tokenizer(
                batch["text"],
                pair,
                truncation=True,
                max_length=max_length,
                padding="max_length" if padding else False,
            )
            out = dict(enc)
            if "label" in batch:
                out["labels"] = batch["label"]
            return out

    else:
        if padding:
            raise ValueError(
                "padding=True applies to classification; causal-LM blocks all have max_length tokens."
            )
        eos = tokenizer.eos_token_id
        if add_eos and eos is None:
            raise ValueError("add_eos=True but the tokenizer has no eos token; pass add_eos=False.")

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            ids = tokenizer(batch["text"], verbose=False)["input_ids"]
            flat = [t for seq in ids for t in ([*seq, eos] if add_eos else seq)]
            n_blocks = len(flat) // max_length
            blocks = [flat[i * max_length : (i + 1) * max_length] for i in range(n_blocks)]
            return {
                "input_ids": blocks,
                "attention_mask": [[1] * max_length for _ in blocks],
                "labels": blocks,
            }

    def tokenize(ds: Dataset) -> Dataset:  # per split: splits may have different columns (e.g. no label)
        return ds.map(
            encode,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc,
            remove_columns=ds.column_names,
            desc=f"Tokenizing ({task})",
        )

    out = (
        DatasetDict({k: tokenize(v) for k, v in dataset.items()})
        if isinstance(dataset, DatasetDict)
        else tokenize(dataset)
    )
    if task == "causal-lm":
        for split_name, ds in out.items() if isinstance(out, DatasetDict) else [("dataset", out)]:
            if ds.num_rows == 0:
                raise ValueError(
                    f"{split_name} gives no block of max_length={max_length} tokens: each map batch of "
                    f"{batch_size} texts has fewer tokens than that. Use a smaller max_length or more text."
                )
    return out
