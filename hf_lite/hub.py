"""Publish a compressed model (or an exported folder) to the Hugging Face Hub in one commit, with its card.

:func:`push_to_hub` exports a model object first (:func:`hf_lite.exporting.export`, with its reload check),
builds the model card (:func:`hf_lite.card.build_model_card`) and uploads the folder and the card as
one commit. Transient server errors are retried where the client does not retry them itself (repo creation,
lookups, and the commit call, which is retried only after checking that the server did not apply it). A push
that fails leaves the repo as it was: commits are atomic on the Hub, and a repo or branch this call created
is deleted again. The retry and commit machinery lives in :mod:`hf_lite._hub_commit`; :data:`RETRY_BASE_WAIT`
here sets its first wait.

Tokens are passed to ``huggingface_hub`` and nowhere else: never logged, never written into the card or the
uploaded files. Logs name the repo, never local paths.

>>> from hf_lite.hub import push_to_hub
>>> push_to_hub(model, "me/tiny-llama-pruned", tokenizer=tokenizer, report={"pruning": "Wanda 2:4"})  # doctest: +SKIP
PushResult(repo_id='me/tiny-llama-pruned', ...)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_lite._hub_commit import (
    RetryPolicy,
    commit_with_retries,
    describe_error,
    file_ids,
    is_network_error,
    status_code,
)
from hf_lite.card import CompressionSummary, build_model_card
from hf_lite.checkpoint import CheckpointInfo, inspect_checkpoint
from hf_lite.exporting import ExportReport, export
from hf_lite.exporting.adapters import set_adapter_base

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["PushResult", "push_to_hub"]

#: First wait between retries, in seconds (doubled each time).
RETRY_BASE_WAIT = 1.0
#: Remote files that make up a checkpoint: on a new push, those the new folder does not have are deleted in the
#: same commit, so that a stale ``adapter_config.json`` or shard cannot shadow the new weights.
CHECKPOINT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.msgpack",
    "*.h5",
    "adapter_config.json",
    "adapter_model.*",
)


@dataclasses.dataclass
class PushResult:
    """What :func:`push_to_hub` did.

    Args:
        repo_id: the repo (with its namespace).
        revision: the branch pushed to (``"main"`` unless another was given).
        commit_oid: the commit the branch (or the pull request) now points to.
        commit_url: its URL.
        pr_url: the pull request's URL with ``create_pr=True``, else ``None``.
        committed: ``False`` when nothing had changed and no commit was made.
        files: the files of the pushed folder plus ``README.md`` (repo paths, sorted).
        deleted: stale checkpoint files removed from the repo in the same commit.
        card: the model card's text.
        export: the export report when a model object was pushed.

    >>> PushResult("me/m", "main", "abc", "https://hf.co/me/m/commit/abc", None, True, [], [], "").committed
    True
    """

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    pr_url: str | None
    committed: bool
    files: list[str]
    deleted: list[str]
    card: str
    export: ExportReport | None = None


def push_to_hub(
    model_or_folder: Any,
    repo_id: str,
    *,
    tokenizer: Any = None,
    report: CompressionSummary | Mapping[str, Any] | None = None,
    card: ModelCard | str | None = None,
    base_model: str | None = None,
    merge_adapter: bool = False,
    dtype: str | torch.dtype | None = None,
    check: bool = True,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    token: str | bool | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    language: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    tags: list[str] | None = None,
    delete_stale_files: bool = True,
    max_retries: int = 3,
) -> PushResult:
    """Upload a compressed model, or a checkpoint folder, to a Hub repo as one commit with a model card.

    A model object is exported first into a temporary folder (``merge_adapter``, ``dtype``, ``base_model``,
    ``tokenizer`` and ``check`` are passed to :func:`~hf_lite.exporting.export`); a folder is checked to be a
    loadable safetensors checkpoint (``config.json`` or ``adapter_config.json`` and the weights, no pickle
    files). The card is built from ``report``, the folder's counted figures and the export report, unless
    ``card`` is given. The repo is created if needed (``private``), the branch ``revision`` too, and the
    folder plus ``README.md`` go up in a single commit based on the branch head; files that did not change
    are not uploaded again (an unchanged push makes no commit), and stale checkpoint files of an earlier push
    are deleted in the same commit (``delete_stale_files``).

    Args:
        model_or_folder: a ``PreTrainedModel``/``PeftModel``, or the path of a checkpoint folder.
        repo_id: ``"namespace/name"`` (or ``"name"`` for the token's user).
        tokenizer: saved with a model object (ignored for a folder, which has its own).
        report: the compression report for the card (:class:`~hf_lite.card.CompressionSummary` or a
            dict with its field names).
        card: a ready ``huggingface_hub.ModelCard`` (or its text) to upload instead of building one.
        base_model: Hub id of the base model: written into a separate adapter's config and the card.
        merge_adapter, dtype, check: export options for a model object.
        private: create the repo private (passed to ``create_repo``; an existing repo keeps its visibility).
        revision: the branch to push to (created from ``main`` when missing); default ``main``.
        commit_message, commit_description: of the commit.
        create_pr: open a pull request instead of committing to the branch.
        token: a Hub token with write access; default: ``HF_TOKEN`` or the saved login. ``False``: anonymous.
        license, language, datasets, tags: card metadata.
        delete_stale_files: delete the repo's checkpoint files (weights, configs, adapter files) that the new
            folder does not have.
        max_retries: how many times a transient server error (5xx, 408, 429, network) is retried.

    Returns:
        A :class:`PushResult`.

    Example:

    >>> from hf_lite.hub import push_to_hub
    >>> result = push_to_hub("out/merged", "me/tiny-merged", report={"adapter": "LORA r=8"},
    ...                      private=True, commit_message="Merged QLoRA adapter")  # doctest: +SKIP
    >>> result.commit_url  # doctest: +SKIP
    'https://huggingface.co/me/tiny-merged/commit/...'
    """
    # ---- arguments (no request is made before they are all checked)
    repo_id = _check_repo_id(repo_id)
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision={revision!r} must be a branch name such as 'main' or 'dev', or None.")
    for name, value in (("create_pr", create_pr), ("delete_stale_files", delete_stale_files)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}.")
    if private is not None and not isinstance(private, bool):
        raise TypeError(f"private must be True, False or None; got {type(private).__name__} {private!r}.")
    for name, value in (("commit_message", commit_message), ("commit_description", commit_description)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None; got {type(value).__name__}.")
    if commit_message is not None and not commit_message.strip():
        raise ValueError("commit_message must not be empty; pass None for the default message.")
    if token is not None and not isinstance(token, (str, bool)):
        raise TypeError(
            f"token must be a token string, False (anonymous) or None (HF_TOKEN / saved login); got "
            f"{type(token).__name__}."
        )
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be a non-negative integer.")
    if card is not None and not isinstance(card, (str, ModelCard)):
        raise TypeError(
            f"card must be a huggingface_hub.ModelCard, its text, or None; got {type(card).__name__}."
        )

    is_folder = isinstance(model_or_folder, (str, os.PathLike))
    if is_folder:
        if tokenizer is not None:
            raise ValueError(
                "tokenizer is only used when pushing a model object; a folder is uploaded with the tokenizer "
                "files it holds. Save the tokenizer into the folder, or drop the argument."
            )
        info = inspect_checkpoint(model_or_folder)  # a folder that is no checkpoint fails before any request

    # ---- the Hub side first (token, repo, branch): problems there show before a long export
    api = HfApi(token=token)
    token_sent = isinstance(token, str) or (token is None and get_token() is not None)
    branch = revision or "main"
    policy = RetryPolicy(max_retries=max_retries, base_wait=RETRY_BASE_WAIT)
    try:
        existed, repo_id = _prepare_repo(api, repo_id, private=private, token_sent=token_sent, policy=policy)
    except Exception as err:
        unreachable = _network_error(err, repo_id, max_retries)
        if unreachable is not None:
            raise unreachable from err
        raise
    created_branch = None
    try:
        created_branch = _prepare_branch(api, repo_id, branch, policy)
        with tempfile.TemporaryDirectory(prefix="hf-lite-push-") as staging:
            export_report = None
            if is_folder:
                folder = Path(model_or_folder).expanduser()
            else:
                folder = Path(staging) / "checkpoint"
                export_report = export(
                    model_or_folder,
                    folder,
                    tokenizer=tokenizer,
                    merge_adapter=merge_adapter,
                    dtype=dtype,
                    base_model=base_model,
                    check=check,
                )
                if export_report is None:  # not the main process of a distributed run
                    raise RuntimeError("push_to_hub must run on the main process only (rank 0).")
                info = inspect_checkpoint(folder)
            if info.kind == "adapter" and info.base_model_is_local and base_model is None:
                raise ValueError(
                    "The adapter's config names a local folder as its base model (base_model_name_or_path), "
                    "which nobody else can load. Pass base_model='org/name' (the base model's Hub id): it is "
                    "written into the uploaded adapter_config.json and the card."
                )
            if card is None:
                card_text = build_model_card(
                    report,
                    repo_id=repo_id,
                    checkpoint=info,
                    export_report=export_report,
                    base_model=base_model,
                    license=license,
                    language=language,
                    datasets=datasets,
                    tags=tags,
                ).content
            else:
                card_text = card.content if isinstance(card, ModelCard) else card
            _check_card(card_text, token=token, paths=[folder, Path(staging), Path.home(), Path.cwd()])
            return _push_folder(
                api,
                folder,
                Path(staging),
                info,
                card_text,
                repo_id=repo_id,
                branch=branch,
                commit_message=commit_message or _default_message(info, export_report),
                commit_description=commit_description,
                create_pr=create_pr,
                base_model=base_model,
                delete_stale_files=delete_stale_files,
                policy=policy,
                export_report=export_report,
            )
    except BaseException as err:
        _undo_creation(api, repo_id, existed=existed, created_branch=created_branch)
        auth = _auth_error(err, repo_id, token_sent)
        if auth is not None:
            raise auth from err
        unreachable = _network_error(err, repo_id, max_retries)
        if unreachable is not None:
            raise unreachable from err
        raise


# --------------------------------------------------------------------------------------------------
# checks


def _check_repo_id(repo_id: Any) -> str:
    """``repo_id`` when it is a valid Hub repo id; a clear error when it is a path or malformed."""
    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a string such as 'org/name'; got {type(repo_id).__name__}.")
    if repo_id.startswith(("/", ".", "~")) or os.path.exists(repo_id) or repo_id.count("/") > 1:
        raise ValueError(
            f"repo_id={repo_id!r} is not a Hub repo id: it looks like a path. Repo ids look like 'org/name' "
            "(or 'name' for your own namespace); pass the folder as the first argument."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"repo_id={repo_id!r} is not a valid Hub repo id: {err} Use letters, digits, '-', '_' and '.', "
            "as 'org/name' or 'name'."
        ) from err
    return repo_id


def _check_card(text: str, *, token: Any, paths: list[Path]) -> None:
    """Refuse a card that holds the token or a local path (a user-given card or notes could)."""
    secrets_ = [t for t in (token if isinstance(token, str) else None, get_token()) if t]
    if any(s in text for s in secrets_):
        raise ValueError("The model card contains your Hub token; remove it from the card/report text.")
    for path in paths:
        for form in {str(path), str(path.resolve())}:
            if len(form) > 1 and form in text:
                raise ValueError(
                    "The model card contains a local path (of the folder being pushed, the working or the home "
                    "directory); remove it from the card/report text. Cards name models by Hub id only."
                )


def _default_message(info: CheckpointInfo, export_report: ExportReport | None) -> str:
    """``"Upload bnb-4bit (nf4) checkpoint with hf-lite"``, ``"Upload LORA r=8 adapter with hf-lite"``..."""
    if info.kind == "adapter":
        return f"Upload {info.adapter or 'adapter'} with hf-lite"
    what = info.quantization or (export_report.dtype if export_report else None) or info.dtype or "model"
    return f"Upload {what} checkpoint with hf-lite"


# --------------------------------------------------------------------------------------------------
# upload


def _auth_error(err: BaseException, repo_id: str, token_sent: bool) -> ValueError | None:
    """A clear error for a missing/invalid token or missing rights, else None."""
    if not isinstance(err, HfHubHTTPError):
        return None
    status = status_code(err)
    if status == 401:
        if token_sent:
            why = "the server rejected the token (invalid or expired)"
        else:
            why = "the server requires a token with write access and none was sent"
        return ValueError(
            f"Cannot push to {repo_id!r} on {constants.ENDPOINT}: {why}. Pass token=... (a write token), set "
            "HF_TOKEN, or log in with `hf auth login`."
        )
    if status == 403:
        return ValueError(
            f"Cannot push to {repo_id!r}: the token has no write access to that namespace. Use a repo id under "
            "your user or an organization you can write to, or a token with write permission."
        )
    return None


def _network_error(err: BaseException, repo_id: str, max_retries: int) -> ConnectionError | None:
    """A one-paragraph ``ConnectionError`` (an ``OSError``: ``hf-lite: error:`` on the command line) for a Hub
    that cannot be reached or is switched off, else None."""
    if isinstance(err, OfflineModeIsEnabled) or (
        constants.HF_HUB_OFFLINE and isinstance(err, ConnectionError)
    ):
        return ConnectionError(
            f"Cannot push to {repo_id!r}: the Hugging Face Hub is switched off in this environment "
            "(HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE (or set it to 0) and push again."
        )
    if not is_network_error(err):
        return None
    tries = f"after {max_retries} retr{'y' if max_retries == 1 else 'ies'}" if max_retries else "no retry"
    return ConnectionError(
        f"Cannot reach the Hugging Face Hub at {constants.ENDPOINT} to push {repo_id!r} ({describe_error(err)}, "
        f"{tries}). Check the network connection and any proxy (HTTPS_PROXY) and the HF_ENDPOINT setting, then "
        "push again: that is safe, since a push is one commit and files already on the Hub are not sent twice."
    )


def _prepare_repo(
    api: HfApi, repo_id: str, *, private: bool | None, token_sent: bool, policy: RetryPolicy
) -> tuple[bool, str]:
    """Create the repo if needed; (whether it existed, its full id). Auth problems become clear errors."""
    try:
        existed = policy.call(lambda: api.repo_exists(repo_id), "repo lookup")
        url = policy.call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create_repo")
    except HfHubHTTPError as err:
        auth = _auth_error(err, repo_id, token_sent)
        if auth is not None:
            raise auth from err
        raise
    return existed, url.repo_id


def _prepare_branch(api: HfApi, repo_id: str, branch: str, policy: RetryPolicy) -> str | None:
    """Create ``branch`` from ``main`` when it does not exist; returns its name if it was created."""
    if branch == "main" or branch.startswith("refs/"):
        return None
    refs = policy.call(lambda: api.list_repo_refs(repo_id), "list refs")
    if branch in {b.name for b in refs.branches}:
        return None
    policy.call(lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), "create_branch")
    return branch


def _push_folder(
    api: HfApi,
    folder: Path,
    staging: Path,
    info: CheckpointInfo,
    card_text: str,
    *,
    repo_id: str,
    branch: str,
    commit_message: str,
    commit_description: str | None,
    create_pr: bool,
    base_model: str | None,
    delete_stale_files: bool,
    policy: RetryPolicy,
    export_report: ExportReport | None,
) -> PushResult:
    """Upload ``folder`` plus the card as one commit on ``branch`` (stale checkpoint files deleted in it)."""
    card_path = staging / "README.md"
    card_path.write_text(card_text, encoding="utf-8")
    uploads = {f: folder / f for f in info.files if f != "README.md"}
    if info.kind == "adapter" and base_model is not None and info.base_model != base_model:
        uploads["adapter_config.json"] = set_adapter_base(
            folder / "adapter_config.json", base_model, dest=staging / "adapter_config.json"
        )
    uploads["README.md"] = card_path
    local_ids = {path: file_ids(p) for path, p in uploads.items()}

    parent = policy.call(lambda: api.repo_info(repo_id, revision=branch).sha, "repo_info")
    deletes: list[str] = []
    if delete_stale_files:
        remote = policy.call(lambda: api.list_repo_files(repo_id, revision=parent), "list files")
        deletes = sorted(
            f
            for f in remote
            if f not in uploads and any(fnmatch.fnmatch(f.split("/")[-1], p) for p in CHECKPOINT_PATTERNS)
        )

    def operations() -> list[Any]:
        adds = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(src)) for p, src in uploads.items()]
        return adds + [CommitOperationDelete(path_in_repo=p) for p in deletes]

    commit = commit_with_retries(
        api,
        repo_id,
        operations,
        local_ids,
        branch=branch,
        parent=parent,
        message=commit_message,
        description=commit_description,
        create_pr=create_pr,
        policy=policy,
    )
    committed = commit.oid != parent
    logger.info(
        "%s %s@%s: %d files%s%s",
        "pushed to" if committed else "nothing changed in",
        repo_id,
        branch,
        len(uploads),
        f", {len(deletes)} stale deleted" if deletes else "",
        f", pull request {commit.pr_url}" if commit.pr_url else "",
    )
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        pr_url=commit.pr_url,
        committed=committed,
        files=sorted(uploads),
        deleted=deletes,
        card=card_text,
        export=export_report,
    )


def _undo_creation(api: HfApi, repo_id: str, *, existed: bool, created_branch: str | None) -> None:
    """After a failed push: delete the repo or branch this call created, so the Hub is left as it was."""
    try:
        if not existed:
            commits = api.list_repo_commits(repo_id)
            if len(commits) <= 1:  # only the Hub's initial commit: nothing of anybody's would be lost
                api.delete_repo(repo_id, missing_ok=True)
                logger.info("push failed: deleted the repo %s it had created", repo_id)
        elif created_branch is not None:
            api.delete_branch(repo_id, branch=created_branch)
            logger.info("push failed: deleted the branch %s it had created in %s", created_branch, repo_id)
    except Exception as err:  # the original error matters more; say what is left behind
        logger.warning("push failed and cleaning up %s failed too (%s)", repo_id, describe_error(err))
