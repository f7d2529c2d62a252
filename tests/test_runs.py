import json
import os
import signal
import subprocess
import sys
import time

import pytest

from signvote.experiment import runs


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    runs.write_json(target, {"status": "completed"})

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        runs.write_json(target, {"status": "new"})
    assert json.loads(target.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left


def test_metrics_round_trip(tmp_path):
    rows = [{"epoch": 1, "step": 5, "train_loss": 0.5, "test_loss": 0.25, "train_acc": None,
             "test_acc": 0.75, "lr": 1e-4, "wall_s": 0.1}]
    runs.write_metrics(tmp_path / "m.csv", rows)
    (got,) = runs.read_metrics(tmp_path / "m.csv")
    assert got["train_acc"] == "" and float(got["test_loss"]) == 0.25 and got["lr"] == "0.0001"


@pytest.mark.slow
@pytest.mark.dist
def test_a_run_killed_mid_way_leaves_only_complete_files(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "signvote", "train", "--quiet", "--epochs", "400", "--out",
         str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = out / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) > 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run wrote no metrics within 60 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not (out / "summary.json").exists()
    assert json.loads((out / "config.json").read_text())["epochs"] == 400
    rows = runs.read_metrics(out / "metrics.csv")
    assert len(rows) >= 3
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["wall_s"] != "" for r in rows)


def test_tensorboard_logs_every_epochs_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from signvote.engine.sim import train
    from signvote.experiment.config import TrainConfig

    result = train(TrainConfig(workers=4, epochs=3, tensorboard=True, out=str(tmp_path)),
                   progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "test_loss", "test_acc", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["epoch"], pytest.approx(r[key])) for r in result.metrics]


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_written_files_have_the_mode_of_a_plain_open(tmp_path, umask):
    import stat

    from signvote.experiment import sweep

    plain = tmp_path / "plain"
    plain.write_text("x")
    runs.write_json(tmp_path / "summary.json", {"status": "completed"})
    runs.write_csv(tmp_path / "metrics.csv", ["epoch"], [{"epoch": 1}])
    runs.write_params(tmp_path / "params.pt", {})
    with sweep.locked(tmp_path):
        pass
    assert runs.current_umask() == umask
    want = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == want
    for name in ("summary.json", "metrics.csv", "params.pt", sweep.LOCK):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    runs.write_json(tmp_path / "summary.json", {"status": "diverged"})  # replaced: the same
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == want


def test_the_umask_is_read_without_proc_too(umask, monkeypatch):
    import builtins

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert runs.current_umask() == umask
    assert os.umask(umask) == umask  # and left as it was
