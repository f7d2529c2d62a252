import os

import pytest
import torch

TEST_THREADS = int(os.environ.get("SIGNVOTE_TEST_THREADS", "1"))
"""torch threads of a test and of the processes it starts. One: the tests share their
machine (with each other's processes, and with other runs), and two OpenMP threads per
process on a busy 2-core machine ran ``pytest -m "not slow"`` in 309 s instead of 107 s.
Nothing a test checks depends on it; ``SIGNVOTE_TEST_THREADS=2 pytest`` runs them with 2."""

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "SIGNVOTE_FAULT")
"""What a torchrun launcher (or a fault-injection test) leaves in the environment and the
engine reads: never inherited by a test from the shell that started pytest."""


@pytest.fixture(scope="session")
def _matplotlib_dir(tmp_path_factory) -> str:
    """One matplotlib config/cache folder for the session: its font cache is built once,
    not once per test, and never in the user's home."""
    return str(tmp_path_factory.mktemp("matplotlib"))


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch, _matplotlib_dir):
    """Every test gets its own empty home and caches, so no test can find or write a real
    dataset or cache of the user's: ``SIGNVOTE_DATA``, ``HOME`` (``~/.cache/signvote``),
    ``XDG_CACHE_HOME``, ``XDG_DATA_HOME``, ``XDG_CONFIG_HOME``, ``TORCH_HOME``,
    ``SCIKIT_LEARN_DATA`` and ``MPLCONFIGDIR`` point into a temporary folder (set in
    ``os.environ``, so processes a test starts inherit them). Debian's read-only
    ``/usr/share/datasets`` stays where it is: the real-data tests use it, and skip without
    it. The launcher variables of a torchrun shell are removed, and torch (here, and through
    ``OMP_NUM_THREADS`` in the processes started) runs ``TEST_THREADS`` threads."""
    home = tmp_path_factory.mktemp("home")
    for name, path in {"HOME": home, "SIGNVOTE_DATA": home / "signvote-data",
                       "XDG_CACHE_HOME": home / ".cache", "XDG_DATA_HOME": home / ".local/share",
                       "XDG_CONFIG_HOME": home / ".config", "TORCH_HOME": home / ".cache/torch",
                       "SCIKIT_LEARN_DATA": home / "scikit_learn_data",
                       "MPLCONFIGDIR": _matplotlib_dir}.items():
        monkeypatch.setenv(name, str(path))
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in [v for v in os.environ if v.startswith("TORCHELASTIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_NUM_THREADS", str(TEST_THREADS))
    torch.set_num_threads(TEST_THREADS)  # also undoes a test that changed it
    return home


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def run_bounded():
    """Run a command in its own process group (in folder ``cwd``, with ``env`` added to the
    test's environment), killing the whole group (launcher and the processes it started) if
    it outlives ``limit_s``; returns the CompletedProcess."""
    import signal
    import subprocess

    def run(command, env=None, limit_s=120, cwd=None):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, cwd=cwd,
                                env={**os.environ, **(env or {})})
        try:
            stdout, stderr = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"{' '.join(map(str, command))} ran over {limit_s} s")
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

    return run


def pytest_collection_modifyitems(config, items):
    """A test marked ``gpu`` is skipped, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
