"""Recipes for chat data and LLM distillation: the data format and loss-mask keys, the on-policy training
arguments, and the generate stage (sequence-level KD) with its resumable, fingerprinted datasets."""

from __future__ import annotations

import copy
import json

import datasets
import pytest

from hf_lite.app.recipe import Recipe, apply_overrides

BASE = {
    "name": "r",
    "task": "causal-lm",
    "teacher": "org/teacher",
    "data": {"train": "chats.jsonl", "max_length": 32},
    "stages": [
        {"name": "student", "type": "init_student", "model": "teacher"},
        {"name": "gen", "type": "generate", "model": "teacher", "max_new_tokens": 8},
        {
            "name": "distill",
            "type": "distill",
            "model": "student",
            "data": "gen",
            "args": {"temperature": 1.0},
        },
    ],
}


def recipe(data=None, gen=None, distill=None, **top):
    raw = copy.deepcopy(BASE)
    raw["data"].update(data or {})
    raw["stages"][1].update(gen or {})
    raw["stages"][2].update(distill or {})
    raw.update(top)
    return raw


# ------------------------------------------------------------------------------------------ parse time


def test_defaults_and_what_a_recipe_says_reach_the_specs():
    r = Recipe.from_dict(recipe())
    assert (r.data.data_format, r.data.completion_only_loss, r.data.assistant_only_loss) == (
        "auto",
        True,
        True,
    )
    assert r.data.tokenize_kwargs()["data_format"] is None  # auto: detected from the columns by tokenize_data
    gen = r.stage("gen").spec
    assert (gen.max_new_tokens, gen.do_sample, gen.topk, gen.max_prompt_length) == (8, False, None, None)
    assert r.stage_inputs("distill") == ["student", "teacher", "gen"]  # --stage distill needs gen done too
    given = Recipe.from_dict(recipe(data={"data_format": "messages", "assistant_only_loss": False}))
    assert given.data.tokenize_kwargs() == {
        "max_length": 32,
        "data_format": "messages",
        "completion_only_loss": True,
        "assistant_only_loss": False,
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            recipe(data={"data_format": "chat"}),
            r"recipe\.data\.data_format='chat' is not a data format.*Allowed values: auto \(detected from the "
            r"columns\), text, prompt-completion, prompt, messages\.",
        ),
        (
            recipe(data={"data_format": "mesages"}),
            r"data_format='mesages' is not a data format \(did you mean 'messages'\?\)",
        ),
        (
            {
                **recipe(data={"data_format": "messages"}),
                "task": "sequence-classification",
                "stages": [{"name": "ft", "type": "finetune", "model": "teacher"}],
            },
            r"recipe\.data\.data_format='messages' applies to causal-lm data; task 'sequence-classification'",
        ),  # fmt: skip
        (
            recipe(data={"completion_only_loss": "yes"}),
            r"recipe\.data\.completion_only_loss='yes' must be true or false",
        ),
        (
            recipe(data={"assistant_only_loss": 0}),
            r"recipe\.data\.assistant_only_loss=0 must be true or false",
        ),
        (recipe(data={"dataformat": "text"}), r"unknown key 'dataformat' \(did you mean 'data_format'\?\)"),
    ],
)
def test_data_format_and_loss_keys_are_checked_at_parse(raw, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(raw)


@pytest.mark.parametrize(
    ("gen", "message"),
    [
        ({"max_new_tokens": 0}, r"recipe\.stages\[1\] \(gen\): max_new_tokens=0 must be an integer >= 1\."),
        ({"max_new_tokens": 2.5}, r"max_new_tokens=2\.5 must be an integer >= 1"),
        ({"topk": 0}, r"topk=0 must be an integer >= 1 \(or left out\)"),
        ({"max_prompt_length": -1}, r"max_prompt_length=-1 must be an integer >= 1 \(or left out\)"),
        ({"batch_size": True}, r"batch_size=True must be an integer >= 1"),
        ({"do_sample": "yes"}, r"do_sample='yes' must be true or false"),
        ({"temperature": 0}, r"temperature=0 must be a number > 0 .*set do_sample: false"),
        ({"top_p": 1.5}, r"top_p=1\.5 must be in \(0, 1\]"),
        ({"top_p": 0}, r"top_p=0 must be in \(0, 1\]"),
        ({"kd_temperature": -1.0}, r"kd_temperature=-1\.0 must be a number > 0"),
        ({"dtype": "bfloat16"}, r"dtype='bfloat16' is not a storage type.*float16 or float32"),
        ({"max_new_tokens": 32}, r"max_new_tokens=32 leaves no room for the prompt in data\.max_length=32"),
        ({"temprature": 1.0}, r"unknown key 'temprature' \(did you mean 'temperature'\?\)"),
    ],
)
def test_generate_stage_options_are_checked_at_parse(gen, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(recipe(gen=gen))


def test_what_a_training_stage_reads_as_data_is_checked_at_parse():
    with pytest.raises(ValueError, match=r"data='gne' is not an earlier stage \(did you mean 'gen'\?\)"):
        Recipe.from_dict(recipe(distill={"data": "gne"}))
    with pytest.raises(
        ValueError, match=r"data='student' is a init_student stage; data names an earlier generate"
    ):
        Recipe.from_dict(recipe(distill={"data": "student"}))
    with pytest.raises(ValueError, match=r"data=3 must be the name of an earlier generate stage"):
        Recipe.from_dict(recipe(distill={"data": 3}))
    with pytest.raises(ValueError, match=r"augment rewrites the recipe's text rows.*remove augment or data"):
        Recipe.from_dict(recipe(distill={"augment": {"n_aug": 1}}))
    later = recipe()
    later["stages"] = [later["stages"][0], later["stages"][2], later["stages"][1]]
    with pytest.raises(ValueError, match=r"data='gen' is not an earlier stage"):
        Recipe.from_dict(later)
    with pytest.raises(
        ValueError, match=r"a generate stage makes a causal LM teacher complete prompts; task is"
    ):
        Recipe.from_dict({**recipe(), "task": "sequence-classification"})
    # a longer completion is fine when the prompt length is given
    assert (
        Recipe.from_dict(recipe(gen={"max_new_tokens": 40, "max_prompt_length": 8})).stage("gen").spec.topk
        is None
    )


def test_overrides_reach_the_new_keys():
    raw = apply_overrides(
        recipe(),
        {
            "data.data_format": "messages",
            "data.completion_only_loss": False,
            "gen.topk": 4,
            "distill.lmbda": 0.5,
        },
    )
    r = Recipe.from_dict(raw)
    assert (r.data.data_format, r.data.completion_only_loss, r.stage("gen").spec.topk) == (
        "messages",
        False,
        4,
    )
    assert r.stage("distill").spec.args["lmbda"] == 0.5
    with pytest.raises(ValueError, match=r"'data_fromat' is not a data key \(did you mean 'data_format'\?\)"):
        apply_overrides(recipe(), {"data.data_fromat": "text"})


# ---------------------------------------------------------------------------- checked before anything runs


def _context(raw):
    from hf_lite.app.runner import RunContext

    return RunContext(Recipe.from_dict(raw))


def _chats(tmp_path, n=6):
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"the cat {i}"}, {"role": "assistant", "content": "a dog"}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"lmbda": 1.5}, r"stage 'distill': lmbda=1\.5 must be in \[0, 1\]"),
        ({"max_new_tokens": 0}, r"stage 'distill': max_new_tokens=0 must be an integer >= 1"),
        ({"generation_temperature": -1.0}, r"stage 'distill': generation_temperature=-1\.0 must be >= 0"),
        ({"top_p": 0.0}, r"stage 'distill': top_p=0\.0 must be in \(0, 1\]"),
        (
            {"teacher_tokenizer": "teacher"},
            r"stage 'distill': teacher_tokenizer='teacher', but a recipe tokenizes",
        ),
    ],
)
def test_on_policy_arguments_are_checked_before_anything_runs(args, message):
    from hf_lite.app.runner import check_stages

    raw = recipe(distill={"args": args, "data": None})
    raw["stages"].pop(1)
    with pytest.raises(ValueError, match=message):
        check_stages(_context(raw))


def test_on_policy_arguments_reach_the_distillation_config():
    from hf_lite.app.recipe import check_training_args
    from trainers import DistillationConfig

    on_policy = {"lmbda": 0.5, "max_new_tokens": 16, "generation_temperature": 0.7, "top_p": 0.9}
    r = Recipe.from_dict(recipe(distill={"args": on_policy}))
    args = check_training_args(
        r.stage("distill"), DistillationConfig, {"output_dir": "unused", "use_cpu": True}
    )
    assert {k: getattr(args, k) for k in on_policy} == on_policy


@pytest.mark.parametrize(
    ("distill_args", "message"),
    [
        ({"temperature": 2.0}, r"stored at kd_temperature=1\.0, but args\.temperature=2\.0; set both"),
        ({"temperature": 1.0, "lmbda": 0.5}, r"args\.lmbda=0\.5: a cache cannot score completions"),
        ({"temperature": 1.0, "loss_type": "reverse_kl"}, r"unset args \['loss_type'\]"),
        ({"temperature": 1.0, "hidden_weight": 1.0}, r"unset args \['hidden_weight'\]"),
    ],
)
def test_a_distill_stage_on_a_top_k_cache_is_checked_before_generation(tmp_path, distill_args, message):
    from hf_lite.app.runner import check_stages

    raw = recipe(data={"train": _chats(tmp_path)}, gen={"topk": 4}, distill={"args": distill_args})
    with pytest.raises(
        ValueError, match=r"stage 'distill' reads the top-k teacher cache of stage 'gen'.*" + message
    ):
        check_stages(_context(raw))
    check_stages(_context(recipe(data={"train": _chats(tmp_path)}, gen={"topk": 4})))  # temperature 1.0: fine


def test_a_generate_stage_on_data_without_prompts_is_refused_before_anything_runs(tmp_path):
    from hf_lite.app.generate_stage import generation_prompts
    from hf_lite.app.runner import check_stages

    text = tmp_path / "train.txt"
    text.write_text("the cat sat\nthe dog ran\n" * 5)
    with pytest.raises(
        ValueError, match=r"stage 'gen': the teacher completes prompts, but the recipe's data is 'text'"
    ):
        check_stages(_context(recipe(data={"train": str(text)})))
    opening = datasets.Dataset.from_dict({"messages": [[{"role": "assistant", "content": "hi"}]]})
    with pytest.raises(ValueError, match=r"stage 'g': conversation 0 starts with the assistant turn"):
        generation_prompts(opening, None, "stage 'g'")
    # prompts: the conversation up to its last assistant turn (the whole one without), or the prompt column
    chats = datasets.Dataset.from_dict({"messages": [[
        {"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], [{"role": "user", "content": "e"}]]})  # fmt: skip
    assert [[m["content"] for m in p] for p in generation_prompts(chats, None, "g")["prompt"]] == [
        ["s", "a", "b", "c"],
        ["e"],
    ]
    pairs = datasets.Dataset.from_dict({"prompt": ["x", "y"], "completion": ["1", "2"], "id": [0, 1]})
    assert generation_prompts(pairs, None, "g").to_dict() == {"prompt": ["x", "y"]}


# --------------------------------------------------------------------- tokenization and the generate stage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama teacher (word-level tokenizer) and prompt/completion data in its vocabulary."""
    from hf_lite.app.demo import make_corpus
    from hf_lite.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-gen")
    texts = make_corpus(60, seed=0)
    rows = [{"prompt": " ".join(t.split()[:4]), "completion": " " + " ".join(t.split()[4:7])} for t in texts]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = save_tiny_checkpoint(root / "teacher", "llama", texts=texts)
    return root, teacher


def _gen_recipe(root, teacher, out, data=None, **gen):
    return Recipe.from_dict({
        "name": "gen", "task": "causal-lm", "teacher": str(teacher), "output_dir": str(out),
        "data": {"train": str(root / "pairs.jsonl"), "max_length": 24, "max_eval_rows": 4, **(data or {})},
        "stages": [{"name": "gen", "type": "generate", "model": "teacher", "max_new_tokens": 4, "shard_size": 8,
                    "batch_size": 4, **gen},
                   {"name": "kd", "type": "distill", "model": "teacher", "data": "gen", "args": {"temperature": 1.0}}],
    })  # fmt: skip


def test_the_loss_keys_reach_tokenize_data(tiny):
    from hf_lite.app.runner import RunContext
    from hf_lite.data import tokenize_data

    root, teacher = tiny
    base = _gen_recipe(root, teacher, root / "unused").source
    masked = RunContext(Recipe.from_dict(base)).tokenized()["train"]
    base["data"].update(data_format="prompt-completion", completion_only_loss=False)
    ctx = RunContext(Recipe.from_dict(base))
    every = ctx.tokenized()["train"]
    reference = tokenize_data(
        ctx.raw_data()["train"], ctx.tokenizer, task="causal-lm", max_length=24, completion_only_loss=False
    )
    assert every.to_list() == reference.to_list()
    assert all(row["labels"] == row["input_ids"] for row in every)  # every token counts
    for row in masked:  # the default: the prompt's tokens are masked, the completion's count
        n = row["prompt_length"]
        assert row["labels"][:n] == [-100] * n and row["labels"][n:] == row["input_ids"][n:]


@pytest.mark.integration
def test_an_interrupted_generate_stage_resumes_to_an_identical_dataset(tiny, tmp_path, monkeypatch):
    from hf_lite.app.runner import run_recipe
    from hf_lite.teacher_cache import generations

    root, teacher = tiny
    run_recipe(_gen_recipe(root, teacher, tmp_path / "whole", topk=4), stages=["gen"])
    save = generations._save_shard

    def crash_after_the_first_shard(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(generations, "_save_shard", crash_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_gen_recipe(root, teacher, tmp_path / "cut", topk=4), stages=["gen"])
    assert (tmp_path / "cut" / "gen" / "train.partial" / "shard-00000").is_dir()
    monkeypatch.setattr(generations, "_save_shard", save)
    generated = []
    batch = generations.generate_batch
    monkeypatch.setattr(
        generations,
        "generate_batch",
        lambda model, rows, *a: generated.append(len(rows)) or batch(model, rows, *a),
    )
    run_recipe(_gen_recipe(root, teacher, tmp_path / "cut", topk=4), stages=["gen"])
    train_rows = json.loads((tmp_path / "cut" / "gen" / "stage.json").read_text())["train_rows"]
    assert sum(generated) == train_rows - 8 + 4  # the first shard (8 rows) kept; the 4 eval prompts generated
    for split in ("train", "eval"):
        whole = datasets.load_from_disk(str(tmp_path / "whole" / "gen" / split)).to_list()
        assert datasets.load_from_disk(str(tmp_path / "cut" / "gen" / split)).to_list() == whole
    assert not any((tmp_path / "cut" / "gen").glob("*.partial"))


@pytest.mark.integration
def test_a_teacher_changed_behind_an_interrupted_generate_stage_is_named(tiny, tmp_path, monkeypatch):
    """A teacher given by Hub id has no content signature in the run folder's settings: if its weights change
    while a generate stage is unfinished, the generations' own fingerprint refuses to mix the two."""
    from hf_lite.app import recipe as recipe_module
    from hf_lite.app.runner import run_recipe
    from hf_lite.teacher_cache import generations
    from hf_lite.testing import save_tiny_checkpoint

    root, _ = tiny
    teacher = save_tiny_checkpoint(
        tmp_path / "teacher", "llama", texts=[root.joinpath("pairs.jsonl").read_text()]
    )
    monkeypatch.setattr(recipe_module, "path_signature", lambda ref, recursive=False: None)  # as for a Hub id
    save = generations._save_shard

    def crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(generations, "_save_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_gen_recipe(root, teacher, tmp_path / "out"), stages=["gen"])
    monkeypatch.setattr(generations, "_save_shard", save)
    save_tiny_checkpoint(
        tmp_path / "teacher", "llama", texts=[root.joinpath("pairs.jsonl").read_text()], seed=1
    )
    with pytest.raises(ValueError, match=r"stage 'gen': the interrupted run in .*train\.partial' was made with "
                       r"other settings: .*the fingerprint differs in: teacher\b"):  # fmt: skip
        run_recipe(_gen_recipe(root, teacher, tmp_path / "out"), stages=["gen"])


@pytest.mark.integration
def test_a_training_stage_reads_the_teachers_answers_with_the_recipes_loss_mask(tiny, tmp_path):
    from hf_lite.app.generate_stage import training_data
    from hf_lite.app.runner import RunContext, run_recipe
    from hf_lite.teacher_cache import TEACHER_COLUMNS, teacher_cache_metadata

    root, teacher = tiny
    ctx = run_recipe(_gen_recipe(root, teacher, tmp_path / "out", topk=4), stages=["gen"])
    answers = datasets.load_from_disk(str(tmp_path / "out" / "gen" / "train"))
    rows = training_data(ctx, ctx.recipe.stage("kd"), keep_cache=True)["train"]
    assert sorted(rows.column_names) == sorted(["input_ids", *TEACHER_COLUMNS, "labels", "prompt_length"])
    assert teacher_cache_metadata(rows)["k"] == 4  # the trainer still sees a teacher cache
    for row, answer in zip(rows, answers, strict=True):
        n = len(answer["prompt_ids"])
        assert (
            row["prompt_length"] == n and row["input_ids"] == answer["prompt_ids"] + answer["completion_ids"]
        )
        assert row["labels"] == [-100] * n + answer["completion_ids"]  # the completion only, its EOS included
    every = RunContext(_gen_recipe(root, teacher, tmp_path / "out", {"completion_only_loss": False}, topk=4))
    plain = training_data(every, every.recipe.stage("kd"), keep_cache=False)["eval"]
    assert sorted(plain.column_names) == ["input_ids", "labels", "prompt_length"]
    assert all(row["labels"] == row["input_ids"] for row in plain)


def test_the_distill_command_maps_its_flags_to_the_recipe(capsys, monkeypatch):
    from hf_lite.app import cli

    real, built = cli._single_stage_recipe, {}
    monkeypatch.setattr(cli, "_single_stage_recipe", lambda args: built.setdefault("raw", real(args)))

    argv = [
        "distill",
        "--task",
        "causal-lm",
        "--teacher",
        "org/t",
        "--data",
        "chats.jsonl",
        "--output_dir",
        "o",
    ]
    assert cli.main([*argv, "--data_format", "chat"]) == 2
    assert "recipe.data.data_format='chat' is not a data format" in capsys.readouterr().err
    assert built["raw"]["data"]["data_format"] == "chat"
    r = Recipe.from_dict(real(cli._build_parser().parse_known_args([*argv, "--sequence_level"])[0]))
    assert [(s.name, s.type) for s in r.stages] == [
        ("student", "init_student"), ("generate", "generate"), ("distill", "distill"), ("evaluate", "evaluate")
    ]  # fmt: skip
    assert r.stage("distill").spec.data == "generate" and r.stage("generate").spec.max_new_tokens == 64
    assert r.data.data_format == "auto"
