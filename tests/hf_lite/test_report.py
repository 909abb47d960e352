"""hf_lite.report: JSON round trip, Markdown table, PNG plot, atomic writes, no local paths or tokens."""

from __future__ import annotations

import math
import struct

import pytest

from hf_lite._utils import atomic_write
from hf_lite.evaluation import EvaluationResult
from hf_lite.report import CompressionReport, ReportRow

MACHINE = {
    "cpu": "Test CPU 3000",
    "cpu_count": 4,
    "usable_cpus": 2,
    "torch_threads": 2,
    "gpu": None,
    "torch": "2.13.0",
    "transformers": "5.23.0",
    "python": "3.11.7",
    "platform": "Linux x86_64",
}


def _latency(b1: float, b32: float, seq_len: int = 64, threads: int = 2) -> dict:
    return {
        "seq_len": seq_len,
        "threads": threads,
        "device": "cpu",
        "warmup": 2,
        "repeats": 10,
        "results": [
            {
                "batch_size": 1,
                "median_ms": b1,
                "min_ms": b1,
                "max_ms": b1,
                "samples_per_s": 1000 / b1,
                "tokens_per_s": seq_len * 1000 / b1,
            },
            {
                "batch_size": 32,
                "median_ms": b32,
                "min_ms": b32,
                "max_ms": b32,
                "samples_per_s": 32000 / b32,
                "tokens_per_s": 32 * seq_len * 1000 / b32,
            },
        ],
    }


def _classification_report() -> CompressionReport:
    report = CompressionReport(task="sequence-classification", machine=MACHINE, title="SST-2")
    specs = [  # name, stage, accuracy, params, nonzero, disk, b1, b32
        ("org/teacher-model", "teacher", 0.90, 22_700_000, 22_700_000, 90_000_000, 10.0, 200.0),
        ("pruned-50", "prune", 0.88, 22_700_000, 11_350_000, 90_000_000, 9.0, 180.0),
        ("student-3L", "distill", 0.85, 11_000_000, 11_000_000, 44_000_000, 5.0, 100.0),
    ]
    for name, stage, acc, params, nonzero, disk, b1, b32 in specs:
        result = EvaluationResult(
            "sequence-classification",
            {"accuracy": acc, "f1": acc - 0.01},
            params,
            nonzero,
            disk + 1000,
            bytes_on_disk=disk,
            latency=_latency(b1, b32),
            details={"average": "binary"},
        )
        report.add_evaluation(result, name=name, stage=stage)
    return report


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------- rows


def test_row_from_evaluation_takes_b1_b32_and_widest_throughput():
    result = EvaluationResult(
        "causal-lm",
        {"perplexity": 12.0, "loss": math.log(12.0)},
        1000,
        600,
        4000,
        bytes_on_disk=3900,
        latency=_latency(2.0, 40.0),
        quantization="bnb-4bit (nf4)",
        adapter="LORA r=8 on q_proj",
    )
    row = ReportRow.from_evaluation(result, name="q4", stage="quantize", notes="merged")
    assert (row.latency_b1_ms, row.latency_b32_ms) == (2.0, 40.0)
    assert row.throughput_samples_s == pytest.approx(800.0) and row.throughput_tokens_s == pytest.approx(
        800.0 * 64
    )
    assert (row.parameters, row.nonzero_parameters, row.bytes_on_disk, row.bytes_in_memory) == (
        1000,
        600,
        3900,
        4000,
    )
    assert (
        row.quantization == "bnb-4bit (nf4)" and row.adapter == "LORA r=8 on q_proj" and row.notes == "merged"
    )
    assert row.sparsity == pytest.approx(0.4)
    assert ReportRow.from_evaluation(result.to_dict(), name="q4", stage="quantize", notes="merged") == row


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": ""}, TypeError, "name must be a non-empty string"),
        ({"stage": None}, TypeError, "stage must be a non-empty string"),
        ({"parameters": -1}, ValueError, "parameters=-1 must be a non-negative integer"),
        ({"bytes_on_disk": 1.5}, ValueError, "bytes_on_disk=1.5 must be a non-negative integer"),
        ({"latency_b1_ms": 0.0}, ValueError, "latency_b1_ms=0.0 must be a positive number"),
        ({"metrics": {"accuracy": "high"}}, TypeError, "metrics must map names"),
        ({"metrics": [0.9]}, TypeError, "metrics must be a mapping"),
        ({"quantization": 4}, TypeError, "quantization must be a string or None"),
        ({"notes": None}, TypeError, "notes must be a string"),
    ],
)
def test_row_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReportRow(**{"name": "m", "stage": "teacher", **kwargs})


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("name", "/home/alice/runs/student", "local absolute path"),
        ("name", "C:\\Users\\bob\\model", "local absolute path"),
        ("name", "~/models/student", "local absolute path"),
        ("notes", "loaded from /tmp/x/y", "local absolute path"),
        ("notes", "file://server/share/model", "local absolute path"),
        ("adapter", "token hf_" + "a" * 34, "looks like an access token"),
    ],
)
def test_rows_refuse_local_paths_and_tokens(field, value, match):
    with pytest.raises(ValueError, match=match) as info:
        ReportRow(**{"name": "m", "stage": "s", field: value})
    assert "hf_aaaa" not in str(info.value)  # a token is never echoed


def test_hub_ids_urls_and_ratios_are_allowed():
    row = ReportRow(
        "org/model-name", "teacher", notes="see https://huggingface.co/org/model; b1 / b32, 3/4 kept"
    )
    assert row.name == "org/model-name"


def test_report_checks_machine_and_later_edits():
    with pytest.raises(ValueError, match=r"machine\['cpu'\]=.* local absolute path"):
        CompressionReport(task="causal-lm", machine={"cpu": "/proc/cpuinfo/x"})
    report = CompressionReport(task="causal-lm")
    report.metric_notes["perplexity"] = "computed by /home/me/script.py"
    with pytest.raises(ValueError, match="local absolute path"):
        report.to_json()


# ------------------------------------------------------------------------------------------- JSON


def test_json_round_trip_and_atomic_file(tmp_path):
    report = _classification_report()
    report.rows[1].metrics["perplexity"] = math.inf  # JSON has no inf: stored as a string, read back as inf
    text = report.to_json(tmp_path / "out" / "report.json")
    assert "Infinity" not in text and '"inf"' in text
    assert CompressionReport.from_json(text) == report
    assert CompressionReport.from_json(tmp_path / "out" / "report.json") == report
    assert CompressionReport.from_json(str(tmp_path / "out" / "report.json")) == report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]  # no temporary file left


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")

    def explode(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, explode)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('{"format": "other/1", "task": "x"}', ValueError, "not an hf-lite compression report"),
        (
            '{"format": "hf-lite-compression-report/1", "task": "x", "extra": 1}',
            ValueError,
            r"unknown fields \['extra'\]",
        ),
        (
            '{"format": "hf-lite-compression-report/1", "task": "x", "rows": [{"name": "a", "stage": "b", "x": 1}]}',
            ValueError,
            r"report row has unknown fields \['x'\]",
        ),
        ("{not json", ValueError, "not valid JSON"),
        ("missing-report.json", ValueError, "neither JSON text nor an existing file"),
        ("[1, 2]", ValueError, "neither JSON text nor an existing file"),
    ],
)
def test_from_json_errors(text, error, match):
    with pytest.raises(error, match=match):
        CompressionReport.from_json(text)
    with pytest.raises(TypeError, match="text_or_path must be JSON text or a path"):
        CompressionReport.from_json(3)


# ------------------------------------------------------------------------------------------- Markdown


def test_markdown_table_relative_metric_and_speedup():
    report = _classification_report()
    lines = report.to_markdown().splitlines()
    # issue 19 item 9: "% of teacher" for every metric (it used to cover the primary metric only)
    assert lines[0] == (
        "| model | stage | accuracy | f1 | % of teacher (accuracy / f1) | params (nonzero) | disk / memory | "
        "latency b1 / b32 (ms) | speedup b1 / b32 |"
    )
    assert lines[2] == (
        "| org/teacher-model | teacher | 0.9000 | 0.8900 | 100.0% / 100.0% | 22.70M | 85.83 MiB / 85.83 MiB | "
        "10.00 / 200 | 1.00× / 1.00× |"
    )
    f1_rel = f"{100 * 0.87 / 0.89:.1f}%"  # model ÷ teacher
    assert f"| pruned-50 | prune | 0.8800 | 0.8700 | 97.8% / {f1_rel} | 22.70M (11.35M) |" in lines[3]
    assert lines[4].endswith("| 5.00 / 100 | 2.00× / 2.00× |")
    footer = "\n".join(lines[5:])
    assert "accuracy (model ÷ teacher) relative to 'org/teacher-model'" in footer
    assert "f1: binary average." in footer
    assert "Test CPU 3000, 2 usable CPUs, torch 2.13.0, 2 threads" in footer
    assert "median of 10 forward passes after 2 warm-up passes at sequence length 64 on cpu" in footer


def test_lower_is_better_metrics_and_explicit_teacher():
    rows = [
        ReportRow("a", "teacher", metrics={"perplexity": 10.0}),
        ReportRow("b", "quantize", metrics={"perplexity": 20.0}),
        ReportRow("c", "distill", metrics={"perplexity": 8.0}),
    ]
    report = CompressionReport(task="causal-lm", rows=rows)
    assert [report.relative_metric(r) for r in rows] == [1.0, 0.5, 1.25]
    report.teacher = "c"
    assert report.relative_metric(rows[0]) == pytest.approx(0.8)
    assert "(teacher ÷ model, 100% = as good) relative to 'c'" in report.to_markdown()
    report.teacher = "zz"
    with pytest.raises(ValueError, match=r"teacher='zz' names no row; rows are \['a', 'b', 'c'\]"):
        report.to_markdown()


def test_nonzero_count_shown_only_when_it_shows():
    rows = [
        ReportRow(
            "t", "teacher", parameters=22_713_986, nonzero_parameters=22_713_597
        ),  # zero-initialised biases
        ReportRow("p", "prune", parameters=22_713_986, nonzero_parameters=11_000_000),
    ]
    lines = CompressionReport(task="x", rows=rows).to_markdown().splitlines()
    assert "| 22.71M |" in lines[2] and "| 22.71M (11.00M) |" in lines[3]


def test_missing_values_and_pipes_render():
    report = CompressionReport(task="x", rows=[ReportRow("a|b", "teacher")])
    assert report.to_markdown().splitlines()[2] == "| a\\|b | teacher | – | – | – | – / – | – / – |"
    assert str(report) == report.to_markdown()


def test_add_evaluation_notes_a_different_latency_setup():
    report = _classification_report()
    other = EvaluationResult(
        "sequence-classification",
        {"accuracy": 0.8},
        10,
        10,
        40,
        latency=_latency(1.0, 2.0, seq_len=128, threads=1),
    )
    row = report.add_evaluation(other, name="odd", stage="quantize", notes="int8")
    assert row.notes == "int8; timed with seq_len=128, threads=1"
    assert report.latency_setup["seq_len"] == 64


def test_duplicate_names_and_wrong_types():
    report = CompressionReport(task="x", rows=[ReportRow("a", "teacher")])
    with pytest.raises(ValueError, match="a row named 'a' is already in the report"):
        report.add(ReportRow("a", "prune"))
    with pytest.raises(TypeError, match="row must be a ReportRow"):
        report.add({"name": "b"})
    with pytest.raises(TypeError, match="task must be a non-empty string"):
        CompressionReport(task="")
    with pytest.raises(TypeError, match="machine must be a mapping"):
        CompressionReport(task="x", machine=["cpu"])
    with pytest.raises(TypeError, match="result must be an EvaluationResult"):
        ReportRow.from_evaluation([1], name="a", stage="b")


# ------------------------------------------------------------------------------------------- plot


def test_plot_writes_a_png_of_the_expected_size(tmp_path):
    report = _classification_report()
    path = report.plot(tmp_path / "plots" / "report.png", dpi=50, figsize=(10.0, 4.0))
    assert _png_size(path) == (500, 200)
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.png"]
    assert path.stat().st_size > 5000  # something was drawn


def test_plot_without_latency_or_disk_sizes(tmp_path):
    rows = [
        ReportRow("t", "teacher", bytes_in_memory=2**20, metrics={"perplexity": 9.0}),
        ReportRow("s", "distill", bytes_in_memory=2**19, metrics={"perplexity": 11.0}),
    ]
    path = CompressionReport(task="causal-lm", rows=rows).plot(tmp_path / "p.png")
    assert _png_size(path) == (1100, 450)


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="no row has a value for the primary metric"):
        CompressionReport(task="x", rows=[ReportRow("t", "teacher")]).plot(tmp_path / "p.png")
    with pytest.raises(ValueError, match="dpi=5 must be an integer between 20 and 600"):
        _classification_report().plot(tmp_path / "p.png", dpi=5)
    assert not (tmp_path / "p.png").exists()


def test_save_writes_json_markdown_and_png(tmp_path):
    paths = _classification_report().save(tmp_path / "report")
    assert sorted(paths) == ["json", "markdown", "plot"]
    assert paths["markdown"].read_text().startswith("# SST-2\n\n| model |")
    assert CompressionReport.from_json(paths["json"]).rows[2].name == "student-3L"
    assert _png_size(paths["plot"]) == (1100, 450)


# ------------------------------------------------------- figures a user misreads (issue 19 item 9)


def _spread_latency(b1: float, b32: float, iqr1: float, iqr32: float, load: float | None) -> dict:
    latency = _latency(b1, b32)
    latency["load_average"] = load
    latency["results"][0]["iqr_ms"] = iqr1
    latency["results"][1]["iqr_ms"] = iqr32
    return latency


def _spread_report(loads=(1.0, 1.5), iqr_fraction=0.05) -> CompressionReport:
    report = CompressionReport(task="sequence-classification", machine=MACHINE)
    for (name, stage, b1, b32), load in zip(
        [("teacher", "teacher", 10.0, 200.0), ("student", "distill", 5.0, 100.0)], loads, strict=True
    ):
        result = EvaluationResult(
            "sequence-classification",
            {"accuracy": 0.9 if stage == "teacher" else 0.8},
            100,
            100,
            400,
            latency=_spread_latency(b1, b32, iqr_fraction * b1, iqr_fraction * b32, load),
        )
        report.add_evaluation(result, name=name, stage=stage)
    return report


def test_latency_spread_and_load_average_reach_the_rows_table_and_json():
    report = _spread_report(loads=(1.0, 1.5))
    student = report.rows[1]
    assert (student.latency_b1_iqr_ms, student.latency_b32_iqr_ms) == (
        pytest.approx(0.25),
        pytest.approx(5.0),
    )
    assert student.relative_iqr == pytest.approx(0.05)
    assert report.load_average == 1.5  # the highest load seen while timing
    text = report.to_markdown()
    assert "| 10.00 (IQR 0.50) / 200 (IQR 10.00) |" in text.splitlines()[2]
    assert (
        "interquartile range of those passes" in text and "1-minute load average at measurement 1.50" in text
    )
    assert "Note:" not in text  # 1.5 < 2 usable CPUs and a 5% spread: a quiet machine
    data = report.to_dict()
    assert data["load_average"] == 1.5 and data["rows"][0]["latency_b1_iqr_ms"] == pytest.approx(0.5)
    assert CompressionReport.from_json(report.to_json()) == report


def test_busy_machine_or_wide_spread_gets_a_note():
    busy = _spread_report(loads=(3.0, 5.0)).to_markdown()
    assert (
        "Note: the machine was busy while latency was timed (1-minute load average 5.00 on 2 usable" in busy
    )
    wide = _spread_report(iqr_fraction=0.4).to_markdown()
    assert "Note: latency spread is wide (interquartile range up to 40% of the median)" in wide
    assert _spread_report().busy_note() is None


def test_quantized_rows_timed_on_cpu_explain_the_slowdown():
    from hf_lite.report import LOW_BIT_CPU_NOTE

    def report(quantization, device):
        rows = [
            ReportRow("t", "teacher", latency_b1_ms=3.0, metrics={"accuracy": 0.9}),
            ReportRow(
                "q", "quantize", latency_b1_ms=6.0, quantization=quantization, metrics={"accuracy": 0.9}
            ),
        ]
        return CompressionReport(task="x", rows=rows, latency_setup={"device": device})

    assert LOW_BIT_CPU_NOTE in report("bnb-8bit (LLM.int8)", "cpu").to_markdown()
    assert LOW_BIT_CPU_NOTE in report("bnb-4bit (nf4)", "cpu").to_markdown()
    assert LOW_BIT_CPU_NOTE not in report("bnb-8bit (LLM.int8)", "cuda:0").to_markdown()
    assert LOW_BIT_CPU_NOTE not in report(None, "cpu").to_markdown()
    assert "slower than fp32 on CPU" in LOW_BIT_CPU_NOTE and "save memory" in LOW_BIT_CPU_NOTE


def test_percent_of_teacher_for_every_metric_lower_is_better_inverted():
    rows = [
        ReportRow("t", "teacher", metrics={"perplexity": 10.0, "loss": math.log(10.0)}),
        ReportRow("s", "distill", metrics={"perplexity": 12.5, "loss": math.log(12.5), "extra": 1.0}),
    ]
    report = CompressionReport(task="causal-lm", rows=rows)
    rel = report.relative_metrics(rows[1])
    assert list(rel) == ["perplexity", "loss"]  # primary first; a metric the teacher lacks has no ratio
    assert rel["perplexity"] == pytest.approx(10.0 / 12.5) == report.relative_metric(rows[1])
    assert rel["loss"] == pytest.approx(math.log(10.0) / math.log(12.5))
    lines = report.to_markdown().splitlines()
    assert "| % of teacher (perplexity / loss) |" in lines[0]
    assert f"| 80.0% / {100 * math.log(10.0) / math.log(12.5):.1f}% |" in lines[3]
    assert "then loss (loss: teacher ÷ model)" in report.to_markdown()


def test_report_json_names_the_teacher_and_older_files_still_read():
    report = _classification_report()
    assert report.teacher == "org/teacher-model" and report.to_dict()["teacher"] == "org/teacher-model"
    no_teacher_stage = CompressionReport(task="x", rows=[ReportRow("a", "prune"), ReportRow("b", "distill")])
    assert no_teacher_stage.teacher is None and no_teacher_stage.to_dict()["teacher"] == "a"
    # a report written before the spread, load average and teacher name were recorded
    old = report.to_dict()
    old["teacher"] = None
    del old["load_average"]
    for row in old["rows"]:
        del row["latency_b1_iqr_ms"], row["latency_b32_iqr_ms"]
    import json

    read = CompressionReport.from_json(json.dumps(old))
    assert read.teacher_row().name == "org/teacher-model" and read.load_average is None
    assert read.rows[0].latency_b1_iqr_ms is None
    assert read.to_markdown().splitlines()[2].endswith("| 10.00 / 200 | 1.00× / 1.00× |")


def test_row_and_report_refuse_bad_spread_or_load():
    with pytest.raises(ValueError, match=r"latency_b1_iqr_ms=-1 must be a non-negative number"):
        ReportRow("a", "b", latency_b1_iqr_ms=-1)
    with pytest.raises(ValueError, match=r"load_average='high' must be a number >= 0 or None"):
        CompressionReport(task="x", load_average="high")


def _crowded_report(untrained: float | None = None) -> CompressionReport:
    rows = [
        ReportRow(name, stage, bytes_on_disk=size, latency_b1_ms=lat, metrics={"accuracy": acc})
        for name, stage, size, lat, acc in [
            ("teacher", "teacher", 90 * 2**20, 10.0, 0.90),
            ("student-init", "init-student", 45 * 2**20, 5.0, 0.88),
            ("student-distilled", "distill", 45 * 2**20, 5.05, 0.881),
            ("student-pruned", "prune", 44 * 2**20, 4.95, 0.879),
        ]
    ]
    if untrained is not None:
        rows.append(
            ReportRow(
                "untrained",
                "init-student",
                bytes_on_disk=45 * 2**20,
                latency_b1_ms=5.0,
                metrics={"accuracy": untrained},
            )
        )
    return CompressionReport(task="sequence-classification", rows=rows)


def test_plot_draws_points_without_a_lineage_line_and_labels_apart():
    from hf_lite.report.plot import report_figure

    fig = report_figure(_crowded_report())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        assert ax.get_lines() == []  # no line joins the models
        assert len(ax.collections) == 4
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == 4
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), [t.get_text() for t in ax.texts]


def test_plot_puts_a_far_off_model_on_the_axis_edge():
    from hf_lite.report.plot import report_figure

    ax = report_figure(_crowded_report(untrained=0.5)).axes[0]
    low, high = ax.get_ylim()
    assert 0.5 < low < 0.879 and high > 0.90  # the others keep their spread
    labels = [t.get_text() for t in ax.texts]
    assert "untrained (0.5, off scale)" in labels
    ys = [c.get_offsets()[0][1] for c in ax.collections]
    assert min(ys) == pytest.approx(low)  # drawn on the edge, not off the figure
