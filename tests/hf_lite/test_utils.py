"""The shared helpers every layer relies on: suggestions, atomic writes (complete or absent), ranks."""

from __future__ import annotations

import os
import stat
import warnings

import pytest

import hf_lite
from hf_lite._utils import atomic_dir, atomic_write, atomic_write_text, did_you_mean, is_main_process, world


def test_did_you_mean_suggests_the_closest_choice_or_nothing():
    assert did_you_mean("forward_kll", ["reverse_kl", "forward_kl"]) == " (did you mean 'forward_kl'?)"
    assert did_you_mean("xyz", ["forward_kl"]) == ""
    # the cutoff decides how far a suggestion may be
    assert did_you_mean("lr", ["learning_rate"], cutoff=0.1) == " (did you mean 'learning_rate'?)"


def test_atomic_write_is_complete_or_absent(tmp_path):
    out = tmp_path / "sub" / "state.json"
    atomic_write_text(out, "first")
    assert out.read_text() == "first"
    # ordinary permissions, not mkstemp's private 0600
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(out, fail)
    assert out.read_text() == "first"  # the old file is intact
    assert sorted(p.name for p in out.parent.iterdir()) == ["state.json"]  # no temporary file left


def test_atomic_dir_swaps_in_a_complete_folder_and_keeps_the_old_one_on_failure(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced, not merged
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask  # an ordinary folder, not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing aside left behind
    # a killed writer's temporary folder is cleared by the next write
    (tmp_path / ".model.tmp-killed").mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_single_process_is_rank_zero_of_one():
    assert world() == (0, 1) and is_main_process()


def test_moved_top_level_names_warn_and_still_work():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build = hf_lite.build_tiny_model
    from hf_lite.testing import build_tiny_model

    assert build is build_tiny_model
    assert any(issubclass(w.category, FutureWarning) and "hf_lite.testing" in str(w.message) for w in caught)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hf_lite.nope  # noqa: B018
