"""The architecture matrix (``tests/architecture_matrix.py``): on tiny models of fifteen families, every operation
works (checked against a reference) or is refused, as documented, before anything is written; every saved pruned
checkpoint reloads in a process without hf-lite with the same logits; and README's support table is the table
rendered from what this run measured (regenerate it with ``python -m tests.architecture_matrix --write-readme``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_lite.quantization import bnb_repacks_on_cpu
from tests import architecture_matrix as mx

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # bitsandbytes on CPU
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

#: (family, operation) -> Outcome, filled by the parametrized test, compared with the README by the last test.
OUTCOMES: dict[tuple[str, str], mx.Outcome] = {}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> mx.Context:
    return mx.Context(tmp_path_factory.mktemp("matrix"))


@pytest.mark.integration
@pytest.mark.parametrize("operation", list(mx.OPERATIONS))
@pytest.mark.parametrize("family", list(mx.FAMILIES))
def test_works_or_is_refused_before_anything_is_written(ctx, family, operation):
    OUTCOMES[(family, operation)] = mx.measure(family, operation, ctx)


_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from safetensors.torch import load_file, save_file
    jobs = json.loads(sys.argv[1])
    ids = load_file(sys.argv[3])["input_ids"]
    out, problems = {}, {}
    for name, (folder, auto) in jobs.items():
        model, info = getattr(transformers, auto).from_pretrained(folder, output_loading_info=True)
        problems[name] = {k: sorted(v) for k, v in info.items() if v and k != "error_msgs"}
        with torch.no_grad():
            out[name] = model.eval()(input_ids=ids).logits.float().contiguous()
    save_file(out, sys.argv[2])
    loaded = any(m.split(".")[0] in ("hf_lite", "trainers") for m in sys.modules)
    print(json.dumps({"hf_lite_loaded": loaded, "problems": problems}))
    """
)


@pytest.mark.integration
@pytest.mark.multiprocess
def test_every_pruned_checkpoint_reloads_in_a_process_without_hf_lite(ctx, tmp_path):
    if not ctx.saved:
        pytest.skip("no pruned checkpoint was saved (run the matrix tests of this file first)")
    layouts = {mx.FAMILIES[name.split("-")[0]].layout for name in ctx.saved}
    if len(OUTCOMES) == len(mx.FAMILIES) * len(mx.OPERATIONS):  # the whole matrix ran: every layout kind
        assert layouts == {family.layout for family in mx.FAMILIES.values()}
    save_file({"input_ids": mx.input_ids()}, str(tmp_path / "ids.safetensors"))
    jobs = {name: [folder, auto] for name, (folder, auto, _) in ctx.saved.items()}
    args = [json.dumps(jobs), str(tmp_path / "out.safetensors"), str(tmp_path / "ids.safetensors")]
    proc = subprocess.run([sys.executable, "-c", _LOADER, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # No missing, unexpected or mismatched key: every saved tensor is used, none is newly initialised.
    assert report == {"hf_lite_loaded": False, "problems": dict.fromkeys(jobs, {})}
    stock = load_file(str(tmp_path / "out.safetensors"))
    for name, (_, _, expected) in ctx.saved.items():
        torch.testing.assert_close(stock[name], expected, rtol=1e-5, atol=1e-5, msg=name)


def test_readme_block_is_the_measured_matrix():
    missing = [(f, op) for f in mx.FAMILIES for op in mx.OPERATIONS if (f, op) not in OUTCOMES]
    if missing:
        pytest.skip(f"{len(missing)} pairs of the matrix were not measured in this run (e.g. {missing[0]})")
    table = mx.render_table(OUTCOMES)
    assert mx.readme_block(mx.README.read_text(encoding="utf-8")) == mx.render_block(OUTCOMES), (
        "README.md's architecture table differs from what the matrix measured; if the change is intended, run "
        "`python -m tests.architecture_matrix --write-readme`. Measured:\n" + table
    )


# ----------------------------------------------------------------------------------------------------------
# the machinery itself


def test_measure_accepts_only_documented_refusals_that_name_the_family_and_write_nothing(ctx, monkeypatch):
    def refuse(message: str, write: bool = False):
        def op(key, context):
            if write:
                context.output(key, "probe").mkdir(parents=True)
                (context.output(key, "probe") / "config.json").write_text("{}")
            raise ValueError(message)

        return op

    monkeypatch.setattr(mx, "REFUSALS", [("probe", r"cannot be expressed", "not expressible")])
    documented = "head pruning: Qwen2Config cannot be expressed"
    monkeypatch.setitem(mx.OPERATIONS, "probe", ("probe", refuse(documented)))
    outcome = mx.measure("qwen2", "probe", ctx)
    assert outcome == mx.Outcome("not expressible", documented) and outcome.cell == "refused: not expressible"
    monkeypatch.setitem(mx.OPERATIONS, "probe", ("probe", refuse("cannot be expressed")))
    with pytest.raises(AssertionError, match=r"does not name the family \(Qwen2 or qwen2\)"):
        mx.measure("qwen2", "probe", ctx)
    monkeypatch.setitem(mx.OPERATIONS, "probe", ("probe", refuse("Qwen2 is broken")))
    with pytest.raises(AssertionError, match=r"undocumented refusal of probe on Qwen2: ValueError: Qwen2 is"):
        mx.measure("qwen2", "probe", ctx)
    monkeypatch.setitem(mx.OPERATIONS, "probe", ("probe", refuse(documented, write=True)))
    with pytest.raises(AssertionError, match=r"refused after writing .*qwen2/probe"):
        mx.measure("qwen2", "probe", ctx)
    monkeypatch.setitem(mx.OPERATIONS, "probe", ("probe", lambda key, context: "block 0 stays: why"))
    assert mx.measure("mistral", "probe", ctx).cell == "yes (block 0 stays: why)"


def test_a_refused_edit_that_changed_the_model_is_caught(ctx):
    def half_done(model):
        with torch.no_grad():
            next(model.parameters()).zero_()
        raise ValueError("Qwen2 cannot")

    with pytest.raises(AssertionError, match="a refused edit changed a weight"):
        mx._pruned_and_reloaded("qwen2", ctx, "half_done", half_done)


def test_render_and_replace_the_readme_block(tmp_path, monkeypatch):
    outcomes = {(f, op): mx.Outcome() for f in mx.FAMILIES for op in mx.OPERATIONS}
    outcomes[("falcon", "lora_4bit")] = mx.Outcome("no nn.Linear", "...")
    table = mx.render_table(outcomes)
    lines = table.splitlines()
    assert lines[0] == "| family | " + " | ".join(label for label, _ in mx.OPERATIONS.values()) + " |"
    assert len(lines) == 2 + len(mx.FAMILIES) and lines[1] == "|" + "---|" * (1 + len(mx.OPERATIONS))
    falcon = next(line for line in lines if line.startswith("| Falcon |"))
    assert falcon.split(" | ")[1] == "refused: no nn.Linear"
    del outcomes[("qwen2", "wanda")]
    assert mx.render_table(outcomes).splitlines()[2].endswith("| not measured |")

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{mx.START}\nold table\n{mx.END}\n\nafter\n")
    monkeypatch.setattr(mx, "README", readme)
    monkeypatch.setattr(mx, "run_matrix", lambda root, log: {k: v for k, v in outcomes.items()})
    assert mx.main(["--write-readme"]) == 0
    text = readme.read_text()
    block = mx.render_block(outcomes)
    assert block == f"{mx.LEGEND}\n{mx.render_table(outcomes)}" and mx.LEGEND.endswith(".\n")
    assert text == f"# title\n\n{mx.START}\n{block}{mx.END}\n\nafter\n"
    assert mx.readme_block(text) == block
    with pytest.raises(ValueError, match="README.md has no <!-- architecture-matrix:start -->"):
        mx.readme_block("# no block\n")


@pytest.mark.integration
@pytest.mark.skipif(
    not bnb_repacks_on_cpu(),  # the matrix loads on the CPU also where a GPU is present
    reason="bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16 (this one has none)",
)
def test_the_qlora_check_fails_without_the_layout_hook(tmp_path, monkeypatch):
    import hf_lite.loading

    monkeypatch.setattr(hf_lite.loading, "keep_bnb_layout_trainable_", lambda model: 0)
    ctx = mx.Context(tmp_path)
    # No biases (Mistral): the evaluated run's gradients are silently wrong.
    with pytest.raises(AssertionError, match=r"step 1 base_model\.model\..*lora_"):
        mx.measure("mistral", "lora_4bit", ctx)
    # Biases (Qwen2): bitsandbytes' inference kernel adds the bias in place, and training crashes.
    with pytest.raises(RuntimeError, match="in-place operation"):
        mx.measure("qwen2", "lora_4bit", ctx)
