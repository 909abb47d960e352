"""PruningCallback: gradual pruning inside a plain transformers Trainer on a tiny Llama (CPU, a few steps)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

import trainers.pruning_callback as pruning_module
from hf_lite.pruning import CubicSchedule, find_prunable_modules, pruned_count
from hf_lite.testing import build_tiny_model
from tests.launch import launch_two
from trainers.pruning_callback import PRUNING_STATE_JSON, PRUNING_STATE_NAME, PruningCallback, PruningConfig

HERE = Path(__file__).resolve().parent
SCHEDULE = dict(target_sparsity=0.5, start_step=2, end_step=8, frequency=2)  # updates at 2, 4, 6, 8
UPDATE_STEPS = (2, 4, 6, 8)
STEPS = 12


def _data(vocab: int, rows: int = 48, length: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (rows, length), generator=generator)  # (rows, tokens)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def _args(output_dir: Path, **overrides) -> TrainingArguments:
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
    return TrainingArguments(**{**kwargs, **overrides})


class Recorder(TrainerCallback):
    """Records, after every optimizer step, what the pruning callback left in the model and optimizer."""

    def __init__(self, pruning: PruningCallback):
        self.pruning = pruning
        self.steps: dict[int, dict] = {}
        self.grad_at_pruned: list[float] = []
        self.movement: dict[int, dict[str, torch.Tensor]] = {}  # step -> -sum(W * grad) up to that step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        masks = self.pruning.masks
        previous = self.movement.get(state.global_step, {})
        scores = {}
        for name, module in find_prunable_modules(model).items():
            grad = module.weight.grad
            if grad is not None and not masks[name].all():
                self.grad_at_pruned.append(float(grad[~masks[name]].abs().max()))
            step = -(module.weight.detach().float() * grad.float())  # Sanh et al.: S -= W * dL/dW
            scores[name] = previous[name] + step if name in previous else step
        self.movement[state.global_step + 1] = scores

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        layers = find_prunable_modules(model)
        zeros = {n: int((m.weight == 0).sum()) for n, m in layers.items()}
        moment_max = 0.0
        for name, module in layers.items():
            pruned = ~self.pruning.masks[name]
            for value in optimizer.state.get(module.weight, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == module.weight.shape and pruned.any():
                    moment_max = max(moment_max, float(value[pruned].abs().max()))
        self.steps[state.global_step] = {
            "zeros": zeros,
            "numel": {n: m.weight.numel() for n, m in layers.items()},
            "sparsity": sum(zeros.values()) / sum(m.weight.numel() for m in layers.values()),
            "scheduled": self.pruning.current_sparsity,
            "masks": {n: m.clone() for n, m in self.pruning.masks.items()},
            "moment_max_at_pruned": moment_max,
        }


def _train(tmp_path: Path, pruning: PruningCallback, *, recorder: bool = True, resume=None, **overrides):
    model, tokenizer = build_tiny_model("llama", seed=0)
    rec = Recorder(pruning) if recorder else None
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, **overrides),
        train_dataset=_data(len(tokenizer)),
        callbacks=[pruning] + ([rec] if rec else []),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, rec


@pytest.fixture(scope="module")
def magnitude_run(tmp_path_factory):
    """One magnitude-pruned run with gradient accumulation, shared by the checks below."""
    pruning = PruningCallback(**SCHEDULE)
    # 2 x 2 micro-batches per optimizer step: the schedule counts optimizer steps, not batches.
    trainer, rec = _train(
        tmp_path_factory.mktemp("magnitude"),
        pruning,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    return trainer, rec, pruning


# ------------------------------------------------------------------------------------------ schedule


@pytest.mark.integration
def test_reaches_target_and_holds_after_every_step_from_end_step(magnitude_run):
    trainer, rec, pruning = magnitude_run
    assert trainer.state.global_step == STEPS and sorted(rec.steps) == list(range(1, STEPS + 1))
    assert len(pruning.masks) == 14  # 7 projections x 2 layers; embeddings, norms, lm_head left dense
    for step in range(SCHEDULE["end_step"], STEPS + 1):
        assert rec.steps[step]["sparsity"] == pytest.approx(0.5, abs=0.005), step
        assert rec.steps[step]["scheduled"] == 0.5
    report = pruning.report()
    assert report.targeted_sparsity == pytest.approx(0.5, abs=0.005)
    assert set(report.layers) == set(pruning.masks)
    assert pruning.current_sparsity == 0.5
    # The model trained: the kept weights moved away from their initial values.
    initial, _ = build_tiny_model("llama", seed=0)
    name = "model.layers.0.mlp.up_proj"
    kept = pruning.masks[name]
    now = dict(trainer.model.named_modules())[name].weight[kept]
    assert not torch.equal(now, dict(initial.named_modules())[name].weight[kept])


@pytest.mark.integration
def test_intermediate_sparsity_follows_the_cubic_schedule_exactly(magnitude_run):
    _, rec, _ = magnitude_run
    schedule = CubicSchedule(final_sparsity=0.5, start_step=2, end_step=8, frequency=2)
    assert rec.steps[1]["sparsity"] == 0.0  # before start_step: dense
    for step in UPDATE_STEPS:
        expected = schedule.sparsity_at(step)
        assert rec.steps[step]["scheduled"] == expected
        for name, zeros in rec.steps[step]["zeros"].items():  # exact per-layer count, from the weights
            assert zeros == pruned_count(rec.steps[step]["numel"][name], expected), (step, name)
    # Between updates the sparsity in force stays that of the last update.
    for step in range(2, STEPS + 1):
        assert rec.steps[step]["scheduled"] == schedule.sparsity_at(schedule.last_update_step(step))
    assert 0 < rec.steps[4]["sparsity"] < rec.steps[6]["sparsity"] < rec.steps[8]["sparsity"]


@pytest.mark.integration
def test_masks_only_grow(magnitude_run):
    _, rec, _ = magnitude_run
    for step in range(2, STEPS):
        before, after = rec.steps[step]["masks"], rec.steps[step + 1]["masks"]
        for name in before:
            revived = after[name] & ~before[name]
            assert not revived.any(), (step, name)


@pytest.mark.integration
def test_optimizer_moments_of_pruned_weights_are_zero_after_each_step(magnitude_run):
    trainer, rec, pruning = magnitude_run
    # Pruned weights do get gradients, so without the callback their moments would be non-zero.
    assert rec.grad_at_pruned and max(rec.grad_at_pruned) > 0
    for step in range(4, STEPS + 1):
        assert rec.steps[step]["moment_max_at_pruned"] == 0.0, step
    modules = find_prunable_modules(trainer.model)
    for name, mask in pruning.masks.items():
        state = trainer.optimizer.state[modules[name].weight]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(state[key][~mask]) == 0
            assert torch.count_nonzero(state[key][mask]) > 0  # kept weights still train


@pytest.mark.integration
def test_pruning_is_permanent_and_survives_save_and_from_pretrained(magnitude_run, tmp_path):
    trainer, _, pruning = magnitude_run
    model = trainer.model
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    fresh, _ = build_tiny_model("llama", seed=0)
    assert set(model.state_dict()) == set(fresh.state_dict())  # no weight_orig, no weight_mask
    model.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    layers = find_prunable_modules(loaded)
    for name, mask in pruning.masks.items():
        weight = layers[name].weight
        assert torch.equal(weight == 0, ~mask), name
        assert torch.equal(weight, dict(model.named_modules())[name].weight.detach().cpu())
    from hf_lite.pruning import sparsity_report

    assert sparsity_report(loaded).targeted_sparsity == pytest.approx(0.5, abs=0.005)


@pytest.mark.integration
def test_ranking_happens_only_at_scheduled_updates(tmp_path, monkeypatch):
    calls = []
    original = pruning_module.unstructured_mask

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pruning_module, "unstructured_mask", counting)
    _train(tmp_path, PruningCallback(**SCHEDULE), recorder=False)
    assert len(calls) == len(UPDATE_STEPS) * 14  # one ranking per layer per update, none in between


# ------------------------------------------------------------------------------------------ patterns


@pytest.mark.integration
def test_two_four_pattern_holds_in_every_group(tmp_path):
    pruning = PruningCallback(pattern="2:4", start_step=0, end_step=6, frequency=2)
    trainer, rec = _train(tmp_path, pruning, max_steps=8)
    assert pruning.config.target_sparsity == 0.5
    schedule = pruning.schedule
    modules = find_prunable_modules(trainer.model)
    for step, record in rec.steps.items():
        for name, mask in record["masks"].items():
            groups = mask.reshape(mask.shape[0], -1, 4)  # nn.Linear (out, in): groups along the inputs
            assert (groups.sum(-1) >= 2).all(), (step, name)  # never more than 2 of 4 pruned
            if step in (2, 4, 6):
                expected = pruned_count(mask.numel(), schedule.sparsity_at(step))
                assert int((~mask).sum()) == expected, (step, name)
    for name, mask in pruning.masks.items():
        weight = modules[name].weight
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all(), name  # exactly 2:4 at the end
        assert ((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) >= 2).all(), name
    assert pruning.report().targeted_sparsity == pytest.approx(0.5, abs=0.005)


class _Snapshot(TrainerCallback):
    """Placed before the pruning callback: sees the weights after the optimizer step, before masking."""

    def __init__(self, at_step: int):
        self.at_step, self.weights = at_step, None

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at_step:
            self.weights = {
                n: m.weight.detach().abs().clone() for n, m in find_prunable_modules(model).items()
            }


@pytest.mark.integration
def test_global_scope_uses_one_threshold(tmp_path):
    # Dense until step 3, then one update to 0.5 at step 4: every weight is ranked once, across all layers.
    pruning = PruningCallback(target_sparsity=0.5, scope="global", start_step=3, end_step=4, frequency=1)
    snapshot = _Snapshot(at_step=4)
    model, tokenizer = build_tiny_model("llama", seed=0)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=6),
        train_dataset=_data(len(tokenizer)),
        callbacks=[snapshot, pruning],
    )
    trainer.train()
    masks, scores = pruning.masks, snapshot.weights
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == pruned_count(total, 0.5)
    highest_pruned = max(float(scores[n][~m].max()) for n, m in masks.items())
    lowest_kept = min(float(scores[n][m].min()) for n, m in masks.items())
    assert highest_pruned <= lowest_kept
    per_layer = sorted(round(1 - m.float().mean().item(), 4) for m in masks.values())
    assert per_layer[0] < per_layer[-1]  # one threshold, so layers end at different sparsities


@pytest.mark.integration
def test_movement_pruning_reaches_the_target_with_its_own_masks(tmp_path, magnitude_run):
    pruning = PruningCallback(method="movement", **SCHEDULE)
    trainer, rec = _train(tmp_path, pruning, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    for name, mask in pruning.masks.items():
        assert int((~mask).sum()) == pruned_count(mask.numel(), 0.5), name
    assert rec.steps[STEPS]["sparsity"] == pytest.approx(0.5, abs=0.005)
    for step in range(2, STEPS):
        for name, before in rec.steps[step]["masks"].items():
            assert not (rec.steps[step + 1]["masks"][name] & ~before).any()
    # At the last update, weights still alive were ranked by accumulated -W * grad: every weight it pruned
    # scores at most every weight it kept.
    end = SCHEDULE["end_step"]
    alive = rec.steps[end - 1]["masks"]
    for name, mask in pruning.masks.items():
        scores = rec.movement[end][name]
        newly_pruned, kept = alive[name] & ~mask, mask
        assert newly_pruned.any()
        assert scores[newly_pruned].max() <= scores[kept].min(), name
    # Same model, data and schedule as the magnitude run: movement scores pick other weights.
    _, _, magnitude = magnitude_run
    same = sum(int((pruning.masks[n] == magnitude.masks[n]).sum()) for n in pruning.masks)
    assert same < 0.9 * sum(m.numel() for m in pruning.masks.values())


@pytest.mark.integration
def test_peft_model_prunes_the_base_layers(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = build_tiny_model("llama", seed=0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    pruning = PruningCallback(target_sparsity=0.5, start_step=1, end_step=3, frequency=1)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=4),
        train_dataset=_data(len(tokenizer)),
        callbacks=[pruning],
    )
    trainer.train()
    assert "model.layers.0.self_attn.q_proj.base_layer" in pruning.masks
    assert not any("lora_" in name for name in pruning.masks)
    base = model.get_base_model()
    weight = dict(base.named_modules())["model.layers.0.self_attn.q_proj.base_layer"].weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)
    assert pruning.report().targeted_sparsity == pytest.approx(0.5, abs=0.005)


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.integration
@pytest.mark.parametrize("method, found_via", [("magnitude", "args"), ("movement", "output_dir")])
def test_resumed_run_ends_with_the_same_masks_and_weights(tmp_path, method, found_via):
    # Checkpoint at step 5: between the updates at 4 and 6, mid-ramp, with movement scores accumulated.
    config = PruningConfig(method=method, **SCHEDULE)
    full_pruning = PruningCallback(config)
    full, _ = _train(tmp_path / "full", full_pruning, recorder=False, save_strategy="steps", save_steps=5)
    checkpoint = tmp_path / "full" / "checkpoint-5"
    meta = json.loads((checkpoint / PRUNING_STATE_JSON).read_text())
    assert meta["global_step"] == 5 and meta["last_update_step"] == 4
    assert meta["current_sparsity"] == config.schedule().sparsity_at(4)
    tensors = load_file(checkpoint / PRUNING_STATE_NAME)
    assert any(k.startswith("scores.") for k in tensors) == (method == "movement")

    resumed_pruning = PruningCallback(config)
    if found_via == "args":  # checkpoint outside output_dir: named in TrainingArguments, like the examples do
        resumed, _ = _train(
            tmp_path / "resumed",
            resumed_pruning,
            recorder=False,
            save_strategy="no",
            resume=str(checkpoint),
            resume_from_checkpoint=str(checkpoint),
        )
    else:  # train(resume_from_checkpoint=True) picks the last checkpoint of output_dir
        shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-5")
        resumed, _ = _train(
            tmp_path / "resumed", resumed_pruning, recorder=False, save_strategy="no", resume=True
        )
    assert resumed.state.global_step == STEPS
    assert full_pruning.masks.keys() == resumed_pruning.masks.keys()
    for name, mask in full_pruning.masks.items():
        assert torch.equal(mask, resumed_pruning.masks[name]), name
    # Bitwise: same weights, optimizer state, data order and RNG on one CPU process; no tolerance needed.
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for key, value in full_state.items():
        assert torch.equal(value, resumed_state[key]), key


@pytest.mark.integration
def test_resume_without_pruning_state_fails_clearly(tmp_path):
    _train(
        tmp_path / "full",
        PruningCallback(**SCHEDULE),
        recorder=False,
        max_steps=5,
        save_strategy="steps",
        save_steps=5,
    )
    checkpoint = tmp_path / "other" / "checkpoint-5"
    shutil.copytree(tmp_path / "full" / "checkpoint-5", checkpoint)
    os.remove(checkpoint / PRUNING_STATE_NAME)
    with pytest.raises(ValueError, match="resumes at step 5, but no pruning state of that step"):
        _train(tmp_path / "other", PruningCallback(**SCHEDULE), recorder=False, resume=True)


@pytest.mark.integration
def test_load_best_model_at_end_keeps_the_masks_of_the_best_checkpoint(tmp_path):
    scores = iter([1.0, 0.5, 0.2])  # evaluations at steps 4, 8, 12: the first one is best

    def compute_metrics(prediction):
        return {"score": next(scores)}

    pruning = PruningCallback(**SCHEDULE)
    model, tokenizer = build_tiny_model("llama", seed=0)
    args = _args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
        per_device_eval_batch_size=4,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_data(len(tokenizer)),
        eval_dataset=_data(len(tokenizer), rows=4),
        compute_metrics=compute_metrics,
        callbacks=[pruning],
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    saved = load_file(tmp_path / "checkpoint-4" / PRUNING_STATE_NAME)
    assert pruning.current_sparsity == pruning.schedule.sparsity_at(4) < 0.5
    modules = find_prunable_modules(trainer.model)
    for name, mask in pruning.masks.items():
        assert torch.equal(mask, saved[f"masks.{name}"]), name
        assert torch.equal(modules[name].weight == 0, ~mask), name  # the best weights, with their zeros


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target_sparsity=1.0, end_step=10), ValueError, r"target_sparsity=1.0 is outside \[0, 1\)"),
        (dict(target_sparsity=-0.1, end_step=10), ValueError, r"target_sparsity=-0.1 is outside \[0, 1\)"),
        (dict(target_sparsity=50, end_step=10), ValueError, "not a percentage"),
        (dict(pattern="4:2", end_step=10), ValueError, r"pattern='4:2'.*needs 1 <= n < m"),
        (dict(pattern="2:2", end_step=10), ValueError, r"pattern='2:2'.*needs 1 <= n < m"),
        (dict(pattern="two:four", end_step=10), ValueError, "pattern='two:four' is not understood"),
        (
            dict(target_sparsity=0.5, start_step=5, end_step=5),
            ValueError,
            "end_step=5 must be greater than start_step=5",
        ),
        (
            dict(target_sparsity=0.5, start_step=8, end_step=3),
            ValueError,
            "end_step=3 must be greater than start_step=8",
        ),
        (dict(target_sparsity=0.5), ValueError, "end_step=None"),
        (dict(end_step=10), ValueError, "target_sparsity=None"),
        (
            dict(method="random", target_sparsity=0.5, end_step=10),
            ValueError,
            "method='random' is not a pruning method",
        ),
        (
            dict(scope="row", target_sparsity=0.5, end_step=10),
            ValueError,
            "scope='row' is not a pruning scope",
        ),
        (dict(pattern="2:4", scope="global", end_step=10), ValueError, "scope='global' cannot apply"),
        (dict(pattern="2:4", target_sparsity=0.3, end_step=10), ValueError, "contradicts pattern='2:4'"),
        (
            dict(target_sparsity=0.2, initial_sparsity=0.4, end_step=10),
            ValueError,
            "above target_sparsity=0.2",
        ),
        (dict(target_sparsity=0.5, end_step=10, frequency=0), ValueError, "frequency=0 must be >= 1"),
        (
            dict(target_sparsity=0.5, end_step=10, include=["q_proj("]),
            ValueError,
            "not a valid regular expression",
        ),
        (
            dict(method="movement", target_sparsity=0.5, initial_sparsity=0.1, end_step=10),
            ValueError,
            "prune before any gradient",
        ),
        (
            dict(target_sparsity=0.5, end_step=10, sparsity=0.5),
            TypeError,
            r"unknown argument\(s\) \['sparsity'\]",
        ),
    ],
)
def test_bad_config_fails_early(kwargs, error, match):
    with pytest.raises(error, match=match):
        PruningCallback(**kwargs)


def test_config_object_dict_and_overrides():
    config = PruningConfig(target_sparsity=0.5, end_step=10)
    assert PruningCallback(config).config is config
    assert PruningCallback(config, end_step=20).config.end_step == 20
    assert PruningCallback({"target_sparsity": 0.3, "end_step": 10}).config.target_sparsity == 0.3
    with pytest.raises(ValueError, match="end_step=5 must be greater than start_step=5"):
        PruningCallback(config, start_step=5, end_step=5)
    with pytest.raises(TypeError, match="config must be a PruningConfig"):
        PruningCallback(0.5)


def test_config_parses_from_the_command_line_with_hf_argument_parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PruningConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--method",
            "movement",
            "--target_sparsity",
            "0.6",
            "--end_step",
            "300",
            "--frequency",
            "10",
            "--include",
            "mlp",
            "self_attn",
        ]
    )
    assert (config.method, config.target_sparsity, config.end_step) == ("movement", 0.6, 300)
    assert config.include == ["mlp", "self_attn"] and "embed" in config.exclude
    (config,) = parser.parse_dict({"pattern": "2:4", "end_step": 100, "frequency": 10})
    assert config.target_sparsity == 0.5
    with pytest.raises(ValueError, match="target_sparsity=None"):
        parser.parse_dict({"end_step": 100})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(include=["no_such_layer"]), "include pattern 'no_such_layer' matches no Linear/Conv1D layer"),
        (dict(exclude=["no_such_layer"]), "exclude pattern 'no_such_layer' matches no Linear/Conv1D layer"),
        (dict(include=["embed_tokens"], exclude=None), "matches no Linear/Conv1D layer"),
    ],
)
def test_patterns_matching_no_layer_fail_at_trainer_init(tmp_path, kwargs, match):
    model, tokenizer = build_tiny_model("llama", seed=0)
    callback = PruningCallback(target_sparsity=0.5, end_step=4, frequency=1, **kwargs)
    with pytest.raises(ValueError, match=match):
        Trainer(model=model, args=_args(tmp_path), train_dataset=_data(len(tokenizer)), callbacks=[callback])


def test_movement_on_frozen_peft_base_fails_at_trainer_init(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = build_tiny_model("llama", seed=0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    callback = PruningCallback(method="movement", target_sparsity=0.5, end_step=4, frequency=1)
    with pytest.raises(ValueError, match="method='movement' needs gradients of the pruned weights"):
        Trainer(model=model, args=_args(tmp_path), train_dataset=_data(len(tokenizer)), callbacks=[callback])


def test_nm_pattern_on_layers_of_the_wrong_width_fails_at_trainer_init(tmp_path):
    model, tokenizer = build_tiny_model("llama", seed=0)  # in-features 64 and 128: not multiples of 3
    callback = PruningCallback(pattern="2:3", end_step=4, frequency=1)
    with pytest.raises(ValueError, match="pattern='2:3' needs a number of input features divisible by 3"):
        Trainer(model=model, args=_args(tmp_path), train_dataset=_data(len(tokenizer)), callbacks=[callback])


def test_report_before_training_fails():
    with pytest.raises(RuntimeError, match="call it after training has started"):
        PruningCallback(target_sparsity=0.5, end_step=4).report()


# ------------------------------------------------------------------------------------------ DDP


@pytest.mark.multiprocess
def test_two_processes_end_with_identical_masks(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = launch_two(
        [str(HERE / "pruning_ddp_script.py"), str(tmp_path), "movement"], env=env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["parallel_mode"].endswith("DISTRIBUTED") for i in infos), infos
    # Movement scores come from all-reduced gradients: the ranks agreed before any broadcast.
    assert all(i["mask_disagreements"] == 0 for i in infos), infos
    masks = [load_file(tmp_path / f"masks_rank{r}.safetensors") for r in (0, 1)]
    assert masks[0].keys() == masks[1].keys() and len(masks[0]) == 14
    for name in masks[0]:
        assert torch.equal(masks[0][name], masks[1][name]), name
    for info in infos:
        assert info["targeted_sparsity"] == pytest.approx(0.5, abs=0.005)
