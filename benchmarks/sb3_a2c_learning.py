"""Stable-Baselines3's A2C learning Breakout under a2c_entropy.py's schedule: the anchor for the
docs/a2c_entropy.md's A2C learning check. Benchmark-only (pip install -r benchmarks/requirements.txt).

    python benchmarks/sb3_a2c_learning.py --steps 2000000 --out sb3_a2c   # ~40 min on 2 CPU cores

rl-zoo's Atari settings (AtariWrapper via make_atari_env, 4-frame stack, 16 envs, ent_coef
0.01, vf_coef 0.25, RMSpropTFLike eps 1e-5) with the learning rate 7e-4 decayed linearly to
0 over the run, as a2c_entropy.py does. Then prints the mean score of real games (Monitor
sits below the frame skip and the life-loss wrapper: whole games, frames counted) per 200k
agent steps.
"""

import argparse
import glob
import os

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--steps", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="sb3_a2c", help="directory for the Monitor CSVs")
    opts = parser.parse_args()

    import ale_py
    import gymnasium as gym
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    monitor_dir = os.path.join(opts.out, "monitor")
    env = VecFrameStack(make_atari_env(opts.env_id, n_envs=16, seed=opts.seed, monitor_dir=monitor_dir), n_stack=4)
    model = A2C("CnnPolicy", env, ent_coef=0.01, vf_coef=0.25, device="cpu", seed=opts.seed,
                learning_rate=lambda progress_remaining: 7e-4 * progress_remaining,
                policy_kwargs=dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5)))  # fmt: skip
    model.learn(total_timesteps=opts.steps)

    games = []  # (wall time, score, length in frames)
    for path in glob.glob(os.path.join(monitor_dir, "*.monitor.csv")):
        for line in open(path).readlines()[2:]:
            r, length, t = line.strip().split(",")[:3]
            games.append((float(t), float(r), int(length)))
    games.sort()
    scores = np.array([g[1] for g in games])
    steps = np.cumsum([g[2] for g in games]) // 4  # frames -> agent steps, summed over envs
    print(f"{len(games)} games, best {scores.max():.0f}")
    for lo in range(0, opts.steps, 200_000):
        sel = (steps >= lo) & (steps < lo + 200_000)
        print(f"{lo / 1e6:.1f}-{(lo + 200_000) / 1e6:.1f}M steps: mean return {scores[sel].mean():.2f} ({sel.sum()} games)")


if __name__ == "__main__":
    main()
