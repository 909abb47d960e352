"""The local Hub server (package ``tests/hub_server/``) driven by the real client libraries.

The unmodified ``huggingface_hub`` client and ``transformers``' ``from_pretrained``: every test goes through
the real client code paths."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session, hf_raise_for_status

from tests.hub_server import HubServer, is_gitignored, is_lfs_tracked, lfs_patterns, parse_card_metadata

# huggingface_hub's LFS upload hands a file object to httpx2 as `data=`, which httpx2 deprecates: client side.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "test-user/tiny"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint (``save_pretrained`` output) plus a small text file, built once."""
    from hf_lite.testing import save_tiny_checkpoint

    folder = Path(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama"))
    (folder / "notes.txt").write_text("a small text file\n")
    return folder


def _raw_commit(hub: HubServer, repo_id: str, lines: list[dict], token: str | None) -> None:
    """POST an NDJSON commit through the client's HTTP session and error mapping, skipping its checks."""
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = get_session().post(
        f"{hub.url}/api/models/{repo_id}/commit/main", content=body, headers=headers
    )
    hf_raise_for_status(response)


def test_fixture_points_the_client_at_the_server(hub_server, tmp_path):
    assert constants.ENDPOINT == hub_server.url
    assert not constants.is_offline_mode()
    assert constants.HF_HUB_DISABLE_XET
    assert constants.HF_HUB_CACHE.startswith(str(tmp_path))
    assert HfApi().whoami()["name"] == "test-user"


def test_client_env_restores_everything(tmp_path):
    def state():
        return (
            constants.ENDPOINT,
            constants.HF_HUB_OFFLINE,
            constants.HF_HUB_CACHE,
            constants.HF_HUB_DISABLE_XET,
            constants.HF_TOKEN_PATH,
            os.environ.get("HF_HUB_OFFLINE"),
            os.environ.get("HF_ENDPOINT"),
            os.environ.get("HF_TOKEN"),
        )

    before = state()
    with HubServer() as hub:
        with hub.client_env(tmp_path):
            assert state()[0] == os.environ["HF_ENDPOINT"] == hub.url
            assert os.environ["HF_TOKEN"] == hub.token and "HF_HUB_OFFLINE" not in os.environ
        assert state() == before


def test_upload_then_from_pretrained_gives_identical_logits(hub_server, tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    api = HfApi()
    url = api.create_repo("tiny")  # no namespace: the token's user
    assert url.repo_id == REPO
    info = api.upload_folder(repo_id=REPO, folder_path=tiny_llama, commit_message="Add tiny llama")
    assert info.oid == api.model_info(REPO).sha == hub_server.head(REPO)
    assert hub_server.count("PUT", host="storage") == 1  # model.safetensors, the only LFS file

    tree = {f.path: f for f in api.list_repo_tree(REPO)}
    assert tree["model.safetensors"].lfs is not None
    assert tree["model.safetensors"].lfs.size == (tiny_llama / "model.safetensors").stat().st_size
    assert tree["config.json"].lfs is None and tree["notes.txt"].lfs is None
    assert [c.title for c in api.list_repo_commits(REPO)] == ["Add tiny llama", "initial commit"]

    notes = hf_hub_download(REPO, "notes.txt")
    assert Path(notes).read_text() == "a small text file\n"
    assert str(Path(notes).resolve()).startswith(constants.HF_HUB_CACHE)

    remote = AutoModelForCausalLM.from_pretrained(REPO).eval()
    local = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    assert hub_server.count("GET", r"^/lfs/", host="storage") == 1  # the weights came from the server's CDN
    input_ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(remote(input_ids).logits, local(input_ids).logits)


def test_reupload_of_unchanged_files_uploads_nothing(hub_server, tiny_llama):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=tiny_llama)
    head = hub_server.head(REPO)
    hub_server.clear_log()

    api.upload_folder(repo_id=REPO, folder_path=tiny_llama)
    assert hub_server.count("PUT") == 0
    assert hub_server.count("POST", r"/commit/") == 0  # nothing changed: the client skips the empty commit
    assert hub_server.head(REPO) == head

    # The same weights under another name: the object is already in the repo, so still no upload.
    api.upload_file(
        repo_id=REPO, path_or_fileobj=tiny_llama / "model.safetensors", path_in_repo="copy.safetensors"
    )
    assert hub_server.count("PUT") == 0
    assert hub_server.files(REPO)["copy.safetensors"] == (tiny_llama / "model.safetensors").read_bytes()


def test_failed_commit_leaves_repo_unchanged(hub_server, tiny_llama):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(repo_id=REPO, path_or_fileobj=b"v1\n", path_in_repo="notes.txt")
    files, head = hub_server.files(REPO), hub_server.head(REPO)

    rule = hub_server.fail_next(r"/commit/", status=500)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=REPO, folder_path=tiny_llama)
    assert excinfo.value.response.status_code == 500
    assert rule.hits == 1
    assert hub_server.files(REPO) == files and hub_server.head(REPO) == head
    assert [f.path for f in api.list_repo_tree(REPO)] == [".gitattributes", "notes.txt"]
    assert len(api.list_repo_commits(REPO)) == 2

    api.upload_folder(repo_id=REPO, folder_path=tiny_llama)  # the fault is spent: the push goes through
    assert api.file_exists(REPO, "model.safetensors")


def test_client_retries_transient_errors(hub_server, tiny_llama):
    api = HfApi()
    api.create_repo(REPO)
    preupload = hub_server.fail_next(r"/preupload/", status=503)
    put = hub_server.fail_next(r"^/upload/", status=500, method="PUT")
    api.upload_folder(repo_id=REPO, folder_path=tiny_llama)
    assert (preupload.hits, put.hits) == (1, 1)
    assert hub_server.count("POST", r"/preupload/") == 2
    assert hub_server.count("PUT", status=200) == 1
    assert hub_server.files(REPO)["model.safetensors"] == (tiny_llama / "model.safetensors").read_bytes()


def test_private_repo_needs_the_token(hub_server, tmp_path):
    api = HfApi()
    api.create_repo(REPO, private=True)
    api.upload_file(repo_id=REPO, path_or_fileobj=b"secret\n", path_in_repo="notes.txt")
    assert api.model_info(REPO).private is True
    assert Path(hf_hub_download(REPO, "notes.txt")).read_text() == "secret\n"

    with pytest.raises(RepositoryNotFoundError):
        api.model_info(REPO, token=False)
    with pytest.raises(RepositoryNotFoundError):  # a fresh cache: the client would fall back on a cached copy
        hf_hub_download(REPO, "notes.txt", token=False, cache_dir=tmp_path / "anonymous-cache")
    assert not api.repo_exists(REPO, token=False)
    assert not api.file_exists(REPO, "notes.txt", token=False)


def test_gated_repo_files_need_access(hub_server, tmp_path):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(repo_id=REPO, path_or_fileobj=b"gated\n", path_in_repo="notes.txt")
    api.update_repo_settings(REPO, gated="auto")
    assert api.model_info(REPO, token=False).gated == "auto"  # the info stays public...
    with pytest.raises(GatedRepoError):  # ...the files do not
        hf_hub_download(REPO, "notes.txt", token=False, cache_dir=tmp_path / "anonymous-cache")
    with pytest.raises(GatedRepoError):
        api.file_exists(REPO, "notes.txt", token=False)
    assert Path(hf_hub_download(REPO, "notes.txt")).read_text() == "gated\n"  # the owner has access


def test_public_repo_is_readable_without_token(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(repo_id=REPO, path_or_fileobj=b"hello\n", path_in_repo="notes.txt")
    assert api.model_info(REPO, token=False).private is False
    assert Path(hf_hub_download(REPO, "notes.txt", token=False)).read_text() == "hello\n"


def test_writes_need_a_valid_token(hub_server):
    api = HfApi()
    with pytest.raises(HfHubHTTPError, match="Authentication required") as excinfo:
        api.create_repo(REPO, token=False)
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid credentials in Authorization header"):
        api.create_repo(REPO, token="hf_wrong")
    assert not api.repo_exists(REPO)

    api.create_repo(REPO)
    head = hub_server.head(REPO)
    with pytest.raises(HfHubHTTPError, match="Authentication required"):
        api.upload_file(repo_id=REPO, path_or_fileobj=b"x\n", path_in_repo="x.txt", token=False)
    with pytest.raises(HfHubHTTPError, match="rights to create"):
        api.create_repo("someone-else/tiny")
    assert hub_server.head(REPO) == head


def test_invalid_repo_ids_are_rejected(hub_server):
    with pytest.raises(HFValidationError):  # the client checks first...
        HfApi().create_repo("test-user/bad..name")
    # ...and the server applies the same rules to whatever reaches it.
    for name in ("bad..name", "-lead", "trail.", "x" * 97, "a/b", "name.git"):
        response = get_session().post(
            f"{hub_server.url}/api/repos/create",
            json={"name": name},
            headers={"Authorization": f"Bearer {hub_server.token}"},
        )
        with pytest.raises(BadRequestError, match="Invalid repo name"):
            hf_raise_for_status(response)
    assert hub_server.repos == {}


def test_create_repo_exist_ok(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    api.delete_repo(REPO)
    assert not api.repo_exists(REPO)
    api.delete_repo(REPO, missing_ok=True)


def test_invalid_card_metadata_is_rejected(hub_server, tmp_path):
    api = HfApi()
    api.create_repo(REPO)
    folder = tmp_path / "card"
    folder.mkdir()
    cases = {
        "---\ntags: not-a-list\n---\n# Model\n": '"tags" must be an array',
        "---\nlicense: [mit]\n---\n": '"license" must be a string',
        "---\ntags: [a\n---\n": "invalid YAML",
        "---\nmodel-index:\n  - results: []\n---\n": '"model-index[0].name" is required',
    }
    for card, message in cases.items():
        (folder / "README.md").write_text(card)
        with pytest.raises(ValueError, match="Invalid metadata in README.md") as excinfo:
            api.upload_folder(repo_id=REPO, folder_path=folder)
        assert message in str(excinfo.value)
    assert list(hub_server.files(REPO)) == [".gitattributes"]

    card = "---\nlicense: apache-2.0\ntags: [tiny, llama]\ndate: 2024-05-01\n---\n# Tiny\n"
    (folder / "README.md").write_text(card)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    info = api.model_info(REPO)
    assert info.card_data.license == "apache-2.0" and info.tags == ["tiny", "llama"]


def test_commit_endpoint_validates_and_is_atomic(hub_server):
    """What reaches /commit without the client's pre-checks is validated there, all or nothing."""
    HfApi().create_repo(REPO)
    head = hub_server.head(REPO)
    header = {"key": "header", "value": {"summary": "raw commit"}}
    good = {
        "key": "file",
        "value": {"path": "ok.txt", "encoding": "base64", "content": base64.b64encode(b"ok").decode()},
    }
    bad_card = {
        "key": "file",
        "value": {
            "path": "README.md",
            "encoding": "base64",
            "content": base64.b64encode(b"---\ntags: 3\n---\n").decode(),
        },
    }
    missing_lfs = {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64}}
    binary = {
        "key": "file",
        "value": {"path": "w.bin", "encoding": "base64", "content": base64.b64encode(b"\0\1\2").decode()},
    }
    for op, message in (
        (bad_card, "YAML metadata error"),
        (missing_lfs, "LFS pointer pointed to a file that does not"),
        (binary, "binary files"),
    ):
        with pytest.raises(BadRequestError, match=message):
            _raw_commit(hub_server, REPO, [header, good, op], hub_server.token)
        assert hub_server.head(REPO) == head and "ok.txt" not in hub_server.files(REPO)
    with pytest.raises(RemoteEntryNotFoundError, match="doesn't exist"):
        _raw_commit(
            hub_server,
            REPO,
            [header, good, {"key": "deletedFile", "value": {"path": "nope.txt"}}],
            hub_server.token,
        )
    with pytest.raises(HfHubHTTPError, match="Authentication required"):
        _raw_commit(hub_server, REPO, [header, good], None)
    assert hub_server.head(REPO) == head

    _raw_commit(hub_server, REPO, [header, good], hub_server.token)
    assert hub_server.files(REPO)["ok.txt"] == b"ok"


def test_upload_modes_follow_the_hub_rules(hub_server, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.md").write_text("text\n")
    (folder / "weights.bin").write_text("text, but *.bin is tracked by LFS in .gitattributes\n")
    (folder / "sub" / "blob.dat").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")  # binary content
    (folder / "big.txt").write_bytes(b"x" * (10 * 1024 * 1024 + 1))  # text, but over 10 MiB
    (folder / ".gitignore").write_text("*.log\n")
    (folder / "debug.log").write_text("ignored by .gitignore\n")
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True) if hasattr(f, "lfs")}
    assert {p for p, f in tree.items() if f.lfs is not None} == {"weights.bin", "sub/blob.dat", "big.txt"}
    assert {p for p, f in tree.items() if f.lfs is None} == {".gitattributes", ".gitignore", "notes.md"}
    assert hub_server.count("PUT", host="storage") == 3


def test_create_pr(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    main_head = hub_server.head(REPO)
    info = api.upload_file(repo_id=REPO, path_or_fileobj=b"proposal\n", path_in_repo="pr.txt", create_pr=True)
    assert (info.pr_revision, info.pr_num) == ("refs/pr/1", 1)
    assert info.pr_url == f"{hub_server.url}/{REPO}/discussions/1"
    assert hub_server.head(REPO) == main_head
    assert not api.file_exists(REPO, "pr.txt")
    assert api.file_exists(REPO, "pr.txt", revision="refs/pr/1")
    assert Path(hf_hub_download(REPO, "pr.txt", revision="refs/pr/1")).read_text() == "proposal\n"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", info.oid)]
    second = api.upload_file(repo_id=REPO, path_or_fileobj=b"more\n", path_in_repo="pr2.txt", create_pr=True)
    assert second.pr_revision == "refs/pr/2"


def test_branches_tags_and_revisions(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    first = api.upload_file(repo_id=REPO, path_or_fileobj=b"v1\n", path_in_repo="v.txt")
    api.create_branch(REPO, branch="dev")
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_branch(REPO, branch="dev")
    assert excinfo.value.response.status_code == 409
    api.create_branch(REPO, branch="dev", exist_ok=True)

    api.upload_file(repo_id=REPO, path_or_fileobj=b"v2\n", path_in_repo="v.txt", revision="dev")
    assert Path(hf_hub_download(REPO, "v.txt")).read_text() == "v1\n"
    assert Path(hf_hub_download(REPO, "v.txt", revision="dev")).read_text() == "v2\n"
    assert Path(hf_hub_download(REPO, "v.txt", revision=first.oid)).read_text() == "v1\n"
    api.create_tag(REPO, tag="v1.0", revision=first.oid)
    assert api.model_info(REPO, revision="v1.0").sha == first.oid
    with pytest.raises(BadRequestError, match="not a branch"):
        api.upload_file(repo_id=REPO, path_or_fileobj=b"x\n", path_in_repo="x.txt", revision="v1.0")
    assert {b.name for b in api.list_repo_refs(REPO).branches} == {"main", "dev"}

    with pytest.raises(RevisionNotFoundError):
        api.upload_file(repo_id=REPO, path_or_fileobj=b"x\n", path_in_repo="x.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "v.txt", revision="no-such-branch")
    assert not api.revision_exists(REPO, "no-such-branch")

    with pytest.raises(HfHubHTTPError, match="A commit has happened since") as excinfo:
        api.upload_file(
            repo_id=REPO,
            path_or_fileobj=b"v3\n",
            path_in_repo="v.txt",
            parent_commit=first.oid,
            revision="dev",
        )
    assert excinfo.value.response.status_code == 412
    api.delete_branch(REPO, branch="dev")
    assert not api.revision_exists(REPO, "dev")


def test_tree_listing_and_missing_entries(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    api.create_commit(
        REPO,
        commit_message="files",
        operations=[
            CommitOperationAdd("a/b/c.txt", b"c\n"),
            CommitOperationAdd("a/d.txt", b"d\n"),
            CommitOperationAdd("e.txt", b"e\n"),
        ],
    )
    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(REPO)}
    assert top == {("RepoFile", ".gitattributes"), ("RepoFolder", "a"), ("RepoFile", "e.txt")}
    assert {e.path for e in api.list_repo_tree(REPO, path_in_repo="a")} == {"a/b", "a/d.txt"}
    assert set(api.list_repo_files(REPO)) == {".gitattributes", "a/b/c.txt", "a/d.txt", "e.txt"}
    expanded = {e.path: e for e in api.list_repo_tree(REPO, expand=True)}
    assert expanded["e.txt"].last_commit.title == "files"
    assert expanded[".gitattributes"].last_commit.title == "initial commit"
    assert [p.path for p in api.get_paths_info(REPO, ["a/d.txt", "a", "nope"])] == ["a", "a/d.txt"]

    assert api.file_exists(REPO, "a/b/c.txt") and not api.file_exists(REPO, "model.safetensors.index.json")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors.index.json")
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="no-folder"))
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-user/does-not-exist")

    hub_server.page_sizes.update(tree=2, tree_expanded=2, commits=1)  # the client follows the Link headers
    assert {e.path for e in api.list_repo_tree(REPO, recursive=True)} == {
        ".gitattributes",
        "a",
        "a/b",
        "a/b/c.txt",
        "a/d.txt",
        "e.txt",
    }
    assert len(list(api.list_repo_tree(REPO, expand=True))) == 3
    assert [c.title for c in api.list_repo_commits(REPO)] == ["files", "initial commit"]
    assert hub_server.count("GET", r"/commits/") == 2

    api.delete_folder("a/b", repo_id=REPO)
    api.delete_file("e.txt", repo_id=REPO)
    assert set(api.list_repo_files(REPO)) == {".gitattributes", "a/d.txt"}


def test_open_mode_accepts_anonymous_writes(tmp_path):
    with HubServer(require_auth=False) as hub, hub.client_env(tmp_path, set_token=False):
        HfApi().create_repo("test-user/open", token=False)
        HfApi().upload_file(
            repo_id="test-user/open", path_or_fileobj=b"hi\n", path_in_repo="a.txt", token=False
        )
        assert hub.files("test-user/open")["a.txt"] == b"hi\n"
    assert not hub.internal_errors


def test_dataset_repos(hub_server):
    api = HfApi()
    api.create_repo("test-org/data", repo_type="dataset")
    api.upload_file(
        repo_id="test-org/data", repo_type="dataset", path_or_fileobj=b"a,b\n1,2\n", path_in_repo="t.csv"
    )
    assert api.dataset_info("test-org/data").sha == hub_server.head("test-org/data", repo_type="dataset")
    path = hf_hub_download("test-org/data", "t.csv", repo_type="dataset")
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    assert not api.repo_exists("test-org/data")  # a model repo of that name does not exist


def test_pattern_helpers():
    rules = lfs_patterns(
        "*.bin filter=lfs diff=lfs merge=lfs -text\nsaved_model/**/* filter=lfs\nkeep.bin -filter\n"
    )
    assert is_lfs_tracked("w.bin", rules) and is_lfs_tracked("deep/w.bin", rules)
    assert is_lfs_tracked("saved_model/x/y.pb", rules) and not is_lfs_tracked("other/saved_model.txt", rules)
    assert not is_lfs_tracked("keep.bin", rules)
    ignore = "*.log\n/build/\n!keep.log\n"
    assert is_gitignored("a/debug.log", ignore) and not is_gitignored("keep.log", ignore)
    assert is_gitignored("build/x.txt", ignore) and not is_gitignored("src/build", ignore)
    assert parse_card_metadata("no front matter") is None
    assert parse_card_metadata("---\nlanguage: [en, fr]\n---\n") == {"language": ["en", "fr"]}
    with pytest.raises(ValueError, match=r'"language\[1\]" must be a string'):
        parse_card_metadata("---\nlanguage: [en, 3]\n---\n")
