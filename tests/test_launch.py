"""The test launcher leaves no worker behind: processes in sessions of their own are found by their marker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.launch import MARKER, kill_marked


def test_kill_marked_kills_workers_in_other_sessions_and_nothing_else():
    env = {**os.environ, MARKER: "abc123"}
    code = "import time; time.sleep(60)"
    marked = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, MARKER: "other"})
    try:
        deadline, killed = time.monotonic() + 10, []
        while not killed and time.monotonic() < deadline:  # until the child has exec'd with its environment
            killed = kill_marked("abc123")
            time.sleep(0.05)
        assert killed == [marked.pid]
        assert marked.wait(timeout=10) == -9
        assert other.poll() is None  # another launch's worker is untouched
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()
