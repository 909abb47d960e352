"""Running ``accelerate launch`` from tests: a free rendezvous port per launch, and no orphans on timeout.

Every multi-process test used accelerate's default port 29500; a launch that starts while the previous
one's workers are still tearing down (or left behind by a timeout, which kills only the launcher) can then
meet the wrong rendezvous and hang. Each launch here gets its own free port, and a timeout kills the whole
process group and reports the output tails instead of leaving workers behind.

torch's elastic agent starts each worker in a session of its own, so killing the launcher's process group
misses them: a worker whose peer died waits in a collective forever and keeps the output pipes open. Every
launch therefore carries a marker in its environment, and the workers that hold it are killed too.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from typing import Any

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_two(args: list[str], *, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``args`` (a script or ``-m module`` and its arguments) on two CPU processes."""
    return run_group([*LAUNCH, "--main_process_port", str(free_port()), *args], timeout=timeout, **kwargs)


MARKER = "HF_LITE_TEST_LAUNCH"


def kill_marked(token: str) -> list[int]:
    """SIGKILL every process whose environment holds ``MARKER=token`` (the launch's workers, in any session)."""
    needle = f"{MARKER}={token}".encode()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            os.kill(int(entry), signal.SIGKILL)
            killed.append(int(entry))
        except (OSError, ProcessLookupError):
            continue  # gone already, or not ours to read
    return killed


def run_group(cmd: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a new session; on timeout the whole process
    group and every worker of the launch are killed and the test fails with the tails of its output."""
    token = secrets.token_hex(8)
    kwargs["env"] = {**(kwargs.get("env") or os.environ), MARKER: token}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        kill_marked(token)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(
            f"timed out after {timeout} s: {' '.join(cmd[-8:])}\n--- stdout tail ---\n{out[-3000:]}\n"
            f"--- stderr tail ---\n{err[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
