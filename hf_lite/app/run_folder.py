"""A recipe's run folder: which stage results it holds, under which settings, and what to do with stale ones.

``<output_dir>/hf_lite_run.json`` claims the folder for one recipe. Each stage writes ``<output_dir>/<stage>/``:
``running.json`` from the moment it starts, and its marker ``stage.json`` once its result is complete, each with
the stage's fingerprint, its settings and the settings hashes of the stages before it
(:meth:`hf_lite.app.recipe.Recipe.stage_chain`). Before a stage runs, :func:`prepare_stage` makes its folder
hold only work done under the current settings:

- a complete result of these settings: the stage is skipped (:func:`stage_done`);
- an unfinished run of these settings: kept, and a training stage resumes from its last checkpoint;
- a complete result of other settings: moved to ``<output_dir>/.previous/<stage>`` and deleted only when the
  new result is complete (:func:`finish_stage`); if the settings come back before that, it is moved back;
- an unfinished run of other settings (or files no marker describes): deleted with its checkpoints, which
  are never resumed under other settings.

Each case that reruns a stage says why in one log line (which setting changed, or which earlier stage).

>>> import tempfile, pathlib
>>> read_marker(pathlib.Path(tempfile.mkdtemp())) is None  # no marker: nothing recorded
True
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from hf_lite._utils import atomic_write_text, did_you_mean, replace_dir
from hf_lite.app.fingerprint import changed_settings

RUN_MARKER = "hf_lite_run.json"
STAGE_MARKER = "stage.json"
#: The marker of a stage that started and has not finished.
RUNNING_MARKER = "running.json"
#: Where a stage's previous complete result waits, under the run folder, until its replacement is complete.
PREVIOUS_DIR = ".previous"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_marker(folder: Path, name: str = STAGE_MARKER) -> dict[str, Any] | None:
    """The marker ``name`` in ``folder``, ``None`` when there is none (or it cannot be read)."""
    try:
        marker = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def claim_run_folder(recipe: Any) -> None:
    """Refuse an output folder that holds something else than a previous run of this recipe."""
    root = Path(recipe.output_dir)
    marker = root / RUN_MARKER
    if root.exists() and any(root.iterdir()):
        if not marker.is_file():
            raise ValueError(
                f"output_dir {str(root)!r} exists, is not empty and is not an hf-lite run folder (no {RUN_MARKER}). "
                "Choose another output_dir, or empty that folder."
            )
        previous = json.loads(marker.read_text())
        if previous.get("recipe") != recipe.name:
            raise ValueError(
                f"output_dir {str(root)!r} holds a run of recipe {previous.get('recipe')!r}, not {recipe.name!r}. "
                "Choose another output_dir for this recipe."
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"recipe": recipe.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def stage_done(ctx: Any, stage: Any) -> bool:
    """Whether ``<stage>/`` holds a complete result made with the stage's current settings."""
    marker = read_marker(ctx.root / stage.name)
    return marker is not None and marker.get("fingerprint") == ctx.recipe.stage_fingerprint(stage.name)


def _marker(ctx: Any, stage: Any) -> dict[str, Any]:
    return {
        "fingerprint": ctx.recipe.stage_fingerprint(stage.name),
        "settings": ctx.recipe.stage_settings(stage.name),
        "chain": ctx.recipe.stage_chain(stage.name),
    }


def rerun_reason(ctx: Any, stage: Any, marker: dict[str, Any] | None) -> str:
    """Why a stage whose folder holds ``marker`` must run again, in a few words."""
    if marker is None:
        return "its folder holds files that no stage marker describes"
    if "settings" not in marker:
        return "its last run was recorded by an older hf-lite, without its settings"
    changed = changed_settings(marker["settings"], ctx.recipe.stage_settings(stage.name))
    if changed:
        return f"its settings changed ({'; '.join(changed)})"
    before = dict(map(tuple, marker.get("chain", [])))
    for name, digest in ctx.recipe.stage_chain(stage.name)[:-1]:
        if before.get(name) != digest:
            return f"an earlier stage it follows changed ({name})"
    return "the stages before it changed"


def prepare_stage(ctx: Any, stage: Any) -> None:
    """Main process, before a stage that is not done runs: leave in ``<stage>/`` only work of the current
    settings (see the module docstring), log why the stage reruns, and mark it running."""
    folder, previous = ctx.root / stage.name, ctx.root / PREVIOUS_DIR / stage.name
    fingerprint = ctx.recipe.stage_fingerprint(stage.name)
    done, running = read_marker(folder), read_marker(folder, RUNNING_MARKER)
    if done is None and running is not None and running.get("fingerprint") == fingerprint:
        return  # an unfinished run of these settings: resumed
    kept = read_marker(previous)
    if kept is not None and kept.get("fingerprint") == fingerprint:
        replace_dir(previous, folder)
        ctx.log(f"{stage.name}: restored its result for these settings, kept from an earlier run")
        return
    if folder.is_dir() and any(folder.iterdir()):
        why = rerun_reason(ctx, stage, done or running)
        if done is not None:
            previous.parent.mkdir(parents=True, exist_ok=True)
            replace_dir(folder, previous)
            after = "; every stage after it reruns too" if why.startswith("its settings") else ""
            ctx.log(
                f"{stage.name}: rerunning from scratch because {why}{after}. Its previous result waits in "
                f"{previous} until the new one is complete."
            )
        else:
            shutil.rmtree(folder)
            ctx.log(f"{stage.name}: discarding an unfinished run and its checkpoints because {why}")
    write_json(folder / RUNNING_MARKER, _marker(ctx, stage))


def stage_status(ctx: Any, stage: Any) -> str:
    """What a run would do with ``stage`` given its folder, in a few words (for ``hf-lite plan``)."""
    folder = ctx.root / stage.name
    if stage_done(ctx, stage):
        return "done: run skips it"
    done, running = read_marker(folder), read_marker(folder, RUNNING_MARKER)
    fingerprint = ctx.recipe.stage_fingerprint(stage.name)
    if done is None and running is not None and running.get("fingerprint") == fingerprint:
        return "unfinished: run resumes it"
    kept = read_marker(ctx.root / PREVIOUS_DIR / stage.name)
    if kept is not None and kept.get("fingerprint") == fingerprint:
        return "run restores its earlier result"
    if not folder.is_dir() or not any(folder.iterdir()):
        return "not run yet"
    return f"run reruns it from scratch: {rerun_reason(ctx, stage, done or running)}"


def finish_stage(ctx: Any, stage: Any, info: dict[str, Any]) -> None:
    """Mark a stage done (main process) and delete the previous result it replaces; all processes wait."""
    if ctx.is_main:
        folder = ctx.root / stage.name
        write_json(folder / STAGE_MARKER, {**_marker(ctx, stage), "type": stage.type, **info})
        (folder / RUNNING_MARKER).unlink(missing_ok=True)
        shutil.rmtree(ctx.root / PREVIOUS_DIR / stage.name, ignore_errors=True)
    ctx.state.wait_for_everyone()


def check_selection(ctx: Any, stages: list[str]) -> None:
    """``--stage`` names must be stages of the recipe, and a chosen stage may only read stages chosen before it
    or done with the current settings (a stale input would be trained on, and the result marked as current)."""
    names = [s.name for s in ctx.recipe.stages]
    for name in stages:
        if name not in names:
            raise ValueError(
                f"--stage {name!r} is not a stage of recipe {ctx.recipe.name!r}{did_you_mean(name, names)}. "
                f"Stages: {', '.join(names)}."
            )
    chosen: set[str] = set()
    for stage in ctx.recipe.stages:
        if stage.name not in stages:
            continue
        for ref in ctx.recipe.stage_inputs(stage.name):
            if ref in names and ref not in chosen and not stage_done(ctx, ctx.recipe.stage(ref)):
                raise ValueError(
                    f"stage {stage.name!r} reads {ref!r}, which has no complete result made with the current "
                    f"settings (never run, unfinished, or run with other settings). Run it too (--stage {ref}), "
                    "or run every stage (no --stage)."
                )
        chosen.add(stage.name)


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` that was written to the end (``trainer_state.json`` is saved last); a
    checkpoint cut short by a kill is skipped (the Trainer itself would pick it and fail)."""
    if not trainer_dir.is_dir():
        return None
    done = [
        p
        for p in trainer_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None
