"""The benchmark harness: find benchmark modules, run them, keep their measured JSON, write RESULTS.md.

Entry command (from the repository root)::

    python -m benchmarks                   # every benchmark, full sizes -> results/*.json, RESULTS.md
    python -m benchmarks sst2_encoder      # one (or several) by name
    python -m benchmarks --quick           # reduced sizes, every benchmark -> benchmarks/out/quick/
    python -m benchmarks --list            # what is registered
    python -m benchmarks --render          # rebuild RESULTS.md from the JSON files only (no run)
    python -m benchmarks sst2_encoder --set train_rows=16000   # a changed setting -> benchmarks/out/custom/

**Registry.** A benchmark is a module or sub-package of the ``benchmarks`` package (not starting with
``_``, not ``harness``/``common``/``rendering``) that defines ``run(ctx) -> dict``. Dropping such a file
into ``benchmarks/`` is all it takes; a large benchmark is a sub-package whose ``__init__`` holds its
settings and ``run`` and whose other modules hold its measuring and its rendering code (``perf/``,
``causal_lm/``, ``sst2_encoder/``). Optional attributes: ``TITLE`` (default: the docstring's first line),
``ORDER`` (position in runs and in RESULTS.md, default 100), ``render(record) -> str`` (replaces the
generic Markdown of :func:`benchmarks.rendering.render_record`). Keep heavy imports (torch,
transformers) inside functions so that discovery stays fast.

**What ``run`` returns** (JSON-able; every number in RESULTS.md comes from it)::

    {"summary": "one paragraph",
     "tables": [{"title": ..., "columns": [{"key": "accuracy", "label": "accuracy", "format": "pct"}, ...],
                 "rows": [{"accuracy": 0.91, ...}, ...], "notes": [...]}],
     "goals": [{"goal": "...", "measured": "...", "met": true}],   # met: true / false / null (not measured)
     "notes": ["..."],
     "settings": {...}, "timings_s": {...}, ...anything else (raw measurements)}

Column formats: ``pct`` (0.912 -> 91.2%), ``pct2``, ``params`` (22.7M), ``bytes`` (86.7 MB), ``ms``,
``x`` (2.31×), ``int``, ``gib``, or a ``str.format`` spec such as ``"{:.3f}"``.

**Context.** ``ctx`` carries ``quick``, ``seed``, ``threads``, ``data_dir``, ``cache_dir`` (persistent
across runs, git-ignored: trained teachers), ``work_dir`` (scratch for this run), ``overrides`` (from
``--set``) and :meth:`Context.settings`, which merges a module's defaults, its quick sizes and the
overrides.

**Isolation.** Each benchmark runs in its own subprocess (:func:`benchmarks.common.run_isolated`), so
its peak memory is measured for it alone and a failure does not stop the others (``--in-process`` to
debug). The harness wraps the result into a record (command, machine, git commit, wall time, peak RSS)
written to ``<out>/results/<name>.json``; ``<out>/RESULTS.md`` is then rebuilt from every JSON there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import json
import os
import pkgutil
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import common
from benchmarks.rendering import (
    ENTRY,
    FORMATS,
    format_value,
    render_goals,
    render_record,
    render_results,
    render_table,
)
from hf_lite._utils import atomic_write_text

__all__ = [  # the rendering functions are part of the harness's interface (tests, --render)
    "ENTRY",
    "FORMATS",
    "Benchmark",
    "Context",
    "convert_setting",
    "discover",
    "format_value",
    "load_records",
    "main",
    "parse_overrides",
    "render_goals",
    "render_record",
    "render_results",
    "render_table",
    "run_benchmark",
    "write_record",
]

SCHEMA = 1
NOT_BENCHMARKS = frozenset({"harness", "common", "rendering"})
#: Output folder of a default full run: results/ and RESULTS.md are committed.
FULL_OUT = common.BENCH_DIR
QUICK_OUT = common.BENCH_DIR / "out" / "quick"
CUSTOM_OUT = common.BENCH_DIR / "out" / "custom"
CACHE_DIR = common.BENCH_DIR / ".cache"


# ------------------------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One registered benchmark module."""

    name: str
    module: ModuleType
    title: str
    order: int

    @property
    def run(self) -> Callable[[Context], dict[str, Any]]:
        return self.module.run

    @property
    def render(self) -> Callable[[dict[str, Any]], str] | None:
        return getattr(self.module, "render", None)


def discover(package: str = "benchmarks", errors: dict[str, str] | None = None) -> dict[str, Benchmark]:
    """Every benchmark of ``package`` (a module or sub-package with a callable ``run``), by name, in ``ORDER``.

    A module that fails to import raises, unless ``errors`` is given: then its error is recorded there
    (``{name: "ExceptionType: message"}``) and the other benchmarks stay usable.
    """
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name in NOT_BENCHMARKS:
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception as err:
            if errors is None:
                raise
            errors[info.name] = f"{type(err).__name__}: {err}"
            continue
        if not callable(getattr(module, "run", None)):
            continue
        doc_title = (module.__doc__ or info.name).strip().splitlines()[0].rstrip(".")
        title, order = getattr(module, "TITLE", doc_title), getattr(module, "ORDER", 100)
        found.append(Benchmark(info.name, module, title, order))
    return {b.name: b for b in sorted(found, key=lambda b: (b.order, b.name))}


# ------------------------------------------------------------------------------------------------ context


@dataclasses.dataclass
class Context:
    """What a benchmark's ``run(ctx)`` gets. Plain data (it crosses into the benchmark's subprocess)."""

    name: str
    quick: bool = False
    seed: int = 0
    threads: int = 0
    data_dir: str = str(common.DEFAULT_DATA_DIR)
    cache_dir: str = str(CACHE_DIR)
    work_dir: str = str(common.BENCH_DIR / "out" / "work")
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timings: dict[str, float] = {}

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def cache(self) -> Path:
        """This benchmark's persistent cache folder (survives runs; git-ignored)."""
        path = Path(self.cache_dir) / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def work(self) -> Path:
        """This benchmark's scratch folder for the current run."""
        path = Path(self.work_dir) / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def settings(self, defaults: Mapping[str, Any], quick: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``defaults``, then ``quick`` (in ``--quick`` mode), then ``--set`` overrides converted to the
        default's type. An override naming no default is an error (a typo would silently do nothing).

        >>> Context("b", quick=True, overrides={"rows": "8"}).settings({"rows": 100, "lr": 0.1}, {"rows": 4})
        {'rows': 8, 'lr': 0.1}
        """
        out = dict(defaults)
        if self.quick and quick:
            unknown = sorted(set(quick) - set(defaults))
            if unknown:
                raise ValueError(f"quick settings {unknown} of {self.name!r} have no default.")
            out.update(quick)
        for key, text in self.overrides.items():
            if key not in defaults:
                raise ValueError(
                    f"--set {self.name}.{key}={text}: {self.name!r} has no setting {key!r}; "
                    f"its settings are {sorted(defaults)}."
                )
            out[key] = convert_setting(text, defaults[key], key)
        return out

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {self.name}: {message}", flush=True)

    def phase(self, name: str) -> Any:
        """``with ctx.phase("teacher"):`` adds the block's wall time to ``ctx.timings[name]``; logs it."""
        self.log(f"{name} ...")
        return common.stopwatch(self.timings, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def convert_setting(text: str, default: Any, key: str = "setting") -> Any:
    """Parse ``--set`` text to the type of the default (bool, int, float, str; JSON for lists, dicts, None).

    >>> convert_setting("3", 1), convert_setting("0.5", 1.0), convert_setting("false", True)
    (3, 0.5, False)
    >>> convert_setting("[0, 2]", [0, 2, 4]), convert_setting("none", None)
    ([0, 2], None)
    """
    low = text.strip().lower()
    if low in ("none", "null") and not isinstance(default, str):
        return None
    try:
        if isinstance(default, bool):
            if low not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError("use true or false")
            return low in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (list, dict)):
            return json.loads(text)
        if default is None:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"--set {key}={text!r} does not parse as {type(default).__name__}: {err}") from err
    return text


def parse_overrides(items: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["sst2_encoder.train_rows=100", "seed_rows=3"]`` -> ``{benchmark: {key: text}}``. A key without
    ``name.`` applies to the one selected benchmark (ambiguous with several).

    >>> parse_overrides(["a.x=1", "y=2"], ["a"])
    {'a': {'x': '1', 'y': '2'}}
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(
                f"--set {item!r} must look like name.key=value (or key=value for one benchmark)."
            )
        key, value = item.split("=", 1)
        if "." in key:
            name, key = key.split(".", 1)
        elif len(names) == 1:
            name = names[0]
        else:
            raise ValueError(f"--set {item!r}: say which benchmark, e.g. --set {names[0]}.{key}={value}.")
        if name not in names:
            raise ValueError(
                f"--set {item!r}: {name!r} is not among the benchmarks being run ({', '.join(names)})."
            )
        out.setdefault(name, {})[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------------------------------ running


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=common.REPO_ROOT, capture_output=True, text=True, timeout=10)
    return proc.stdout.strip()


def _git_commit() -> str | None:
    """Short commit of the checkout, ``+dirty`` when the code that is measured has uncommitted changes."""
    try:
        sha = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "hf_lite", "trainers", "benchmarks")
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) or None


def _child_run(name: str, ctx: dict[str, Any], quiet: bool = True) -> dict[str, Any]:
    """Subprocess entry point: set threads and seeds, run the benchmark, attach phase timings and machine."""
    bench = discover()[name]
    context = Context(**ctx)
    if quiet:  # process-wide logging settings: only in the benchmark's own process
        common.quiet_libraries()
    import torch

    threads = torch.get_num_threads()
    if context.threads:
        torch.set_num_threads(context.threads)
    try:
        common.set_seed(context.seed)
        machine = common.machine_info()  # after set_num_threads: records the threads the run used
        result = bench.run(context)
    finally:
        torch.set_num_threads(threads)  # matters in --in-process mode only
    if not isinstance(result, dict):
        raise TypeError(f"{name}.run(ctx) must return a dict; got {type(result).__name__}.")
    result.setdefault("timings_s", {}).update(context.timings)
    return {"result": result, "machine": machine}


def run_benchmark(bench: Benchmark, ctx: Context, *, isolated: bool = True) -> dict[str, Any]:
    """Run one benchmark and return its record (not yet written)."""
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    start = time.perf_counter()
    if isolated:
        out = common.run_isolated("benchmarks.harness:_child_run", {"name": bench.name, "ctx": ctx.to_dict()})
        payload, peak = out.result, out.peak_rss_bytes
    else:
        payload, peak = _child_run(bench.name, ctx.to_dict(), quiet=False), None
    return {
        "schema": SCHEMA,
        "benchmark": bench.name,
        "title": bench.title,
        "quick": ctx.quick,
        "seed": ctx.seed,
        "overrides": ctx.overrides,
        "started_utc": started,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_bytes": peak,
        "git_commit": _git_commit(),
        "machine": payload["machine"],
        "result": payload["result"],
    }


def write_record(record: dict[str, Any], out_dir: Path, command: str) -> Path:
    record = {**record, "command": command}
    text = json.dumps(record, indent=2, allow_nan=True) + "\n"
    return atomic_write_text(out_dir / "results" / f"{record['benchmark']}.json", text)


def load_records(out_dir: Path) -> list[dict[str, Any]]:
    folder = out_dir / "results"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in records if isinstance(r, dict) and r.get("schema") == SCHEMA and "benchmark" in r]


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=ENTRY,
        description="Run hf-lite's benchmarks and rewrite RESULTS.md from their measured JSON.",
    )
    add = parser.add_argument
    add("names", nargs="*", help="benchmarks to run (default: all; see --list)")
    add("--quick", action="store_true", help="reduced sizes, every row exercised (< 10 min in all)")
    add("--list", action="store_true", help="list the registered benchmarks and exit")
    add("--render", action="store_true", help="only rebuild RESULTS.md from the JSON files")
    add(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="change a setting of a benchmark (repeatable); output in benchmarks/out/custom",
    )
    add(
        "--out",
        type=Path,
        default=None,
        help="folder for results/*.json and RESULTS.md (default: benchmarks/ for a full run, "
        "benchmarks/out/quick with --quick, benchmarks/out/custom with --set)",
    )
    add("--seed", type=int, default=0, help="seed of every run (default 0)")
    add("--threads", type=int, default=0, help="torch threads, the same for every row (default: usable CPUs)")
    add("--data-dir", type=Path, default=common.DEFAULT_DATA_DIR, help="folder of the real data sets")
    add("--cache-dir", type=Path, default=CACHE_DIR, help="trained-teacher cache, kept between runs")
    add(
        "--in-process",
        action="store_true",
        help="run benchmarks in this process (debugging; no per-benchmark peak memory)",
    )
    return parser


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    broken: dict[str, str] = {}
    registry = discover(errors=broken)
    for name, error in broken.items():
        print(f"benchmark module {name!r} does not import: {error}", file=sys.stderr)
    if args.list:
        for b in registry.values():
            print(f"{b.name:24s} {b.title}")
        return 1 if broken else 0
    unknown = [n for n in args.names if n not in registry]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; registered: {', '.join(registry)}", file=sys.stderr)
        return 2
    names = args.names or list(registry)
    try:
        overrides = parse_overrides(args.overrides, names)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    out_dir = args.out or (QUICK_OUT if args.quick else CUSTOM_OUT if overrides else FULL_OUT)
    if args.render:
        text = render_results(load_records(out_dir), registry)
        path = atomic_write_text(out_dir / "RESULTS.md", text)
        print(f"wrote {path}")
        return 0

    # glibc allocator settings change timings (page faults): a run made with them shows them in its command
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]
    command = " ".join([*env, ENTRY, *(shlex.quote(a) for a in argv)])
    threads = args.threads or _default_threads()
    failed = [] if args.names else sorted(broken)  # running "all": a module that does not import has failed
    # Scratch models of this run; git-ignored under benchmarks/out unless an explicit --out says elsewhere.
    work_dir = (args.out / "work") if args.out else common.BENCH_DIR / "out" / "work"
    for name in names:
        ctx = Context(
            name=name,
            quick=args.quick,
            seed=args.seed,
            threads=threads,
            data_dir=str(args.data_dir),
            cache_dir=str(args.cache_dir),
            work_dir=str(work_dir),
            overrides=overrides.get(name, {}),
        )
        print(f"=== {name} ({'quick' if args.quick else 'full'}) ===", flush=True)
        try:
            record = run_benchmark(registry[name], ctx, isolated=not args.in_process)
        except Exception:  # noqa: BLE001 - one failed benchmark must not lose the others' results
            traceback.print_exc()
            failed.append(name)
            continue
        path = write_record(record, out_dir, command)
        print(f"=== {name}: {record['wall_s'] / 60:.1f} min, wrote {path}", flush=True)
    text = render_results(load_records(out_dir), registry)
    path = atomic_write_text(out_dir / "RESULTS.md", text)
    print(f"wrote {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
