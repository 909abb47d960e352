"""Pytest fixture serving a local imitation of the Hugging Face Hub (see the ``tests.hub_server`` package).

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.hub_fixtures"]``, then:

>>> def test_push(hub_server, tmp_path):  # doctest: +SKIP
...     from huggingface_hub import HfApi
...     HfApi().create_repo("test-user/tiny")            # HF_TOKEN is set: writes are authenticated
...     HfApi().upload_folder(repo_id="test-user/tiny", folder_path=tmp_path)
...     AutoModel.from_pretrained("test-user/tiny")       # downloads through the server
...     assert hub_server.count("PUT", host="storage") == 1
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_server import HubServer


@pytest.fixture
def hub_server(tmp_path: Path) -> Iterator[HubServer]:
    """A fresh, empty Hub on 127.0.0.1 for one test (function scope: no state leaks between tests).

    While the test runs, ``huggingface_hub``/``transformers`` talk to it: ``HF_ENDPOINT`` and the client's
    import-time constants point at it, ``HF_HUB_OFFLINE`` is lifted, Xet is disabled (LFS uploads), the cache
    and token paths live under ``tmp_path / "hf_home"``, and ``HF_TOKEN`` holds ``hub_server.token`` (user
    ``test-user``, member of ``test-org``); pass ``token=False`` to a client call to act anonymously. All of
    it is restored afterwards, and the test errors at teardown if the server hit an internal bug.

    The yielded :class:`HubServer` has ``url``, ``storage_url``, ``token``, ``user``, the request log
    (``requests``, ``count(method, path_regex, host=..., status=...)``, ``clear_log()``), fault injection
    (``fail_next(path_regex, times=1, status=500, method=None)``, ``clear_faults()``) and server-side views of
    the repos (``head(repo_id, rev)``, ``files(repo_id, rev)``, ``history(repo_id, rev)``).
    """
    with HubServer() as hub, hub.client_env(tmp_path / "hf_home"):
        yield hub
    if hub.internal_errors:
        pytest.fail(
            "The test Hub server hit internal errors:\n" + "\n".join(hub.internal_errors), pytrace=False
        )
