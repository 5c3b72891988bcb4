"""Long runs lose nothing: --checkpoint-every, --resume and a stop by SIGINT/SIGTERM.

- A run resumed from its checkpoint at step k logs exactly what the uninterrupted run logs
  from step k on (on CPU, same seed; a checkpoint restarts the games in both runs, since the
  envs' state cannot be saved).
- Ctrl-C stops a run with a checkpoint and exit status 130; resuming finishes it, and the
  logged steps are continuous.
- A run restarted from an older checkpoint than its logs reach logs no step twice.
- A checkpoint resumes from any working directory, into the run directory that holds it.
"""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, SMOKE, only_run_dir, read_scalars, run_in, without_sps


def with_total(args: list[str], total: int) -> list[str]:
    i = args.index("--total-timesteps")
    return [*args[:i], "--total-timesteps", str(total), *args[i + 2 :]]


# Schedules that depend on --total-timesteps (the A2C learning rate, DQN's epsilon) are held
# constant, so a run to k and a run to 2k are the same run up to k.
EXACT = {
    "a2c_entropy": ("a2c_entropy.py", [*SMOKE["a2c_entropy.py"], "--no-anneal-lr"], 400),
    "pgql_equiv": ("pgql_equiv.py", [*SMOKE["pgql_equiv.py"], "--update", "ql", "--no-anneal-lr"], 400),
    "natural_pg_damped": ("natural_pg_damped.py", [*SMOKE["natural_pg_damped.py"], "--diagnostic-every", "5"], 320),
    "soft_dqn": (
        "soft_dqn.py",
        [*SMOKE["soft_dqn.py"], "--start-e", "0.5", "--checkpoint-replay", "--tau", "0.1", "--n-step", "3"],
        500,
    ),
}


@pytest.mark.parametrize("name", EXACT)
def test_resumed_run_logs_what_the_uninterrupted_run_logs(tmp_path_factory, name):
    script, args, k = EXACT[name]
    whole, part, elsewhere = (tmp_path_factory.mktemp(d) for d in ("whole", "part", "elsewhere"))
    proc = run_in(whole, script, *with_total(args, 2 * k), "--checkpoint-every", str(k))
    assert proc.returncode == 0, proc.stderr
    proc = run_in(part, script, *with_total(args, k), "--checkpoint-every", str(k))
    assert proc.returncode == 0, proc.stderr
    checkpoint = next((part / "runs").rglob("checkpoint.pt"))
    assert torch.load(checkpoint, weights_only=False)["global_step"] == k
    # resumed from another directory, the underscore spelling: the run goes on in its own directory
    proc = run_in(elsewhere, script, "--resume", str(checkpoint), "--total_timesteps", str(2 * k))
    assert proc.returncode == 0, proc.stderr
    assert not list(elsewhere.iterdir())
    expected, got = without_sps(read_scalars(only_run_dir(whole))), without_sps(read_scalars(only_run_dir(part)))
    assert any(step > k for values in got.values() for step, _ in values)  # the resumed part logged
    assert got == expected


# (the A2C runs are long enough that the signal, sent at their first log, reaches them mid-run)
STOPPABLE = {
    "a2c_entropy": ("a2c_entropy.py", with_total(SMOKE["a2c_entropy.py"], 2000), "losses/policy_loss"),
    "pgql_equiv": ("pgql_equiv.py", with_total(SMOKE["pgql_equiv.py"], 2000), "losses/q_loss"),
    "natural_pg_damped": ("natural_pg_damped.py", SMOKE["natural_pg_damped.py"], "losses/value_loss"),
    "soft_dqn": ("soft_dqn.py", [*SMOKE["soft_dqn.py"], "--checkpoint-replay"], "losses/td_loss"),
}


@pytest.mark.parametrize("name", STOPPABLE)
def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run(tmp_path, name):
    script, args, loss_tag = STOPPABLE[name]
    total = int(args[args.index("--total-timesteps") + 1])
    reference = tmp_path / "reference"
    reference.mkdir()
    assert run_in(reference, script, *args).returncode == 0
    expected_steps = [step for step, _ in read_scalars(only_run_dir(reference))[loss_tag]]

    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=run, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # A first logged scalar: the loop runs, so the stop handler is installed (before it, while the
    # envs are built, a signal ends the process at once).
    while not (list(run.glob("runs/**/events.out.tfevents.*")) and read_scalars(only_run_dir(run))):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert f"SIGINT: continue with: python {script} --resume runs/" in stderr, stderr
    checkpoint = next((run / "runs").rglob("checkpoint.pt"))
    stopped_at = torch.load(checkpoint, weights_only=False)["global_step"]
    assert 0 < stopped_at < total

    resumed = run_in(run, script, "--resume", str(checkpoint.relative_to(run)))
    assert resumed.returncode == 0, resumed.stderr
    scalars = read_scalars(only_run_dir(run))
    # the same grid of update steps as an uninterrupted run: none missing, none twice
    assert [step for step, _ in scalars[loss_tag]] == expected_steps


def test_restart_from_an_older_checkpoint_logs_no_step_twice(tmp_path):
    """A crash after logging past the last checkpoint: the restarted run's steps replace the
    stopped run's from the checkpoint on (TensorBoard's purge_step)."""
    args = [*SMOKE["a2c_entropy.py"], "--log-interval", "5"]
    assert run_in(tmp_path, "a2c_entropy.py", *with_total(args, 500), "--checkpoint-every", "500").returncode == 0
    checkpoint = next((tmp_path / "runs").rglob("checkpoint.pt"))
    shutil.copy(checkpoint, checkpoint.parent / "at500.pt")
    assert (
        run_in(
            tmp_path, "a2c_entropy.py", "--resume", str(checkpoint.relative_to(tmp_path)), "--total-timesteps", "1000"
        ).returncode
        == 0
    )
    # the logs now reach step 1000; restart from step 500 again
    older = checkpoint.parent / "at500.pt"
    assert (
        run_in(
            tmp_path, "a2c_entropy.py", "--resume", str(older.relative_to(tmp_path)), "--total-timesteps", "1000"
        ).returncode
        == 0
    )
    steps = [step for step, _ in read_scalars(only_run_dir(tmp_path))["losses/policy_loss"]]
    assert steps == list(range(100, 1001, 100))
