"""Racing trainers in lock step, one optimizer step each in turn.

A step is timed from its release to ``on_step_end``; see the ``benchmarks.perf`` docstring for why the
rounds interleave.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class SteppedTrainer:
    """Runs ``trainer.train()`` in a worker thread that stops after every optimizer step until told to go on.

    ``step()`` lets the trainer take exactly one optimizer step and returns its timings: ``step_s`` from
    the release to ``on_step_end`` (batch fetching and collation included), ``compute_s`` from
    ``on_step_begin`` to ``on_step_end``. Only one thread runs at any time (the caller waits), so several
    trainers stepped in turn never compete for the CPU. ``close()`` lets the run finish (``on_train_end``
    included) or, if steps remain, stops it at the next step.
    """

    def __init__(self, trainer: Any, name: str = "trainer") -> None:
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback

        runner = self

        class _Gate(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                runner._begin = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                end = time.perf_counter()
                runner._last = {
                    "step_s": end - runner._resumed,
                    "compute_s": end - runner._begin,
                    "page_faults": _minor_faults() - runner._faults,
                }
                if not runner._stop:
                    runner._done.release()
                    runner._go.acquire()  # paused here until the next step() (or close())
                    runner._faults = _minor_faults()
                    runner._resumed = time.perf_counter()
                if runner._stop:
                    control.should_training_stop = True

        self.trainer = trainer
        self.name = name
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._stop = False
        self._error: BaseException | None = None
        self._last: dict[str, float] | None = None
        self._resumed = self._begin = 0.0
        self._faults = 0
        self.finished = False
        trainer.remove_callback(PrinterCallback)  # no end-of-training summary dict in the benchmark's log
        trainer.add_callback(_Gate())  # last: it runs after every other callback of the step
        self._thread = threading.Thread(target=self._work, name=f"stepped-{name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self._go.acquire()
        self._faults = _minor_faults()
        self._resumed = time.perf_counter()
        try:
            if not self._stop:
                self.trainer.train()
        except BaseException as err:  # handed to the caller by step()/close()
            self._error = err
        finally:
            self.finished = True
            self._done.release()

    def step(self) -> dict[str, float]:
        if self.finished:
            raise RuntimeError(f"{self.name}: training already finished; give it more max_steps.")
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed during training: {self._error!r}") from self._error
        if self._last is None:
            raise RuntimeError(f"{self.name}: train() ended without taking a step; give it more max_steps.")
        out, self._last = self._last, None
        return out

    def close(self) -> None:
        if not self.finished:
            self._stop = True
            self._go.release()
            self._done.acquire()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed: {self._error!r}") from self._error


def _minor_faults() -> int:
    """Minor page faults of this process so far: first touches of memory the allocator got from the system
    (only one participant runs at a time, so a step's difference is its own)."""
    import resource  # Unix only: imported where it is used

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class TimedCall:
    """A plain function as a participant of :func:`race` (one call per round)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def step(self) -> dict[str, float]:
        faults = _minor_faults()
        start = time.perf_counter()
        self.fn()
        seconds = time.perf_counter() - start
        return {"step_s": seconds, "compute_s": seconds, "page_faults": _minor_faults() - faults}

    def close(self) -> None:
        pass


def race(
    participants: dict[str, Any], rounds: int, limits: dict[str, int] | None = None
) -> dict[str, list[dict[str, float]]]:
    """``rounds`` rounds in which every participant takes one step, in an order rotating each round; a
    participant named in ``limits`` only takes part in that many first rounds."""
    names = list(participants)
    limits = limits or {}
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if r < limits.get(name, rounds):
                    out[name].append(participants[name].step())
    finally:
        errors = []
        for participant in participants.values():
            try:
                participant.close()
            except RuntimeError as err:
                errors.append(err)
        if errors:
            raise errors[0]
    return out


def step_times(steps: list[dict[str, float]], skip: int, key: str = "step_s") -> list[float]:
    """One timing of each step after the first ``skip`` (``key``: ``step_s`` or ``compute_s``)."""
    return [s[key] for s in steps[skip:]]


def window_sums(steps: list[dict[str, float]], size: int) -> list[float]:
    """Sums of ``size`` consecutive step times, the first window (warm-up) left out."""
    times = [x["step_s"] for x in steps]
    return [sum(times[i : i + size]) for i in range(size, len(times) - size + 1, size)]
