"""Shared test helpers: each script's smoke-run arguments, import the top-level scripts as
modules, run them as a user does, read back what they logged, and a recorded rollout of real
play for the environment and replay tests."""

import contextlib
import faulthandler
import gc
import io
import os
import signal
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Tiny runs of each script, a few seconds each on 2 CPU cores.
SMOKE = {
    # 2 envs x 400 steps, 200 updates from a 600-slot buffer (it wraps)
    "soft_dqn.py": (
        "--num-envs 2 --total-timesteps 800 --learning-starts 400 --buffer-size 600 --batch-size 32 "
        "--train-frequency 2 --target-network-frequency 100 --exploration-fraction 1.0 --end-e 0.5"
    ).split(),
    "a2c_entropy.py": "--num-envs 4 --num-steps 5 --total-timesteps 1000 --log-interval 10".split(),
    "pgql_equiv.py": "--num-envs 4 --num-steps 5 --total-timesteps 1000 --log-interval 10 --equiv-check-every 10".split(),
    "natural_pg_damped.py": (
        "--num-envs 2 --num-steps 16 --total-timesteps 640 --cg-iters 4 --policy-epochs 2 --value-epochs 2 --num-minibatches 2"
    ).split(),
}
SCRIPTS = list(SMOKE)


# Float32 without TF32 on any device (on a GPU, NVIDIA_TF32_OVERRIDE=0 makes cuBLAS and cuDNN ignore
# TF32, cuDNN's default for convolutions), so the tests that compare logged values (eager vs compiled,
# resumed vs uninterrupted) hold float32 tolerances there too; set before CUDA starts, here or in a child.
os.environ["NVIDIA_TF32_OVERRIDE"] = "0"


def run_in(
    cwd: Path, script: str, *args: str, env: dict | None = None, timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS...` in `cwd` (runs/ and videos/ land there), as a user does: its
    `__main__` block with that argv, its exit status, stdout and stderr. In this process, unless
    `fresh` or `env` asks for a new interpreter (what is read at startup, a process's own exit): a
    new one would import torch and torch._dynamo again, ~6 s a launch on 2 cores.

    In this process the script runs as the module `__main__`; argv, the working directory,
    `__main__` and the SIGINT/SIGTERM handlers are restored after it. What a run that exited early
    left open (its TensorBoard writer, its envs) is closed and its namespace dropped (tyro's caches
    keep the Args class, and through it the module's globals, alive). A run past `timeout` seconds
    dumps every thread's traceback and ends the test process: a hang fails loudly. A script's own
    exception reaches the test, its output printed first."""
    if fresh or env is not None:
        return subprocess.run(
            [sys.executable, str(ROOT / script), *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    from gymnasium.vector import VectorEnv
    from torch.utils.tensorboard import SummaryWriter

    path, out, err, status = ROOT / script, io.StringIO(), io.StringIO(), 0
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    saved = sys.argv, os.getcwd(), sys.modules["__main__"], {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.chdir(cwd)
    sys.argv, sys.modules["__main__"] = [str(path), *args], module
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
            except SystemExit as stop:
                status = stop.code
                if not isinstance(status, int) and status is not None:  # a message: printed to stderr, status 1
                    print(status, file=sys.stderr)
                    status = 1
    except BaseException:
        sys.__stderr__.write(out.getvalue() + err.getvalue())
        raise
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.argv, before, sys.modules["__main__"], handlers = saved
        os.chdir(before)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for value in list(module.__dict__.values()):
            if isinstance(value, (SummaryWriter, VectorEnv)):
                value.close()
        module.__dict__.clear()
        gc.collect()
    return subprocess.CompletedProcess([sys.executable, script, *args], status or 0, out.getvalue(), err.getvalue())


@pytest.fixture
def run_script(tmp_path):
    """run_in a fresh directory: run_script(script, *args, env=..., timeout=..., fresh=...)."""

    def run(script: str, *args: str, env: dict | None = None, timeout: float = 300, fresh: bool = False):
        return run_in(tmp_path, script, *args, env=env, timeout=timeout, fresh=fresh)

    return run


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the TensorBoard event file(s) in `run_dir`: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_run_dir(cwd: Path) -> Path:
    """The single `runs/{run_name}` directory a script wrote under `cwd`."""
    dirs = sorted({p.parent for p in (cwd / "runs").rglob("events.out.tfevents.*")})  # a resumed run adds event files
    assert len(dirs) == 1, dirs
    return dirs[0]


def scalars_of_runs(
    tmp_path_factory,
    script: str,
    common: list[str],
    runs: dict[str, list[str]],
    env: dict | None = None,
    stderrs: dict | None = None,
) -> dict[str, dict]:
    """Run `script` once per entry of `runs` (the `common` arguments, then the entry's), each in
    its own directory, with `env` added to the environment; return each run's logged scalars by
    name (and put each run's stderr into `stderrs` when one is given)."""
    logs = {}
    for name, extra in runs.items():
        cwd = tmp_path_factory.mktemp(name)
        proc = run_in(cwd, script, *common, *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        logs[name] = read_scalars(only_run_dir(cwd))
        if stderrs is not None:
            stderrs[name] = proc.stderr
    return logs


def without_sps(scalars: dict) -> dict:
    """Logged scalars minus the wall-clock-dependent `charts/SPS`: what a fixed seed must repeat."""
    return {tag: values for tag, values in scalars.items() if tag != "charts/SPS"}


NUM_ENVS, STEPS = 3, 1500


@dataclass
class Rollout:
    """What the env returned, step by step: arrays of shape (STEPS, NUM_ENVS, ...)."""

    obs: list = field(default_factory=list)  # observation the action was taken in
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    restarted: list = field(default_factory=list)
    lives: list = field(default_factory=list)
    prev_lives: list = field(default_factory=list)
    episode_frame: list = field(default_factory=list)
    next_obs: list = field(default_factory=list)
    final_obs: list = field(default_factory=list)  # None where no env restarted


@pytest.fixture(scope="session")
def rollout():
    """Random play on Breakout with a 700-frame time limit: life losses, game overs and
    truncations all occur within the rollout."""
    import soft_dqn

    rng = np.random.default_rng(0)
    envs = soft_dqn.make_env("BreakoutNoFrameskip-v4", NUM_ENVS, max_episode_frames=700)
    obs, info = envs.reset(seed=0)
    ro = Rollout()
    for _ in range(STEPS):
        actions = rng.integers(0, envs.single_action_space.n, NUM_ENVS)
        prev_info = info
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        ro.obs.append(obs)
        ro.actions.append(actions)
        ro.rewards.append(reward)
        ro.terminated.append(terminated)
        ro.truncated.append(truncated)
        ro.restarted.append(soft_dqn.game_restarted(terminated, truncated, info, prev_info))
        ro.lives.append(info["lives"])
        ro.prev_lives.append(prev_info["lives"])
        ro.episode_frame.append((prev_info["episode_frame_number"], info["episode_frame_number"]))
        ro.next_obs.append(next_obs)
        ro.final_obs.append(info["final_obs"].copy() if "final_obs" in info else None)
        obs = next_obs
    envs.close()
    restarted, truncated = np.array(ro.restarted), np.array(ro.truncated)
    life_losses = np.array(ro.terminated) & ~restarted
    assert life_losses.sum() > 10 and (restarted & ~truncated).sum() > 3 and truncated.sum() > 3, "rollout too tame"
    return ro
