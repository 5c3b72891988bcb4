"""Faults just outside the training loop, tried as a user meets them: signals during evaluation
and after a first signal, a full disk or an unwritable directory at a checkpoint, two runs
started in the same second, damaged checkpoints, and experiments/run.py and plot.py stopped,
or given a wrong description. Each test reproduces the fault; the docstrings say what it did before."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, SMOKE, only_run_dir, read_scalars

import a2c_entropy
import soft_dqn

sys.path.insert(0, str(ROOT / "experiments"))
import plot  # noqa: E402
import run as runner  # noqa: E402


def start(script: str, *args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", str(ROOT / script), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
    """Read proc's stdout until a line contains `text`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        assert line or proc.poll() is None, f"exited {proc.returncode} before {text!r}: {proc.stderr.read()[-2000:]}"
    raise AssertionError(f"no {text!r} within {timeout} s")


def test_a_signal_during_the_evaluation_stops_it_within_seconds(tmp_path):
    """Before: "stopping after this update", then every evaluation game played, exit 0."""
    proc = start("a2c_entropy.py", *SMOKE["a2c_entropy.py"], "--save-model", "--eval-episodes", "1000", cwd=tmp_path)
    wait_for(proc, "model saved to")
    time.sleep(1)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - sent < 10
    assert "evaluation stopped after" in err and "of 1000 games; the model is in runs/" in err
    assert "Traceback" not in err
    assert len(read_scalars(only_run_dir(tmp_path)).get("eval/episodic_return", [])) < 1000  # none on a slow machine


def test_a_signal_while_the_envs_are_built_ends_the_run_at_once(tmp_path):
    """Before: Python's handler ran only once ale-py's C++ had built every env (minutes for 512)."""
    proc = start("a2c_entropy.py", "--num-envs", "256", cwd=tmp_path)
    wait_for(proc, "device: ")
    time.sleep(1)  # building 256 envs takes ~20 s on 2 cores
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT and time.time() - sent < 5 and "Traceback" not in err


def test_a_second_signal_keeps_the_run_a_third_stops_at_once(tmp_path):
    """Before: a second Ctrl-C raised KeyboardInterrupt: a traceback, and with the default
    --checkpoint-every 0 every step was lost."""
    proc = start("natural_pg_damped.py", "--num-envs", "8", "--num-steps", "10", "--total-timesteps", "100000",
                 cwd=tmp_path)  # fmt: skip
    wait_for(proc, "steps |")  # the first progress line: updates are running
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "still stopping after this update" in err and "Traceback" not in err
    assert time.time() - sent < 10  # one iteration (~1 s here; ~3 s at the default 16 x 20 steps)
    checkpoint = only_run_dir(tmp_path) / "checkpoint.pt"
    assert checkpoint.exists() and f"--resume {checkpoint.relative_to(tmp_path)}" in err

    stop = a2c_entropy.StopRequest()
    try:
        stop._handle(signal.SIGINT, None)
        stop._handle(signal.SIGINT, None)  # says so, and goes on
        with pytest.raises(SystemExit) as third:
            stop._handle(signal.SIGINT, None)
        assert third.value.code == 130 and stop.signum == signal.SIGINT
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(
    "fault, free, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 10**9, "No space left on device"),
        (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: "
                      "file write failed"), 10**9, "file write failed"),
        # what torch 2.13 says when a tmpfs fills up mid-write (seen on a 20 MB tmpfs)
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7064960 vs 7064848"), 4096,
         "the disk is full"),
    ],
)  # fmt: skip
def test_a_full_disk_at_a_checkpoint_stops_in_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch, fault, free, cause):
    """Before: torch's C++ message and a stray checkpoint.pt.tmp."""
    path = str(tmp_path / "checkpoint.pt")
    soft_dqn.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = open(path, "rb").read()
    real_save = torch.save

    def save_until_full(state, target):
        real_save(state, target)  # part of it reached the disk, then the disk was full
        os.truncate(target, 100)
        raise fault

    monkeypatch.setattr(torch, "save", save_until_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=free))
    with pytest.raises(SystemExit) as stop:
        soft_dqn.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    message = stop.value.code
    assert message.startswith(f"soft_dqn.py: error: cannot write the checkpoint {path}: ") and "\n" not in message
    assert cause in message and message.endswith("; the previous checkpoint, if any, is intact")
    assert os.listdir(tmp_path) == ["checkpoint.pt"] and open(path, "rb").read() == before


def test_run_directories_are_never_shared_and_must_be_writable(tmp_path, monkeypatch):
    """Before: two runs of one script and seed started in the same second wrote into one directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    args = a2c_entropy.parse_args(SMOKE["a2c_entropy.py"])[0]
    names = []
    for _ in range(3):
        name, run_dir, writer, _ = a2c_entropy.start_run(args, None, "device: cpu")
        writer.close()
        names.append(name)
    base = "BreakoutNoFrameskip-v4__a2c_entropy__1__1800000000"
    assert names == [base, f"{base}-2", f"{base}-3"]

    def refused(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "makedirs", refused)
    with pytest.raises(SystemExit) as stop:
        a2c_entropy.start_run(args, None, "device: cpu")
    assert stop.value.code == f"a2c_entropy.py: error: cannot create the run directory runs/{base}: Permission denied"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    resumed = SimpleNamespace(**{**vars(args), "resume": f"runs/{base}/checkpoint.pt"})
    with pytest.raises(SystemExit) as stop:
        a2c_entropy.start_run(resumed, {"run_name": base, "global_step": 0}, "device: cpu")
    assert "cannot write to the checkpoint's run directory" in stop.value.code


def test_damaged_checkpoints_are_named_before_anything_is_trained(tmp_path):
    """Before: pickle / zip errors for a truncated file or another file, and a flipped byte in a
    weight loaded silently."""
    path = str(tmp_path / "checkpoint.pt")
    state = {"args": {"seed": 1}, "run_name": "run", "global_step": 7, "w": torch.arange(4096.0)}
    soft_dqn.save_checkpoint(path, state)
    assert torch.equal(soft_dqn.load_checkpoint(path)["w"], state["w"])
    data = open(path, "rb").read()
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 1000
    cases = {
        "truncated.pt": (data[: len(data) // 2], "truncated: the write did not finish"),
        "other.pt": (b"not a checkpoint at all", "not a checkpoint (not a torch.save archive)"),
        "flipped.pt": (data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :], "corrupted: its contents differ"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as stop:
            soft_dqn.load_checkpoint(str(tmp_path / name))
        assert stop.value.code.startswith(f"soft_dqn.py: error: --resume {tmp_path / name}: {message}"), name
    torch.save(state, tmp_path / "older.pt")  # written before checkpoints had a checksum: still loads
    assert soft_dqn.load_checkpoint(str(tmp_path / "older.pt"))["global_step"] == 7


DESCRIPTION = """title = "t"
script = "a2c_entropy.py"
games = ["BreakoutNoFrameskip-v4"]
seeds = [1, 2, 3]
frames = 40000000
args = ["--num-envs", "4"]
[variants]
"a" = []
"""


def test_one_ctrl_c_stops_run_py_and_everything_it_launched(tmp_path):
    """Before: Ctrl-C stopped the current run and run.py launched the next; a second Ctrl-C gave a traceback."""
    (tmp_path / "t.toml").write_text(DESCRIPTION)
    command = [sys.executable, str(ROOT / "experiments" / "run.py"), str(tmp_path / "t.toml"), "--results",
               str(tmp_path / "results"), "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seed = {s: tmp_path / "results" / "t" / "a" / "BreakoutNoFrameskip-v4" / f"seed{s}" for s in (1, 2, 3)}
    logs, deadline = [seed[s] / "stdout.log" for s in (1, 2)], time.time() + 120
    while not all(log.exists() and "steps |" in log.read_text() for log in logs):  # both running
        assert time.time() < deadline and proc.poll() is None, "the two runs did not start"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "stopping: 2 running run(s) write their checkpoints; no new run starts" in err
    assert f"stopped; runs resume from their checkpoints with: python experiments/run.py {tmp_path / 't.toml'}" in err
    assert all(next((seed[s] / "runs").rglob("checkpoint.pt"), None) for s in (1, 2))
    assert not seed[3].exists()
    plan = subprocess.run([*command, "--dry-run"], capture_output=True, text=True).stdout
    assert plan.count("resume  a |") == 2 and plan.count("   new  a |") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.toml"], "missing.toml: cannot read the description: No such file or directory"),
        (["bad.toml"], "bad.toml: not valid TOML: "),
        (["good.toml", "--games", "Breakuot"], "--games: unknown game 'Breakuot'"),
        (["good.toml", "--variants", "b"], "unknown variant(s) ['b']; good has ['a']"),
    ],
)
def test_run_py_rejects_a_wrong_description_before_launching_anything(tmp_path, monkeypatch, argv, message):
    """Before: tracebacks for a missing or malformed file; a mistyped game launched, to fail in a log file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.toml").write_text(DESCRIPTION)
    (tmp_path / "bad.toml").write_text('title = "t"\nseeds = [1, 2\n')
    with pytest.raises(SystemExit) as stop:
        runner.main([*argv, "--results", str(tmp_path / "results")])
    assert message in str(stop.value.code)
    assert not (tmp_path / "results").exists()


def test_run_py_rejects_zero_workers(capsys, tmp_path):
    """Before: a traceback from ThreadPoolExecutor."""
    (tmp_path / "good.toml").write_text(DESCRIPTION)
    with pytest.raises(SystemExit) as stop:
        runner.main([str(tmp_path / "good.toml"), "--workers", "0"])
    assert stop.value.code == 2 and "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_plot_py_with_no_runs_says_so_and_fails(tmp_path, capsys):
    """Before: exit 0, a blank figure and tables of dashes (e.g. a mistyped --results)."""
    (tmp_path / "good.toml").write_text(DESCRIPTION)
    status = plot.main([str(tmp_path / "good.toml"), "--results", str(tmp_path / "reslts"), "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "fig.png")])  # fmt: skip
    assert status == 1 and not (tmp_path / "fig.png").exists()
    assert "plot.py: no runs found: none of the 3 planned runs has logs under --results" in capsys.readouterr().err
