import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def run_bounded():
    """Run a command in its own process group, killing the whole group (launcher and the
    processes it started) if it outlives ``limit_s``; returns the CompletedProcess."""
    import os
    import signal
    import subprocess

    def run(command, env=None, limit_s=120):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            stdout, stderr = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"{' '.join(map(str, command))} ran over {limit_s} s")
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

    return run
