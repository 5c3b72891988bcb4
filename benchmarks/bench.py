"""Every script against its nearest public anchor on the machine at hand; prints markdown tables.

    pip install -r benchmarks/requirements.txt     # SB3 and OpenCV: benchmark-only
    python benchmarks/bench.py                     # everything, ~15 min on 2 CPU cores
    python benchmarks/bench.py --only a2c env      # some groups: dqn, a2c, npg, env
    python benchmarks/bench.py --sb3-python /path/to/venv/bin/python
    python benchmarks/bench.py --compile           # each of our rows again with --compile (~30 min in all)

Each row is one run in a child process, one after another (the children of this process: one
process tree). SPS is the steady state: agent steps between the first and the last logged
update, over the wall time between them, so imports, env creation, DQN's warm-up before
learning starts and torch.compile are not counted. Peak RSS is the child's ru_maxrss.
Everything runs on CUDA when the machine has it (our scripts' default, SB3's device="auto").

- dqn: soft_dqn.py, hard (--tau 0) and soft (--tau 0.1), against SB3 `DQN("CnnPolicy")` with
  the same hyperparameters (1 env, Adam 1e-4, batch 32, one update every 4 steps, target
  copy every 1000 steps, epsilon 1 -> 0.01 over 10% of the run; `make_atari_env` +
  `VecFrameStack(4)`), both learning from step `--dqn-learning-starts` for `--dqn-steps`
  steps, both with a `--dqn-buffer` replay (SB3 cannot hold 1M transitions in 24 GB). The
  1M replay row is ours, allocated alone in a fresh child (VmRSS after minus before); SB3's
  is computed from its array shapes, since it does not fit in this machine's memory.
- a2c: a2c_entropy.py (proper) and pgql_equiv.py (--update ql) against SB3 `A2C("CnnPolicy")`
  with the rl-zoo Atari settings (16 envs, ent_coef 0.01, vf_coef 0.25, RMSpropTFLike eps
  1e-5; the rest SB3's A2C defaults, which are Baselines' numbers).
- npg: natural_pg_damped.py, both solvers, and npg with a quarter of the batch in its Fisher-vector
  products (no public anchor; compare with a2c_entropy.py).
- env: raw `AtariVectorEnv` with uniformly random actions, 1 and 16 envs: the ceiling.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SB3_A2C_CHILD = """
import json, sys, time
import ale_py, gymnasium as gym
gym.register_envs(ale_py)
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from stable_baselines3.common.vec_env import VecFrameStack

env_id, steps = sys.argv[1], int(sys.argv[2])
marks = []

class Clock(BaseCallback):
    def _on_rollout_end(self):
        marks.append((time.time(), self.num_timesteps))

    def _on_step(self):
        return True

env = VecFrameStack(make_atari_env(env_id, n_envs=16, seed=0), n_stack=4)
model = A2C("CnnPolicy", env, ent_coef=0.01, vf_coef=0.25, device="auto", seed=0,
            policy_kwargs=dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5)))
model.learn(total_timesteps=steps, callback=Clock())
print(json.dumps(marks))
"""

SB3_DQN_CHILD = """
import json, sys, time
import ale_py, gymnasium as gym
gym.register_envs(ale_py)
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

env_id, steps, learning_starts, buffer_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
marks = []

class Clock(BaseCallback):
    def _on_step(self):
        if self.num_timesteps > learning_starts and self.num_timesteps % 1000 == 0:
            marks.append((time.time(), self.num_timesteps))
        return True

env = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=0), n_stack=4)
model = DQN("CnnPolicy", env, learning_rate=1e-4, buffer_size=buffer_size, learning_starts=learning_starts,
            batch_size=32, gamma=0.99, train_freq=4, gradient_steps=1, target_update_interval=1000,
            exploration_fraction=0.1, exploration_initial_eps=1.0, exploration_final_eps=0.01,
            optimize_memory_usage=False, device="auto", seed=0)
model.learn(total_timesteps=learning_starts + steps, callback=Clock())
print(json.dumps(marks))
"""

RAW_ENV_CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import a2c_entropy

env_id, steps, num_envs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
envs = a2c_entropy.make_env(env_id, num_envs)
envs.reset(seed=0)
rng = np.random.default_rng(0)
marks = []
for i in range(steps // num_envs):
    envs.step(rng.integers(0, envs.single_action_space.n, num_envs))
    if i % 100 == 0:
        marks.append((time.time(), (i + 1) * num_envs))
print(json.dumps(marks))
"""

REPLAY_CHILD = """
import sys
sys.path.insert(0, {root!r})
import soft_dqn

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
before = rss()
rb = soft_dqn.FrameReplayBuffer(1_000_000, 1, 1)
print(rss() - before)
"""


def timed(cmd: list[str], cwd: str) -> tuple[str, int]:
    """Run `cmd`, return its stdout and peak RSS in bytes. Output goes to files, not pipes: a
    child that fills a pipe while we wait in wait4 (for its rusage) would never exit."""
    with open(os.path.join(cwd, "stdout"), "w+") as out, open(os.path.join(cwd, "stderr"), "w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return stdout, usage.ru_maxrss * 1024


def steady_sps(marks: list[tuple[float, int]]) -> float:
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


def ours(script: str, tag: str, args: list[str]) -> dict:
    """Run one of our scripts as a user does; time it between the first and last logged `tag`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as cwd:
        _, rss = timed([sys.executable, str(ROOT / script), *args], cwd)
        acc = EventAccumulator(
            str(next((Path(cwd) / "runs").rglob("events.out.tfevents.*")).parent), size_guidance={"scalars": 0}
        )
        acc.Reload()
        marks = [(e.wall_time, e.step) for e in acc.Scalars(tag)]
    return dict(sps=steady_sps(marks), rss=rss)


def child(code: str, python: str, *args) -> dict:
    with tempfile.TemporaryDirectory() as cwd:
        out, rss = timed([python, "-c", code, *map(str, args)], cwd)
    return dict(sps=steady_sps(json.loads(out.strip().splitlines()[-1])), rss=rss)


def table(title: str, rows: list[tuple[str, dict, str]]) -> None:
    print(f"| {title} | SPS | peak RSS (GB) | ours/anchor |")
    print("|---|---:|---:|---:|")
    for name, r, ratio in rows:
        print(f"| {name} | {r['sps']:,.0f} | {r['rss'] / 1e9:.2f} | {ratio} |", flush=True)
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--only", nargs="+", choices=["dqn", "a2c", "npg", "env"], default=["dqn", "a2c", "npg", "env"])
    parser.add_argument("--sb3-python", default=sys.executable, help="a Python with benchmarks/requirements.txt installed")
    parser.add_argument("--dqn-learning-starts", type=int, default=10_000)
    parser.add_argument("--dqn-steps", type=int, default=20_000, help="DQN steps timed after learning starts")
    parser.add_argument("--dqn-buffer", type=int, default=100_000)
    parser.add_argument("--a2c-steps", type=int, default=40_000)
    parser.add_argument("--npg-steps", type=int, default=9_600)
    parser.add_argument(
        "--compile", action="store_true", help="also time each of our scripts with --compile (one more row each)"
    )
    opts = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()

    def rows_of(command: str, note: str, tag: str, args: list[str], anchor: dict | None = None) -> list[tuple[str, dict, str]]:
        """Table rows for `python COMMAND ARGS`: eager, and with --compile too if asked (on a GPU,
        soft_dqn.py also with CUDA graphs)."""
        variants = [[], ["--compile"]] if opts.compile else [[]]
        if opts.compile and cuda and command.startswith("soft_dqn.py"):
            variants.append(["--compile", "--cudagraphs"])
        rows = []
        for extra in variants:
            r = ours(command.split()[0], tag, [*command.split()[1:], *args, *extra])
            ratio = f"{r['sps'] / anchor['sps']:.2f}x" if anchor else "no anchor"
            rows.append((f"`{' '.join([command, *extra])}`{note}", r, ratio))
        return rows

    print(
        f"# benchmarks/bench.py, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CUDA {'yes' if torch.cuda.is_available() else 'no'}"
    )
    print(f"# command: python benchmarks/bench.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    env = opts.env_id

    if "dqn" in opts.only:
        ls, steps, buffer = opts.dqn_learning_starts, opts.dqn_steps, opts.dqn_buffer
        common = [
            "--env-id",
            env,
            "--learning-starts",
            str(ls),
            "--total-timesteps",
            str(ls + steps),
            "--buffer-size",
            str(buffer),
        ]
        sb3 = child(SB3_DQN_CHILD, opts.sb3_python, env, steps, ls, buffer)
        table(
            f"{env}, 1 env, training ({buffer:,} replay)",
            rows_of("soft_dqn.py --tau 0", " (hard)", "losses/td_loss", common, sb3)
            + rows_of("soft_dqn.py --tau 0.1", " (soft)", "losses/td_loss", common, sb3)
            + [("SB3 DQN, same hyperparameters", sb3, "")],
        )
        with tempfile.TemporaryDirectory() as cwd:
            replay = int(timed([sys.executable, "-c", REPLAY_CHILD.format(root=str(ROOT))], cwd)[0].strip().splitlines()[-1])
        sb3_replay = 1_000_000 * 4 * 84 * 84  # optimize_memory_usage: one (4, 84, 84) uint8 stack per transition
        print(f"1M-transition replay, resident after allocation: ours {replay / 1e9:.2f} GB (measured); ", end="")
        print(f"SB3 with optimize_memory_usage {sb3_replay / 1e9:.1f} GB (from its array shapes; 2x that without)\n")

    if "a2c" in opts.only:
        steps = str(opts.a2c_steps)
        sb3 = child(SB3_A2C_CHILD, opts.sb3_python, env, opts.a2c_steps)
        common = ["--env-id", env, "--total-timesteps", steps, "--log-interval", "10"]
        table(
            f"{env}, 16 envs, 5-step rollouts",
            rows_of("a2c_entropy.py", " (proper)", "losses/value_loss", common, sb3)
            + rows_of("pgql_equiv.py --update ql", "", "losses/value_loss", common, sb3)
            + [("SB3 A2C, rl-zoo Atari settings", sb3, "")],
        )

    if "npg" in opts.only:
        common = ["--env-id", env, "--total-timesteps", str(opts.npg_steps)]
        rows = [
            row
            for command in ("--solver damped-q", "--solver npg", "--solver npg --fvp-fraction 0.25")
            for row in rows_of(f"natural_pg_damped.py {command}", "", "npg/kl_old_new", common)
        ]
        table(f"{env}, 16 envs, 20-step rollouts", rows)

    if "env" in opts.only:
        code = RAW_ENV_CHILD.format(root=str(ROOT))
        table(
            f"{env}, raw `AtariVectorEnv`, random actions",
            [(f"{n} env{'s' if n > 1 else ''}", child(code, sys.executable, env, 1000 * n, n), "ceiling") for n in (1, 16)],
        )


if __name__ == "__main__":
    main()
