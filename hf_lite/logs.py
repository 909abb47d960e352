"""Keep third-party log floods to one line: bitsandbytes and kernels messages are shown once per process.

bitsandbytes logs ``MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization``
through ``logger.warning`` on every 8-bit matmul (hundreds of lines per evaluation; a ``warnings`` filter
does not see it), and, on CPUs with AVX512-BF16, a failed download of its fast 4-bit kernel from the Hub at
import (offline, the ``kernels`` package adds a line about skipping the kernel's trust check).
:func:`install_log_filters` puts a :class:`OnceFilter` on those libraries' loggers: each message (its format
string, whatever its arguments) passes once and its repeats are dropped; the kernel messages are shortened
and lowered to INFO, since the built-in CPU path gives the same results and nothing needs fixing.
:mod:`hf_lite.loading` installs the filters when it is imported (before PEFT imports bitsandbytes);
:func:`hf_lite.load_model` and the ``hf-lite`` command install them again (idempotent) for loggers made since.

>>> install_log_filters() is install_log_filters()
True
"""

from __future__ import annotations

import logging
import threading

__all__ = ["FLOOD_LOGGERS", "OnceFilter", "install_log_filters"]

#: Loggers whose repeated messages are shown once. A logger's filters only see records logged on that
#: logger itself (not those a child passes up), so every module that speaks is named, and children that
#: exist when :func:`install_log_filters` runs are covered too.
FLOOD_LOGGERS = (
    "bitsandbytes",
    "bitsandbytes.autograd._functions",
    "bitsandbytes.backends.cpu.ops",
    "bitsandbytes.backends.default.ops",
    "bitsandbytes.cextension",
    "bitsandbytes.functional",
    "bitsandbytes.nn.modules",
    "bitsandbytes.utils",
    "kernels",
    "kernels._internals.hf_hub",
    "kernels._internals.importer",
    "kernels._internals.resolver",
    "kernels._internals.variants",
    "kernels._internals.verify",
    "kernels._internals.validate",
)

#: Start of bitsandbytes' message when its CPU 4-bit kernel cannot be fetched from the Hub (offline, or
#: the kernels package refuses the repo); the built-in kernel is used instead.
KERNEL_FALLBACK = "Failed to load CPU gemm_4bit_forward from kernels-community"
#: The Hub repo of that kernel: the ``kernels`` package's messages about it (``Skipping publisher trust check
#: for 'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode``) go to INFO.
KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
SHORT_KERNEL_FALLBACK = (
    "bitsandbytes: the optional fast CPU 4-bit kernel (kernels-community/quantization-bitsandbytes) is not "
    "available; 4-bit layers use bitsandbytes' built-in CPU kernel (same results)."
)


class OnceFilter(logging.Filter):
    """A ``logging.Filter`` that lets each message through once per process.

    Messages are told apart by logger name and format string (``record.msg``), so ``"cast from %s"``
    with different arguments counts as one message. The first copy of a WARNING or louder message says
    that repeats are hidden; :attr:`suppressed` counts the dropped copies. bitsandbytes' kernel-download
    message is rewritten to one short INFO line.

    >>> import logging
    >>> log = logging.getLogger("doc.once")
    >>> log.propagate = False
    >>> seen = []
    >>> handler = logging.Handler(); handler.emit = seen.append; log.addHandler(handler)
    >>> log.addFilter(OnceFilter())
    >>> for dtype in ("float32", "float32", "bfloat16"):
    ...     log.warning("inputs will be cast from %s", dtype)
    >>> len(seen)
    1
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        with self._lock:
            if key in self._seen:
                self.suppressed += 1
                return False
            self._seen.add(key)
        fallback = isinstance(record.msg, str) and record.msg.startswith(KERNEL_FALLBACK)
        if fallback or (record.name.startswith("kernels") and KERNEL_REPO in str(record.msg)):
            if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
                return False  # handlers do not check the level again: drop it here when INFO is off
            if fallback:
                record.msg, record.args = SHORT_KERNEL_FALLBACK, ()
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        elif record.levelno >= logging.WARNING and isinstance(record.msg, str):
            record.msg = f"{record.msg} [shown once; hf-lite hides repeats]"
        return True


_FILTER = OnceFilter()


def install_log_filters() -> OnceFilter:
    """Put the process-wide :class:`OnceFilter` on every logger of :data:`FLOOD_LOGGERS` (and the existing
    children of ``bitsandbytes`` and ``kernels``). Idempotent; returns the filter.

    Call it before ``import bitsandbytes`` to catch the messages bitsandbytes logs at import.
    """
    names = set(FLOOD_LOGGERS) | {
        name for name in logging.root.manager.loggerDict if name.startswith(("bitsandbytes.", "kernels."))
    }
    for name in sorted(names):
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
    return _FILTER


install_log_filters()  # on import: hf_lite.loading imports this module before PEFT imports bitsandbytes
