"""The benchmark harness's machinery, without running a real benchmark (those take minutes to an hour).

Registry, settings and overrides, JSON -> RESULTS.md, the CLI, the per-process peak-memory helper."""

from __future__ import annotations

import json
import sys
import textwrap
import types

import pytest

from benchmarks import common, harness

FIXTURE_RECORD = {
    "schema": 1,
    "benchmark": "toy",
    "title": "Toy benchmark",
    "quick": False,
    "seed": 0,
    "overrides": {},
    "started_utc": "2026-01-01T00:00:00+00:00",
    "wall_s": 90.0,
    "peak_rss_bytes": 3 * 2**30,
    "git_commit": "abc1234",
    "command": "python -m benchmarks toy",
    "machine": {"cpu": "Test CPU", "usable_cpus": 2, "torch_threads": 2, "torch": "2.13.0"},
    "result": {
        "summary": "A toy summary.",
        "goals": [
            {"goal": "accuracy ≥ 90%", "measured": "91.2%", "met": True},
            {"goal": "speedup ≥ 2×", "measured": "1.5×", "met": False},
            {"goal": "memory", "measured": "–", "met": None},
        ],
        "tables": [
            {
                "title": "Rows",
                "columns": [
                    {"key": "row", "label": "model"},
                    {"key": "accuracy", "label": "acc", "format": "pct"},
                    {"key": "params", "label": "params", "format": "params"},
                    {"key": "bytes", "label": "size", "format": "bytes"},
                    {"key": "speedup", "label": "speedup", "format": "x"},
                ],
                "rows": [
                    {
                        "row": "teacher",
                        "accuracy": 0.9123,
                        "params": 22_713_216,
                        "bytes": 90_867_952,
                        "speedup": 1.0,
                    },
                    {
                        "row": "student|a",
                        "accuracy": 0.9,
                        "params": 11_000_000,
                        "bytes": None,
                        "speedup": 2.314,
                    },
                ],
                "notes": ["A table note."],
            }
        ],
        "notes": ["A general note."],
        "timings_s": {"train": 60.0},
    },
}


# --------------------------------------------------------------------------------------------- registry


def test_registry_finds_the_sst2_benchmark_and_every_benchmark_is_documented():
    registry = harness.discover()
    assert "sst2_encoder" in registry
    assert "harness" not in registry and "common" not in registry
    orders = [b.order for b in registry.values()]
    assert orders == sorted(orders)
    for bench in registry.values():
        assert (bench.module.__doc__ or "").strip(), f"{bench.name} needs a module docstring"
        assert bench.title


def test_sst2_settings_are_consistent():
    from benchmarks import sst2_encoder

    assert set(sst2_encoder.QUICK) <= set(sst2_encoder.DEFAULTS)
    ctx = harness.Context("sst2_encoder", quick=True)
    quick = ctx.settings(sst2_encoder.DEFAULTS, sst2_encoder.QUICK)
    assert quick["train_rows"] == sst2_encoder.QUICK["train_rows"]
    needed = {"accuracy", "pct_of_teacher", "params", "bytes", "latency_b1_ms", "speedup_b32"}
    assert {c["key"] for c in sst2_encoder.COLUMNS} >= needed


def _fake_package(tmp_path, monkeypatch, name="fakebench"):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha.py").write_text('"""Alpha measures a."""\nORDER = 20\ndef run(ctx):\n    return {"x": 1}\n')
    (pkg / "beta.py").write_text(
        '"""Beta."""\nTITLE = "Beta title"\nORDER = 5\ndef run(ctx):\n    return {}\n'
    )
    (pkg / "helpers.py").write_text('"""No run: not a benchmark."""\n')
    (pkg / "_private.py").write_text("def run(ctx):\n    raise AssertionError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_discover_registers_modules_with_run_only(tmp_path, monkeypatch):
    registry = harness.discover(_fake_package(tmp_path, monkeypatch))
    assert list(registry) == ["beta", "alpha"]  # by ORDER
    assert registry["alpha"].title == "Alpha measures a"  # the docstring's first line
    assert registry["beta"].title == "Beta title"


def test_discover_registers_a_package_with_run_and_skips_its_helper_modules(tmp_path, monkeypatch):
    name = _fake_package(tmp_path, monkeypatch, "fakebench3")
    sub = tmp_path / name / "gamma"
    sub.mkdir()
    (sub / "__init__.py").write_text(
        '"""Gamma, a benchmark package."""\nfrom fakebench3.gamma.parts import run\n'
    )
    (sub / "parts.py").write_text("def run(ctx):\n    return {}\n")
    registry = harness.discover(name)
    assert list(registry) == ["beta", "alpha", "gamma"]  # gamma: ORDER 100 by default
    assert registry["gamma"].title == "Gamma, a benchmark package"
    assert "parts" not in registry


def test_discover_reports_a_module_that_does_not_import(tmp_path, monkeypatch):
    name = _fake_package(tmp_path, monkeypatch, "fakebench2")
    (tmp_path / name / "gamma.py").write_text("import no_such_module_here\ndef run(ctx):\n    return {}\n")
    with pytest.raises(ModuleNotFoundError):
        harness.discover(name)
    errors: dict[str, str] = {}
    assert list(harness.discover(name, errors)) == ["beta", "alpha"]
    assert errors == {"gamma": "ModuleNotFoundError: No module named 'no_such_module_here'"}


# --------------------------------------------------------------------------------------------- settings


def test_settings_merge_defaults_quick_and_overrides():
    defaults = {"rows": 100, "lr": 1e-4, "flag": True, "layers": [0, 2, 4], "name": "x"}
    ctx = harness.Context(
        "b", quick=True, overrides={"lr": "3e-4", "flag": "off", "layers": "[1]", "name": "y"}
    )
    assert ctx.settings(defaults, {"rows": 8}) == {
        "rows": 8,
        "lr": 3e-4,
        "flag": False,
        "layers": [1],
        "name": "y",
    }
    assert (
        harness.Context("b").settings(defaults, {"rows": 8})["rows"] == 100
    )  # quick sizes only with --quick


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"nope": "1"}, "has no setting 'nope'"),
        ({"rows": "many"}, "does not parse as int"),
        ({"flag": "maybe"}, "does not parse as bool"),
    ],
)
def test_settings_refuse_unknown_or_unparsable_overrides(overrides, match):
    with pytest.raises(ValueError, match=match):
        harness.Context("b", overrides=overrides).settings({"rows": 1, "flag": True})


def test_parse_overrides():
    assert harness.parse_overrides(["a.x=1", "b.y=z=2"], ["a", "b"]) == {"a": {"x": "1"}, "b": {"y": "z=2"}}
    assert harness.parse_overrides(["x=1"], ["a"]) == {"a": {"x": "1"}}
    with pytest.raises(ValueError, match="say which benchmark"):
        harness.parse_overrides(["x=1"], ["a", "b"])
    with pytest.raises(ValueError, match="not among the benchmarks"):
        harness.parse_overrides(["c.x=1"], ["a", "b"])
    with pytest.raises(ValueError, match="must look like"):
        harness.parse_overrides(["x"], ["a"])


# --------------------------------------------------------------------------------------------- rendering


def test_render_results_from_a_fixture_record():
    text = harness.render_results([FIXTURE_RECORD])
    assert text.startswith("# hf-lite benchmarks: measured results")
    assert "## Toy benchmark" in text
    assert "`python -m benchmarks toy`" in text and "commit abc1234" in text and "peak RSS 3.00 GiB" in text
    assert "Machine: Test CPU, 2 usable CPUs (2 torch threads), torch 2.13.0." in text
    assert "| model | acc | params | size | speedup |" in text
    assert "| teacher | 91.2% | 22.71M | 86.7 MiB | 1.00× |" in text
    assert "| student\\|a | 90.0% | 11.00M | – | 2.31× |" in text  # pipes escaped, None as a dash
    assert "| accuracy ≥ 90% | 91.2% | ✅ met |" in text
    assert "❌ missed" in text and "not measured" in text
    assert "A table note." in text and "- A general note." in text and "train 60 s" in text
    assert "Quick mode" not in text


def test_render_marks_quick_and_changed_settings_and_uses_a_custom_renderer():
    record = {**FIXTURE_RECORD, "quick": True, "overrides": {"rows": "8"}}
    text = harness.render_record(record)
    assert "Quick mode" in text and "rows=8" in text
    custom = harness.render_record(record, custom=lambda r: f"custom {r['result']['summary']}")
    assert custom.endswith("custom A toy summary.")


def test_records_round_trip_through_json_files(tmp_path):
    record = {k: v for k, v in FIXTURE_RECORD.items() if k != "command"}
    path = harness.write_record(record, tmp_path, "python -m benchmarks toy")
    assert path == tmp_path / "results" / "toy.json"
    (tmp_path / "results" / "other.json").write_text(json.dumps({"schema": 99, "benchmark": "old"}))
    loaded = harness.load_records(tmp_path)
    assert loaded == [FIXTURE_RECORD]  # the foreign-schema file is ignored
    assert harness.render_results(loaded) == harness.render_results([FIXTURE_RECORD])


# --------------------------------------------------------------------------------------------- CLI


def test_parser_quick_names_and_sets():
    args = harness.build_parser().parse_args(
        ["--quick", "sst2_encoder", "--set", "train_rows=10", "--threads", "2"]
    )
    assert (
        args.quick
        and args.names == ["sst2_encoder"]
        and args.overrides == ["train_rows=10"]
        and args.threads == 2
    )
    assert not harness.build_parser().parse_args([]).quick


def test_main_lists_and_refuses_unknown_names(capsys):
    assert harness.main(["--list"]) == 0
    assert "sst2_encoder" in capsys.readouterr().out
    assert harness.main(["no_such_benchmark"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def _toy_registry(tmp_path, monkeypatch):
    module = types.ModuleType("toy")
    module.__doc__ = "Toy."
    module.run = lambda ctx: {
        "summary": f"quick={ctx.quick} rows={ctx.settings({'rows': 100}, {'rows': 4})['rows']}",
        "tables": [{"columns": [{"key": "a", "label": "A", "format": "int"}], "rows": [{"a": 1234}]}],
    }
    broken = types.ModuleType("broken")
    broken.run = lambda ctx: 1 / 0
    registry = {
        "toy": harness.Benchmark("toy", module, "Toy", 1),
        "broken": harness.Benchmark("broken", broken, "Broken", 2),
    }
    monkeypatch.setattr(harness, "discover", lambda package="benchmarks", errors=None: registry)
    return registry


def test_main_runs_writes_json_and_results_md_and_keeps_going_after_a_failure(tmp_path, monkeypatch):
    _toy_registry(tmp_path, monkeypatch)
    out = tmp_path / "out"
    code = harness.main(["--quick", "--in-process", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 1  # "broken" failed ...
    record = json.loads((out / "results" / "toy.json").read_text())  # ... and "toy" was still written
    assert record["quick"] is True and record["result"]["summary"] == "quick=True rows=4"
    assert record["command"].startswith("python -m benchmarks --quick --in-process")
    assert record["machine"]["torch_threads"] >= 1
    text = (out / "RESULTS.md").read_text()
    assert "quick=True rows=4" in text and "| 1,234 |" in text and "broken" not in text

    # --render rebuilds RESULTS.md from the JSON alone; --set on the one benchmark reaches its settings.
    (out / "RESULTS.md").unlink()
    assert harness.main(["--render", "--out", str(out)]) == 0
    assert "quick=True rows=4" in (out / "RESULTS.md").read_text()
    assert harness.main(["toy", "--in-process", "--out", str(out), "--set", "rows=7"]) == 0
    assert json.loads((out / "results" / "toy.json").read_text())["result"]["summary"] == "quick=False rows=7"


# --------------------------------------------------------------------------------------------- measuring


def test_run_isolated_measures_the_peak_memory_of_a_child_process():
    small = common.run_isolated("benchmarks.common:_example_allocate", {"megabytes": 8})
    big = common.run_isolated("benchmarks.common:_example_allocate", {"megabytes": 200})
    assert small.result == 8 and big.result == 200
    assert big.added_rss_bytes >= 190 * 2**20 > small.added_rss_bytes
    assert big.peak_rss_bytes > big.baseline_rss_bytes > 0
    assert set(big.to_dict()) >= {"peak_rss_bytes", "baseline_rss_bytes", "added_rss_bytes", "wall_s"}


def test_run_isolated_reports_a_failing_child(tmp_path, monkeypatch):
    (tmp_path / "failing_target.py").write_text(
        textwrap.dedent("""
        def boom():
            raise RuntimeError("child says no")
    """)
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="child says no"):
        common.run_isolated("failing_target:boom", capture_output=True)
    with pytest.raises(ValueError, match="module:function"):
        common.run_isolated("no_colon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux interfaces")
def test_peak_rss_of_this_process_and_its_reset():
    if not common.reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS mark")
    base = common.peak_rss_bytes()  # the mark now equals the current RSS
    block = bytearray(128 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert common.peak_rss_bytes() >= base + 120 * 2**20
    del block
    assert common.reset_peak_rss() and common.peak_rss_bytes() < base + 64 * 2**20


def test_time_side_by_side_interleaves_and_summarizes():
    calls = []
    out = common.time_side_by_side(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1
    )
    assert calls[:2] == ["a", "b"]  # warm-up, then rounds in rotating order
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert out["a"]["n"] == 4 and out["a"]["min_ms"] <= out["a"]["median_ms"] <= out["a"]["max_ms"]
    with pytest.raises(ValueError, match="repeats"):
        common.time_side_by_side({"a": lambda: None}, repeats=0)


def test_format_value_and_machine_description():
    assert harness.format_value(float("nan"), "pct") == "–"
    assert harness.format_value(1234.5, "{:,.0f}") == "1,234"
    assert harness.format_value(90.0, "min") == "1.5"
    assert "load average 0.5" in common.describe_machine({"cpu": "c", "load_avg_1m": 0.5})
    assert sys.executable  # the child processes above used this interpreter


def test_save_teacher_writes_a_complete_cache_entry(tmp_path):
    from benchmarks.common import save_teacher
    from hf_lite.testing import build_tiny_model

    model, tokenizer = build_tiny_model("llama")
    folder = tmp_path / "teacher-abc"
    (tmp_path / "teacher-abc.tmp").mkdir()  # left by an interrupted earlier run
    path, meta = save_teacher(folder, model, tokenizer, {"steps": 3})
    assert path == folder and meta == {"steps": 3, "from_cache": False}
    assert json.loads((folder / "teacher.json").read_text()) == {"steps": 3}
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not (tmp_path / "teacher-abc.tmp").exists()


def test_cached_teacher_finds_what_save_teacher_stored(tmp_path):
    from benchmarks.common import cached_teacher, save_teacher
    from hf_lite.testing import build_tiny_model

    ctx = harness.Context("toy", cache_dir=str(tmp_path))
    folder, meta = cached_teacher(ctx, "teacher", {"steps": 3})
    assert meta is None and folder.parent == tmp_path / "toy" and folder.name.startswith("teacher-")
    model, tokenizer = build_tiny_model("llama")
    save_teacher(folder, model, tokenizer, {"steps": 3})
    assert cached_teacher(ctx, "teacher", {"steps": 3}) == (folder, {"steps": 3, "from_cache": True})
    assert cached_teacher(ctx, "teacher", {"steps": 4})[1] is None  # other settings, another entry
