"""a2c_entropy.py against Stable-Baselines3's A2C on the machine at hand; prints a markdown table.

    pip install -r benchmarks/requirements.txt          # SB3 and OpenCV: benchmark-only
    python benchmarks/a2c_bench.py                      # ~4 min on 2 CPU cores
    python benchmarks/a2c_bench.py --steps 200000       # longer, steadier

Every row trains on the same game with 16 envs and 5-step rollouts (80 agent steps per update)
for `--steps` agent steps, one run each, one after another in child processes. SPS is the
steady state: agent steps between the first and the last update that the run logged, over
the wall time between them (start-up, env creation and imports are not counted). Peak RSS is
the child's (ru_maxrss).

- ours: `a2c_entropy.py` as a user runs it (both entropy modes).
- SB3: `A2C("CnnPolicy")` with the rl-zoo Atari settings (`make_atari_env` + `VecFrameStack(4)`,
  16 envs, ent_coef 0.01, vf_coef 0.25, RMSpropTFLike eps 1e-5; everything else SB3's A2C
  defaults, which are Baselines' numbers). Its `vf_coef 0.25` times SB3's mean squared error
  is our `--vf-coef 0.5` times 1/2 (V - Vhat)^2.
- raw env: ale-py's `AtariVectorEnv` with uniformly random actions, no learning: the ceiling.
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

SB3_CHILD = """
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
model = A2C("CnnPolicy", env, ent_coef=0.01, vf_coef=0.25, device="cpu", seed=0,
            policy_kwargs=dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5)))
model.learn(total_timesteps=steps, callback=Clock())
print(json.dumps(marks))
"""

RAW_ENV_CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import a2c_entropy

env_id, steps = sys.argv[1], int(sys.argv[2])
envs = a2c_entropy.make_env(env_id, 16)
envs.reset(seed=0)
rng = np.random.default_rng(0)
marks = []
for i in range(steps // 16):
    envs.step(rng.integers(0, envs.single_action_space.n, 16))
    if i % 100 == 0:
        marks.append((time.time(), (i + 1) * 16))
print(json.dumps(marks))
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


def ours(env_id: str, steps: int, mode: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, str(ROOT / "a2c_entropy.py"), "--env-id", env_id, "--total-timesteps", str(steps),
               "--entropy-mode", mode, "--log-interval", "10"]  # fmt: skip
        _, rss = timed(cmd, cwd)
        acc = EventAccumulator(str(next((Path(cwd) / "runs").rglob("events.out.tfevents.*")).parent), size_guidance={"scalars": 0})
        acc.Reload()
        marks = [(e.wall_time, e.step) for e in acc.Scalars("losses/value_loss")]
    return dict(sps=steady_sps(marks), rss=rss)


def child(code: str, python: str, env_id: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as cwd:
        out, rss = timed([python, "-c", code, env_id, str(steps)], cwd)
    return dict(sps=steady_sps(json.loads(out.strip().splitlines()[-1])), rss=rss)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--steps", type=int, default=80_000, help="agent steps per run (summed over the 16 envs)")
    parser.add_argument("--sb3-python", default=sys.executable, help="a Python with benchmarks/requirements.txt installed")
    opts = parser.parse_args()

    import torch

    print(
        f"# a2c benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CUDA {'yes' if torch.cuda.is_available() else 'no'}"
    )
    print(f"# command: python benchmarks/a2c_bench.py --env-id {opts.env_id} --steps {opts.steps}")
    print()
    rows = [
        ("ours: a2c_entropy.py --entropy-mode proper", lambda: ours(opts.env_id, opts.steps, "proper")),
        ("ours: a2c_entropy.py --entropy-mode naive", lambda: ours(opts.env_id, opts.steps, "naive")),
        ("SB3 A2C (rl-zoo Atari settings)", lambda: child(SB3_CHILD, opts.sb3_python, opts.env_id, opts.steps)),
        ("raw AtariVectorEnv, random actions", lambda: child(RAW_ENV_CHILD.format(root=str(ROOT)), sys.executable, opts.env_id, opts.steps)),
    ]
    results = {name: run() for name, run in rows}
    sb3 = results[rows[2][0]]["sps"]
    print(f"| {opts.env_id}, 16 envs | SPS | peak RSS (GB) | ours/SB3 |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        ratio = f"{r['sps'] / sb3:.2f}x" if name.startswith("ours") else ""
        print(f"| {name} | {r['sps']:,.0f} | {r['rss'] / 1e9:.2f} | {ratio} |")

if __name__ == "__main__":
    main()
