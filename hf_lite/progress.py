"""Progress bars for hf-lite's long loops (evaluation, latency timing, teacher-cache precompute, export).

They are transformers' own bars (:data:`transformers.utils.logging.tqdm`), so they obey the same switches as
the Trainer's: ``transformers.utils.logging.disable_progress_bar()`` (or ``HF_HUB_DISABLE_PROGRESS_BARS=1``)
turns every one off. Like the Trainer's ``ProgressCallback`` (drawn on the world's process zero only), a bar is
drawn by the main process only: other ranks get a silent one, so ``accelerate launch`` prints each bar once.
As in transformers, a bar is not switched off when stderr is not a terminal (tqdm then writes its updates as
lines, at most one each ``mininterval`` seconds): a log file shows that a long phase is moving.

>>> with progress_bar(total=3, desc="demo", disable=True) as bar:
...     for _ in range(3):
...         bar.update(1)
>>> list(progress_bar(range(3), disable=True))
[0, 1, 2]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from transformers.utils import logging as hf_logging

from hf_lite._utils import is_main_process


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool | None = None,
) -> Any:
    """A tqdm bar made by transformers' factory (``tqdm`` when bars are enabled, a silent stand-in otherwise).

    Args:
        iterable: what to iterate over (as ``tqdm(iterable)``); ``None`` for a bar updated by hand.
        total: the number of steps (default: ``len(iterable)`` where it has one).
        desc: the label before the bar, e.g. ``"evaluate distill"``.
        unit: what one step is (``"batch"``, ``"pass"``, ``"example"``).
        disable: ``True`` draws nothing; ``None`` (default) draws on the main process only (rank 0 of the process
            group, or, before one is set up, the process whose ``RANK`` the launcher set to 0).
    """
    if (
        disable is None
    ):  # rank 0 of the process group; before one exists, the launcher's RANK (torchrun, accelerate)
        disable = not is_main_process() or os.environ.get("RANK", "0") != "0"
    return hf_logging.tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True
    )
