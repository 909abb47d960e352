"""StructuralPruningCallback: a tiny Llama shrinks at scheduled steps inside a Trainer and keeps training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainerState, TrainingArguments

import trainers.structural_callback as structural_module
from hf_lite.testing import build_tiny_model
from trainers.distillation_trainer import DistillationConfig, DistillationTrainer
from trainers.structural_callback import (
    STRUCTURAL_STATE_JSON,
    STRUCTURAL_STATE_TENSORS,
    StageTarget,
    StructuralPruningCallback,
    StructuralPruningConfig,
    model_sizes,
    shrink_like_checkpoint,
)

# stages after optimizer steps 2 (FFN 128->83, groups 2->1, blocks 3->2), 4 (FFN ->66) and 6 (FFN ->64)
TARGETS = dict(ffn_keep_ratio=0.5, kv_groups_keep_ratio=0.5, num_layers=2, end_step=6, num_stages=3)
STEPS = 8


def _model(**overrides):
    return build_tiny_model("llama", num_hidden_layers=3, seed=0, **overrides)


def _data(vocab: int, rows: int = 48, length: int = 16) -> Dataset:
    ids = torch.randint(
        5, vocab, (rows, length), generator=torch.Generator().manual_seed(0)
    )  # (rows, tokens)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def _args(output_dir: Path, cls=TrainingArguments, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        logging_steps=100,
        disable_tqdm=True,
    )
    return cls(**{**kwargs, **overrides})


def _adam_state(optimizer, param) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in optimizer.state[param].items()}


class StageWatch(TrainerCallback):
    """Registered before the pruning callback: what the optimizer held just before the stage at ``step``,
    and the Adam update of the step after it (gradient in, moments out)."""

    def __init__(self, step: int):
        self.step = step
        self.before: list[tuple[torch.nn.Parameter, dict]] = []
        self.next_param: dict[int, torch.nn.Parameter] = {}
        self.next_grad: dict[int, torch.Tensor] = {}
        self.next_before: dict[int, dict] = {}
        self.next_after: dict[int, dict] = {}

    def _downs(self, model):
        return [layer.mlp.down_proj for layer in model.model.layers]

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step + 1 == self.step + 1:  # the first optimizer step after the stage
            for i, down in enumerate(self._downs(model)):
                self.next_param[i] = down.weight
                self.next_grad[i] = down.weight.grad.detach().clone()
                self.next_before[i] = _adam_state(optimizer, down.weight)

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step + 1 == self.step:
            self.before = [(d.weight, _adam_state(optimizer, d.weight)) for d in self._downs(model)]
        if state.global_step + 1 == self.step + 1:
            self.next_after = {i: _adam_state(optimizer, d.weight) for i, d in enumerate(self._downs(model))}


class AfterStages(TrainerCallback):
    """Registered after the pruning callback: after every optimizer step, the optimizer holds exactly the
    model's trainable parameters, each with Adam state of its own shape."""

    def __init__(self):
        self.checked = 0
        self.groups: list[int] = []

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert {id(p) for p in params} == {id(p) for p in trainable}
        assert len(params) == len(trainable)
        for p in params:
            for value in optimizer.state[p].values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    assert value.shape == p.shape
        self.groups.append(len(optimizer.param_groups))
        self.checked += 1


@pytest.fixture(scope="module")
def activation_run(tmp_path_factory):
    """One run with activation scores from the training set, shared by the checks below."""
    model, tok = _model()
    pruning = StructuralPruningCallback(**TARGETS, importance="activation", num_calibration_batches=2)
    watch, after = StageWatch(step=4), AfterStages()
    trainer = Trainer(
        model=model,
        args=_args(tmp_path_factory.mktemp("activation"), logging_steps=1),
        train_dataset=_data(len(tok)),
        callbacks=[watch, pruning, after],
    )
    trainer.train()
    return trainer, pruning, watch, after


# --------------------------------------------------------------------------------------------- a run


@pytest.mark.integration
def test_shrinks_on_schedule_to_the_targets(activation_run):
    trainer, pruning, _, after = activation_run
    config = trainer.model.config
    assert (config.intermediate_size, config.num_key_value_heads, config.num_attention_heads) == (64, 1, 2)
    assert config.num_hidden_layers == 2 and len(trainer.model.model.layers) == 2
    assert pruning.original_sizes == {"ffn": 128, "kv_groups": 2, "layers": 3}
    assert [s["step"] for s in pruning.stages] == [2, 4, 6]
    assert [s["sizes"]["ffn"] for s in pruning.stages] == [83, 66, 64]  # cubic: 128 - round(64 * 0.7037) ...
    assert [s["sizes"]["kv_groups"] for s in pruning.stages] == [1, 1, 1]
    assert [s["sizes"]["layers"] for s in pruning.stages] == [2, 2, 2]
    params = [s["num_parameters"] for s in pruning.stages]
    assert params == sorted(params, reverse=True) and params[-1] == trainer.model.num_parameters()
    for layer in trainer.model.model.layers:
        assert tuple(layer.mlp.down_proj.weight.shape) == (64, 64)
        assert tuple(layer.self_attn.k_proj.weight.shape) == (16, 64)
        assert tuple(layer.self_attn.q_proj.weight.shape) == (32, 64)
    assert [b.self_attn.layer_idx for b in trainer.model.model.layers] == [0, 1]
    # Training went on after every stage, on one optimizer with the same groups and the accelerate wrapper.
    assert trainer.state.global_step == STEPS and after.checked == STEPS and set(after.groups) == {2}
    assert isinstance(trainer.optimizer, AcceleratedOptimizer)
    assert trainer.lr_scheduler.optimizer is trainer.optimizer
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert rates == pytest.approx(
        [1e-3 * (1 - k / STEPS) for k in range(STEPS)]
    )  # the linear decay, unbroken
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.integration
def test_adam_moments_are_sliced_with_the_kept_neurons_not_reset(activation_run):
    trainer, pruning, watch, _ = activation_run
    stage = pruning.stages[1]
    assert stage["step"] == 4 and stage["ffn"] is not None and stage["drop"] is None
    optimizer = trainer.optimizer.optimizer
    for i, (old, state) in enumerate(watch.before):
        kept = torch.tensor(stage["ffn"][i])
        new = watch.next_param[i]
        assert new is not old and new.shape[1] == len(kept) == 66 and old.shape[1] == 83
        assert int(state["step"]) == 4
        # The moments the next step started from: the old ones at the kept columns, step count carried on.
        start = watch.next_before[i]
        torch.testing.assert_close(start["exp_avg"], state["exp_avg"][:, kept], rtol=0, atol=0)
        torch.testing.assert_close(start["exp_avg_sq"], state["exp_avg_sq"][:, kept], rtol=0, atol=0)
        assert int(start["step"]) == 4
        # ... and the step after the stage updated them with Adam's recurrences (a reset would give
        # exp_avg = (1 - beta1) * grad).
        beta1, beta2 = optimizer.param_groups[0]["betas"]
        grad, end = watch.next_grad[i], watch.next_after[i]
        torch.testing.assert_close(end["exp_avg"], beta1 * start["exp_avg"] + (1 - beta1) * grad)
        torch.testing.assert_close(end["exp_avg_sq"], beta2 * start["exp_avg_sq"] + (1 - beta2) * grad * grad)
        assert int(end["step"]) == 5


@pytest.mark.integration
def test_final_model_loads_with_stock_transformers_and_gives_identical_logits(activation_run, tmp_path):
    trainer, _, _, _ = activation_run
    model = trainer.model
    model.save_pretrained(tmp_path / "final")
    ids = torch.randint(5, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    torch.save(ids, tmp_path / "ids.pt")
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'final')!r}).eval()\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})\n"
        "assert not any(n.split('.')[0] in ('hf_lite', 'trainers') for n in sys.modules), 'hf-lite imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert torch.equal(got, expected)


# ------------------------------------------------------------------------------------------ resuming


# Taylor scores over 3 steps before each stage (stages after steps 4 and 8), checkpoints at steps 3, 6, 9:
# checkpoint-6 is taken after the first stage and inside the second stage's Taylor window.
RESUME_CONFIG = dict(
    ffn_keep_ratio=0.5,
    kv_groups_keep_ratio=0.5,
    num_layers=2,
    start_step=0,
    end_step=8,
    num_stages=2,
    importance="taylor",
    taylor_steps=3,
    num_calibration_batches=1,
)
RESUME_ARGS = dict(max_steps=10, save_strategy="steps", save_steps=3)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _config(model) -> dict:
    return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The uninterrupted run that the resumed ones are compared with."""
    out = tmp_path_factory.mktemp("full")
    model, tok = _model()
    callback = StructuralPruningCallback(**RESUME_CONFIG)
    Trainer(
        model=model, args=_args(out, **RESUME_ARGS), train_dataset=_data(len(tok)), callbacks=[callback]
    ).train()
    return model, callback, out


@pytest.mark.integration
def test_checkpoints_hold_the_kept_indices_and_running_taylor_sums(full_run):
    model, callback, out = full_run
    checkpoint = out / "checkpoint-6"
    meta = json.loads((checkpoint / STRUCTURAL_STATE_JSON).read_text())
    assert meta["global_step"] == 6 and [s["step"] for s in meta["stages"]] == [4]
    assert meta["original"] == {"ffn": 128, "kv_groups": 2, "layers": 3}
    assert meta["taylor_steps_gathered"] == 1  # step 6 of the window 6..8
    sums = load_file(checkpoint / STRUCTURAL_STATE_TENSORS)
    assert sorted(sums) == ["ffn.0", "ffn.1"]  # the groups reached their target at the first stage
    saved = json.loads((checkpoint / "config.json").read_text())
    sizes = meta["stages"][0]["sizes"]
    assert (saved["intermediate_size"], saved["num_key_value_heads"], saved["num_hidden_layers"]) == (
        sizes["ffn"],
        sizes["kv_groups"],
        sizes["layers"],
    )
    assert not (out / "checkpoint-9" / STRUCTURAL_STATE_TENSORS).exists()  # no stage left: no sums
    assert json.loads((out / "checkpoint-9" / STRUCTURAL_STATE_JSON).read_text())["stages"] == callback.stages


@pytest.mark.integration
@pytest.mark.parametrize("how", ["shrink_like_checkpoint", "args.resume_from_checkpoint", "from_pretrained"])
def test_resumed_run_ends_with_the_same_config_and_weights(full_run, tmp_path, how):
    from transformers import AutoModelForCausalLM

    model, full, out = full_run
    checkpoint = out / "checkpoint-6"
    fresh, tok = _model()
    extra = {}
    if how == "from_pretrained":  # the checkpoint folder itself holds the shrunk config
        fresh = AutoModelForCausalLM.from_pretrained(checkpoint)
    elif how == "shrink_like_checkpoint":
        shrink_like_checkpoint(fresh, checkpoint)
        assert model_sizes(fresh) == full.stages[0]["sizes"]
    else:
        extra["resume_from_checkpoint"] = str(checkpoint)  # the callback shrinks in Trainer.__init__
    resumed = StructuralPruningCallback(**RESUME_CONFIG)
    trainer = Trainer(
        model=fresh,
        args=_args(tmp_path, **RESUME_ARGS, **extra),
        train_dataset=_data(len(tok)),
        callbacks=[resumed],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))

    assert _config(fresh) == _config(model)
    assert resumed.stages == full.stages
    expected, got = _weights(model), _weights(fresh)
    assert expected.keys() == got.keys()
    # Bitwise: same data order, RNG states, optimizer and scheduler state and Taylor sums, all on one CPU
    # process; a GPU run would need a tolerance for non-deterministic kernels.
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.integration
def test_shrink_like_checkpoint_is_a_no_op_at_the_checkpoint_and_replays_what_is_left(full_run):
    from transformers import AutoModelForCausalLM

    model, callback, out = full_run
    loaded = AutoModelForCausalLM.from_pretrained(out / "checkpoint-9")
    before = _weights(loaded)
    shrink_like_checkpoint(loaded, out / "checkpoint-9")
    assert all(torch.equal(before[k], v) for k, v in _weights(loaded).items())
    # A model one stage in gets only the remaining stage, and then the final shapes.
    partial = AutoModelForCausalLM.from_pretrained(out / "checkpoint-6")
    shrink_like_checkpoint(partial, out / "checkpoint-9")
    assert model_sizes(partial) == callback.stages[-1]["sizes"] == model_sizes(model)
    assert {k: v.shape for k, v in _weights(partial).items()} == {
        k: v.shape for k, v in _weights(model).items()
    }


# ------------------------------------------------------------------------------------- distillation


@pytest.mark.integration
def test_distillation_student_shrinks_while_hidden_projections_keep_working(tmp_path):
    student, tok = _model()
    teacher, _ = build_tiny_model(
        "llama",
        num_hidden_layers=2,
        seed=1,
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
    )
    args = _args(
        tmp_path, cls=DistillationConfig, hidden_weight=1.0, layer_map="uniform", max_steps=6, logging_steps=1
    )
    pruning = StructuralPruningCallback(
        ffn_keep_ratio=0.5,
        kv_groups_keep_ratio=0.5,
        end_step=4,
        num_stages=2,
        importance="taylor",
        taylor_steps=2,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=_data(len(tok)), callbacks=[pruning]
    )
    projection = next(iter(trainer.projections.values()))
    initial = projection.weight.detach().clone()
    trainer.train()
    # hidden_size is untouched by structural pruning, so the 64 -> 96 projections fit before and after.
    assert student.config.hidden_size == 64 and tuple(projection.weight.shape) == (96, 64)
    assert not torch.equal(projection.weight, initial)  # trained through the stages
    assert (student.config.intermediate_size, student.config.num_key_value_heads) == (64, 1)
    hidden = [h["loss_hidden"] for h in trainer.state.log_history if "loss_hidden" in h]
    assert len(hidden) == 6 and all(torch.isfinite(torch.tensor(hidden)))


def test_distillation_refuses_layer_dropping_with_hidden_matching(tmp_path):
    student, tok = _model()
    teacher, _ = _model()
    args = _args(tmp_path, cls=DistillationConfig, hidden_weight=1.0)
    with pytest.raises(ValueError, match=r"hidden_weight=1.0 with num_layers=2: DistillationTrainer fixes"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=_data(len(tok)),
            callbacks=[StructuralPruningCallback(num_layers=2, end_step=4)],
        )


@pytest.mark.parametrize(
    ("targets", "overrides", "match"),
    [
        (
            dict(kv_groups_keep_ratio=0.5),
            dict(attention_weight=1.0),
            "attention maps are matched head by head",
        ),
        (
            dict(num_layers=2),
            dict(attention_weight=1.0, layer_map="1:1,2:2"),
            "explicit layer pairs would point",
        ),
    ],
)
def test_distillation_refuses_attention_matching_that_shrinking_breaks(tmp_path, targets, overrides, match):
    student, tok = _model()
    args = _args(tmp_path, cls=DistillationConfig, **overrides)
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(
            model=student,
            teacher_model=_model()[0],
            args=args,
            train_dataset=_data(len(tok)),
            callbacks=[StructuralPruningCallback(**targets, end_step=4)],
        )


# --------------------------------------------------------------------------------------------- PEFT


@pytest.mark.integration
def test_lora_adapter_is_sliced_with_its_base_and_in_the_optimizer(tmp_path, monkeypatch):
    model, tok = _model()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["up_proj", "down_proj", "k_proj"]))
    after = AfterStages()
    ids = torch.randint(5, len(tok), (2, 12), generator=torch.Generator().manual_seed(5))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]

    def no_training_set(*args, **kwargs):
        raise AssertionError("the given calibration_batches were not used")

    monkeypatch.setattr(structural_module, "_calibration_from_dataloader", no_training_set)
    pruning = StructuralPruningCallback(
        ffn_keep_ratio=0.5,
        kv_groups_keep_ratio=0.5,
        end_step=4,
        num_stages=2,
        importance="activation",
        calibration_batches=batches,
    )
    trainer = Trainer(
        model=peft_model,
        args=_args(tmp_path, max_steps=5),
        train_dataset=_data(len(tok)),
        callbacks=[pruning, after],
    )
    trainer.train()
    layer = peft_model.base_model.model.model.layers[0]
    assert tuple(layer.mlp.up_proj.lora_B["default"].weight.shape) == (64, 4)
    assert tuple(layer.mlp.down_proj.lora_A["default"].weight.shape) == (4, 64)
    assert tuple(layer.self_attn.k_proj.lora_B["default"].weight.shape) == (16, 4)
    assert after.checked == 5  # optimizer == trainable LoRA parameters, state shapes right, every step
    merged = peft_model.merge_and_unload()
    assert merged.config.intermediate_size == 64


def test_taylor_on_a_frozen_peft_base_fails_at_trainer_init(tmp_path):
    model, tok = _model()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["up_proj"]))
    with pytest.raises(ValueError, match="importance='taylor' scores structures by the training gradients"):
        Trainer(
            model=peft_model,
            args=_args(tmp_path),
            train_dataset=_data(len(tok)),
            callbacks=[StructuralPruningCallback(ffn_keep_ratio=0.5, end_step=4, importance="taylor")],
        )


# ---------------------------------------------------------------------------------------------- config


def test_schedule_reaches_the_targets_at_end_step_and_only_shrinks():
    original = {"ffn": 1000, "kv_groups": 8, "layers": 24}
    for schedule in ("linear", "cubic"):
        config = StructuralPruningConfig(
            ffn_keep_ratio=0.3,
            kv_groups_keep_ratio=0.5,
            num_layers=16,
            start_step=100,
            end_step=1000,
            num_stages=9,
            schedule=schedule,
            ffn_multiple_of=8,
        )
        steps = config.stage_steps()
        assert steps == [200, 300, 400, 500, 600, 700, 800, 900, 1000]
        plan = config.plan(original)
        sizes = dict(original)
        for target in plan:
            for kind, value in zip(("ffn", "kv_groups", "layers"), target[1:], strict=True):
                if value is not None:
                    assert value < sizes[kind]
                    sizes[kind] = value
            assert target.ffn is None or target.ffn % 8 == 0
        assert sizes == {"ffn": 304, "kv_groups": 4, "layers": 16}  # round(300) -> multiple of 8
    linear = StructuralPruningConfig(num_layers=4, end_step=4, num_stages=4, schedule="linear")
    cubic = StructuralPruningConfig(num_layers=4, end_step=4, num_stages=4)
    assert [t.layers for t in linear.plan({"layers": 12})] == [10, 8, 6, 4]
    assert [t.layers for t in cubic.plan({"layers": 12})] == [7, 5, 4]  # big cuts first; stage 4 has nothing
    assert StructuralPruningConfig(num_layers=1, start_step=0, end_step=5, num_stages=2).stage_steps() == [
        3,
        5,
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(end_step=4), "has no target"),
        (dict(ffn_keep_ratio=0.0, end_step=4), r"ffn_keep_ratio=0.0 must be a fraction in \(0, 1\]"),
        (dict(ffn_keep_ratio=50, end_step=4), r"ffn_keep_ratio=50 must be a fraction"),
        (dict(kv_groups_keep_ratio=True, end_step=4), r"kv_groups_keep_ratio=True must be a fraction"),
        (dict(num_layers=0, end_step=4), r"num_layers=0 must be an int >= 1"),
        (dict(num_layers=2, end_step=4, schedule="exp"), r"schedule='exp' is not a schedule"),
        (dict(num_layers=2, end_step=4, importance="fisher"), r"importance='fisher' is not known"),
        (dict(num_layers=2, end_step=4, start_step=-1), r"start_step=-1 must be an int >= 0"),
        (dict(num_layers=2), "end_step=None: give the optimizer step of the last stage"),
        (dict(num_layers=2, end_step=0), r"end_step=0 must be an int >= 1"),
        (dict(num_layers=2, end_step=4, num_stages=0), r"num_stages=0 must be an int >= 1"),
        (
            dict(num_layers=2, start_step=2, end_step=4, num_stages=3),
            "leaves 2 optimizer steps for num_stages=3",
        ),
        (dict(num_layers=2, end_step=4, taylor_steps=0), r"taylor_steps=0 must be an int >= 1"),
        (dict(num_layers=2, end_step=4, num_calibration_batches=0), r"num_calibration_batches=0 must be"),
        (dict(ffn_keep_ratio=0.5, end_step=4, ffn_multiple_of=0), r"ffn_multiple_of=0 must be an int >= 1"),
    ],
)
def test_bad_config_fails_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuralPruningConfig(**kwargs)


def test_targets_that_do_not_fit_the_model_fail():
    with pytest.raises(ValueError, match=r"ffn_keep_ratio=0.001 keeps 0 of 128 ffn"):
        StructuralPruningConfig(ffn_keep_ratio=0.001, end_step=4).plan({"ffn": 128})
    with pytest.raises(ValueError, match=r"num_layers=5 asks for 5 layers but the model has 3"):
        StructuralPruningConfig(num_layers=5, end_step=4).plan({"layers": 3})


def test_group_counts_the_config_cannot_load_fail_at_trainer_init(tmp_path):
    # 12 query heads in 6 groups over hidden 96: 5 groups = 10 heads, and 96 % 10 != 0 fails Llama's validation.
    model, tok = build_tiny_model(
        "llama",
        hidden_size=96,
        num_attention_heads=12,
        num_key_value_heads=6,
        head_dim=16,
        num_hidden_layers=1,
    )
    callback = StructuralPruningCallback(kv_groups_keep_ratio=0.85, end_step=4, num_stages=1)
    with pytest.raises(
        ValueError, match=r"would keep 5 key/value groups, which LlamaConfig .*\[1, 2, 3, 4, 6\]"
    ):
        Trainer(model=model, args=_args(tmp_path), train_dataset=_data(len(tok)), callbacks=[callback])


def test_config_parses_from_the_command_line_with_hf_argument_parser():
    (config,) = HfArgumentParser(StructuralPruningConfig).parse_args_into_dataclasses(
        [
            "--ffn_keep_ratio",
            "0.25",
            "--num_layers",
            "6",
            "--end_step",
            "300",
            "--schedule",
            "linear",
            "--importance",
            "taylor",
        ]
    )
    assert (config.ffn_keep_ratio, config.num_layers, config.end_step) == (0.25, 6, 300)
    assert config.schedule == "linear" and config.importance == "taylor"
    assert StructuralPruningConfig(**config.to_dict()) == config


def test_callback_arguments():
    base = StructuralPruningConfig(num_layers=2, end_step=10)
    assert StructuralPruningCallback(base, end_step=20).config.end_step == 20
    assert StructuralPruningCallback({"num_layers": 2, "end_step": 10}).config == base
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['end'\]"):
        StructuralPruningCallback(num_layers=2, end=10)
    with pytest.raises(TypeError, match="config must be a StructuralPruningConfig"):
        StructuralPruningCallback(["num_layers"])
    with pytest.raises(ValueError, match="calibration_batches=\\[\\]"):
        StructuralPruningCallback(base, calibration_batches=[])


# ---------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps"),
            "load_best_model_at_end=True with StructuralPruningCallback",
        ),
        (dict(fsdp="full_shard"), "cannot shrink a DeepSpeed- or FSDP-sharded model"),
    ],
)
def test_unsupported_training_setups_are_refused(tmp_path, overrides, match):
    model, tok = _model()
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=4)
    for key, value in overrides.items():  # set after __post_init__, which would validate FSDP on CPU
        setattr(args, key, value)
    with pytest.raises(ValueError, match=match):
        StructuralPruningCallback(num_layers=2, end_step=4).on_init_end(
            args, TrainerState(), None, model=model
        )


def test_several_processes_are_accepted(tmp_path, monkeypatch):
    """DDP is supported (tests/trainers/test_structural_ddp.py runs it); only sharding engines are refused."""
    model, tok = _model()
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    args = _args(tmp_path)
    assert args.world_size == 2
    callback = StructuralPruningCallback(num_layers=2, end_step=4)
    # the old "runs in one process" refusal is gone
    callback.on_init_end(args, TrainerState(), None, model=model)
    args.fsdp = "full_shard"
    with pytest.raises(ValueError, match=r"\(fsdp='full_shard'\): each process holds shards"):
        callback.on_init_end(args, TrainerState(), None, model=model)


def test_resume_problems_fail_clearly(tmp_path):
    model, _ = _model()
    args = _args(tmp_path)
    callback = StructuralPruningCallback(num_layers=2, end_step=4)
    with pytest.raises(
        ValueError, match=r"resumes at step 3, but no structural_pruning_state.json of that step"
    ):
        callback.on_train_begin(args, TrainerState(global_step=3), None, model=model)
    with pytest.raises(ValueError, match="got no model"):
        callback.on_train_begin(args, TrainerState(), None)
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    meta = {
        "format_version": 1,
        "global_step": 3,
        "config": {},
        "original": {"layers": 4},
        "stages": [{"step": 2, "drop": [0, 1], "sizes": {"layers": 2}}],
        "taylor_steps_gathered": 0,
    }
    (folder / STRUCTURAL_STATE_JSON).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"the model has sizes \{'layers': 3\} but the checkpoint .* has"):
        callback.on_train_begin(args, TrainerState(global_step=3), None, model=model)
    with pytest.raises(
        ValueError, match=r"sizes \{'layers': 3\}, but the run of .* started from \{'layers': 4\}"
    ):
        shrink_like_checkpoint(model, folder)
    (folder / STRUCTURAL_STATE_JSON).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99; this hf-lite reads version 1"):
        shrink_like_checkpoint(model, folder)
    with pytest.raises(ValueError, match="is not a checkpoint of a run with StructuralPruningCallback"):
        shrink_like_checkpoint(model, tmp_path)
    with pytest.raises(ValueError, match="is not an existing folder"):
        callback.save_state(tmp_path / "missing", 3)


def test_calibration_needs_a_training_set():
    with pytest.raises(ValueError, match="pass calibration_batches"):
        structural_module._calibration_from_dataloader(None, 2, 1, 0)
    empty = torch.utils.data.DataLoader([], batch_size=2)
    with pytest.raises(ValueError, match="the training set is empty"):
        structural_module._calibration_from_dataloader(empty, 2, 1, 0)
    loader = torch.utils.data.DataLoader(
        [{"input_ids": torch.tensor([i, i])} for i in range(10)], batch_size=2
    )
    batches = structural_module._calibration_from_dataloader(loader, 3, 2, seed=0)
    again = structural_module._calibration_from_dataloader(loader, 3, 2, seed=0)
    assert [b["input_ids"].shape for b in batches] == [torch.Size([3, 2])] * 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))


def test_model_sizes_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown size 'heads'"):
        model_sizes(_model()[0], ["heads"])


def test_optimizer_with_named_params_keeps_names_and_momentum_aligned():
    model, tok = _model()
    optimizer = torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    ids = torch.randint(5, len(tok), (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    up = model.model.layers[2].mlp.up_proj
    momentum = optimizer.state[up.weight]["momentum_buffer"].clone()  # (128, 64)
    keep = {i: torch.arange(0, 128, 2) for i in range(3)}
    structural_module._shrink_ffn(model, keep, optimizer)
    structural_module._shrink_layers(model, [0], optimizer)
    group = optimizer.param_groups[0]
    named = dict(model.named_parameters())
    assert group["param_names"] == list(named) and len(group["params"]) == len(named)
    assert all(p is named[n] for n, p in zip(group["param_names"], group["params"], strict=True))
    assert "model.layers.1.mlp.up_proj.weight" in group["param_names"]  # block 2 renumbered
    assert torch.equal(optimizer.state[up.weight]["momentum_buffer"], momentum[::2])
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    grad = up.weight.grad.clone()
    optimizer.step()  # the sliced momentum goes on: buf = 0.9 * buf + grad
    torch.testing.assert_close(optimizer.state[up.weight]["momentum_buffer"], 0.9 * momentum[::2] + grad)


def test_optimizer_states_that_cannot_be_sliced_are_refused():
    model, _ = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weight = model.model.layers[0].mlp.down_proj.weight
    optimizer.state[weight] = {"quantized": torch.zeros(7, dtype=torch.uint8)}  # like an 8-bit state
    keep = {i: torch.arange(64) for i in range(3)}
    with pytest.raises(
        ValueError, match=r"optimizer state 'quantized' has shape \(7,\).*optim='adamw_torch'"
    ):
        structural_module._shrink_ffn(model, keep, optimizer)


def test_internal_consistency_checks():
    model, _ = _model()
    layer = model.model.layers[0].mlp.down_proj
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    old = layer.weight
    before = {id(p): p for p in model.parameters()}
    wrong = structural_module._Edit(layer, "weight", 1, torch.arange(3))  # the weight was not sliced
    with pytest.raises(RuntimeError, match="disagree"):
        structural_module._edit_optimizer(optimizer, model, {id(old): (old, wrong)}, {}, before)
    layer.weight = torch.nn.Parameter(old.detach()[:, :3].clone())  # replaced behind the callback's back
    with pytest.raises(RuntimeError, match="neither sliced nor in a dropped block"):
        structural_module._edit_optimizer(optimizer, model, {}, {}, before)
    callback = StructuralPruningCallback(ffn_keep_ratio=0.5, end_step=4, importance="taylor")
    with pytest.raises(RuntimeError, match="no Taylor sums were gathered for ffn"):
        callback._scores("ffn", None)
    assert StageTarget(1, None, None, 2).layers == 2
