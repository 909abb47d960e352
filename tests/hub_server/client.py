"""Pointing the client libraries (``huggingface_hub``, ``transformers``, ``datasets``) at a test Hub and back."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.hub_server.server import HubServer


@contextmanager
def patched_client(hub: HubServer, home: str, set_token: bool) -> Iterator[None]:
    """The environment and the import-time constants of the client libraries pointed at ``hub`` (see
    :meth:`HubServer.client_env`), restored on exit."""
    from huggingface_hub import constants  # imported late: it reads the environment once, at import

    saved_env = dict(os.environ)
    restore: list[Callable[[], None]] = []

    def setattr_(obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)
        restore.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)

    cache = os.path.join(home, "hub")
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": home,
        "HF_HUB_CACHE": cache,
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
    }
    if set_token:
        env["HF_TOKEN"] = hub.token
    try:
        for name in (
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_DATASETS_OFFLINE",
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_OIDC_RESOURCE",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN",
            "HUGGINGFACE_CO_STAGING",
            "HUGGINGFACE_HUB_CACHE",
            "HF_ASSETS_CACHE",
        ):
            os.environ.pop(name, None)
        os.environ.update(env)
        # huggingface_hub reads these once, at import time.
        for name, value in {
            "ENDPOINT": hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
            "HF_HOME": home,
            "HF_HUB_CACHE": cache,
            "HUGGINGFACE_HUB_CACHE": cache,
            "HF_ASSETS_CACHE": os.path.join(home, "assets"),
            "HUGGINGFACE_ASSETS_CACHE": os.path.join(home, "assets"),
            "HF_XET_CACHE": os.path.join(home, "xet"),
            "HF_TOKEN_PATH": os.path.join(home, "token"),
            "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
            "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
        }.items():
            setattr_(constants, name, value)
        from huggingface_hub import hf_api

        setattr_(hf_api.api, "endpoint", hub.url)  # the instance behind the module-level functions
        if "transformers.utils.hub" in sys.modules:
            setattr_(
                sys.modules["transformers.utils.hub"], "_hf_api", None
            )  # rebuilt lazily with the new endpoint
        if "datasets.config" in sys.modules:
            dconfig = sys.modules["datasets.config"]
            setattr_(dconfig, "HF_ENDPOINT", hub.url)
            setattr_(dconfig, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
            setattr_(dconfig, "HF_HUB_OFFLINE", False)
            setattr_(dconfig, "HF_DATASETS_OFFLINE", False)
        _reset_client_caches()
        yield
    finally:
        for undo in reversed(restore):
            undo()
        if "transformers.utils.hub" in sys.modules:
            sys.modules[
                "transformers.utils.hub"
            ]._hf_api = None  # built during the test: it knows the dead server
        _reset_client_caches()
        os.environ.clear()
        os.environ.update(saved_env)


def _reset_client_caches() -> None:
    """Drop pooled connections and cached filesystem instances that remember an endpoint."""
    from huggingface_hub.utils import close_session

    close_session()
    if "huggingface_hub.hf_file_system" in sys.modules:
        sys.modules["huggingface_hub.hf_file_system"].HfFileSystem.clear_instance_cache()
