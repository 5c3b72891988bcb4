"""Faults just outside the training loop, tried as a user meets them: signals during evaluation
and after a first signal, a full disk at a checkpoint, two runs started in the same second,
damaged checkpoints, and experiments/run.py and plot.py stopped, or given a wrong description.
Each test reproduces the fault; the docstrings say what it did before."""

import errno
import os
import signal
import subprocess
import sys
import time
import zipfile

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
    assert "SIGINT: evaluation cut short" in err and "Traceback" not in err
    assert len(read_scalars(only_run_dir(tmp_path)).get("eval/episodic_return", [])) < 1000  # none on a slow machine


def test_a_second_signal_exits_at_once_and_the_last_checkpoint_stays_intact(tmp_path):
    """The first signal asks for a checkpoint after this update; a second one (an impatient Ctrl-C, a scheduler's
    SIGKILL-bound SIGTERM) exits at once. Whatever it interrupts, the checkpoint on disk was written atomically."""
    proc = start(
        "natural_pg_damped.py",
        "--num-envs",
        "8",
        "--num-steps",
        "10",
        "--total-timesteps",
        "100000",
        "--checkpoint-every",
        "80",
        cwd=tmp_path,
    )  # a checkpoint every iteration
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/checkpoint.pt")):  # updates (and checkpoints) are running
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # two signals at once would reach the process as one
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130 from the handler; if the first signal's exit was already under way, Python's shutdown has restored
    # the default handler and the second ends the process by SIGINT (-2): either way at once, no traceback
    assert proc.returncode in (130, -signal.SIGINT) and time.time() - sent < 10 and "Traceback" not in err
    checkpoint = only_run_dir(tmp_path) / "checkpoint.pt"
    assert soft_dqn.load_checkpoint(str(checkpoint))["global_step"] % 80 == 0

    stop = {}
    with pytest.MonkeyPatch.context() as patch:  # the handler itself: the second call exits, the first only asks
        patch.setattr(a2c_entropy, "STOP", stop)
        a2c_entropy.stop_softly(signal.SIGTERM, None)
        assert stop == {"signum": signal.SIGTERM}
        with pytest.raises(SystemExit) as second:
            a2c_entropy.stop_softly(signal.SIGINT, None)
        assert second.value.code == 130


def test_a_full_disk_at_a_checkpoint_stops_in_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """Before: torch's C++ message, and the previous checkpoint overwritten by a partial one."""
    path = str(tmp_path / "checkpoint.pt")
    soft_dqn.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = open(path, "rb").read()
    real_save = torch.save

    def save_until_full(state, target):
        real_save(state, target)  # part of it reached the disk, then the disk was full
        os.truncate(target, 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(SystemExit) as stop:
        soft_dqn.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    message = stop.value.code
    assert message.startswith(f"soft_dqn.py: error: cannot write {path} (") and "\n" not in message
    assert "No space left on device" in message and message.endswith(
        f"the previous checkpoint is intact, {path}.tmp may be partial"
    )
    assert open(path, "rb").read() == before


def test_run_directories_are_never_shared_and_flat(tmp_path, monkeypatch):
    """Before: two runs of one script and seed started in the same second wrote into one directory, and
    --env-id ALE/Pong-v5 made runs/ALE/Pong-v5__...."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    args = a2c_entropy.parse_args([*SMOKE["a2c_entropy.py"], "--env-id", "ALE/Breakout-v5"])[0]
    names = []
    for pid in (101, 102):  # two processes
        monkeypatch.setattr(os, "getpid", lambda: pid)
        name, run_dir, writer = a2c_entropy.start_run(args, None)
        writer.close()
        names.append(name)
    base = "ALE-Breakout-v5__a2c_entropy__1__1800000000"
    assert names == [base, f"{base}-102"] and sorted(os.listdir("runs")) == names


def test_damaged_checkpoints_are_named_before_anything_is_trained(tmp_path):
    """Before: pickle / zip errors for a truncated file or another file, and a flipped byte in a
    weight loaded silently (torch.load does not check the CRC-32s torch.save writes)."""
    path = str(tmp_path / "checkpoint.pt")
    state = {"args": {"seed": 1}, "global_step": 7, "w": torch.arange(4096.0)}
    soft_dqn.save_checkpoint(path, state)
    assert torch.equal(soft_dqn.load_checkpoint(path)["w"], state["w"])
    data = open(path, "rb").read()
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 1000
    cases = {
        "truncated.pt": (data[: len(data) // 2], "not a checkpoint, or damaged (File is not a zip file)"),
        "other.pt": (b"not a checkpoint at all", "not a checkpoint, or damaged (File is not a zip file)"),
        "flipped.pt": (data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :], "fails its CRC-32 check"),
    }
    with zipfile.ZipFile(tmp_path / "foreign.pt", "w") as z:  # a zip archive, intact, but not torch.save's
        z.writestr("notes.txt", "hello")
    cases["foreign.pt"] = ((tmp_path / "foreign.pt").read_bytes(), "not a checkpoint, or damaged (")
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as stop:
            soft_dqn.load_checkpoint(str(tmp_path / name))
        assert stop.value.code.startswith(f"soft_dqn.py: error: --resume {tmp_path / name}: "), name
        assert message in stop.value.code and "\n" not in stop.value.code, name
    torch.save({**state, "checksum": "..."}, tmp_path / "older.pt")  # written by an older version: still loads
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


def logged(directory) -> bool:
    """Whether a run in `directory` has logged a scalar: its loop runs, so its stop handler is set."""
    return any(read_scalars(d) for d in {p.parent for p in directory.glob("runs/*/events.out.tfevents.*")})


def test_one_ctrl_c_stops_run_py_and_everything_it_launched(tmp_path):
    """Before: Ctrl-C stopped the current run and run.py launched the next; a second Ctrl-C gave a traceback."""
    (tmp_path / "t.toml").write_text(DESCRIPTION)
    command = [sys.executable, str(ROOT / "experiments" / "run.py"), str(tmp_path / "t.toml"), "--results",
               str(tmp_path / "results"), "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seed = {s: tmp_path / "results" / "t" / "a" / "BreakoutNoFrameskip-v4" / f"seed{s}" for s in (1, 2, 3)}
    deadline = time.time() + 120
    while not all(logged(seed[s]) for s in (1, 2)):  # both running
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
