"""soft_dqn.py speed and replay memory on the machine at hand; prints a markdown table.

    python benchmarks/soft_dqn_bench.py                      # ~8 min on 2 CPU cores
    python benchmarks/soft_dqn_bench.py --train-steps 40000  # longer, steadier training-phase SPS

Rows:
- replay: resident memory of a 1M-slot FrameReplayBuffer after allocation (every page
  touched), measured in a fresh child process as VmRSS after minus before.
- one soft_dqn.py run per configuration (default hyperparameters, 1M buffer, Breakout),
  learning from step `--learning-starts` on: `training SPS` is the steady state (one batch of
  32 every 4 env steps, epsilon already at 0.01) measured between the first and the last
  logged loss; `peak RSS` is the whole process's (ru_maxrss).
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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


def replay_rss() -> int:
    out = subprocess.run([sys.executable, "-c", REPLAY_CHILD.format(root=str(ROOT))], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run_config(extra: list[str], learning_starts: int, train_steps: int) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as cwd:
        cmd = [
            sys.executable,
            str(ROOT / "soft_dqn.py"),
            "--learning-starts",
            str(learning_starts),
            "--total-timesteps",
            str(learning_starts + train_steps),
            *extra,
        ]
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
        if status != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()}")
        run_dir = next((Path(cwd) / "runs").rglob("events.out.tfevents.*")).parent
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        losses = acc.Scalars("losses/td_loss")
        first, last = losses[0], losses[-1]
        return dict(
            train_sps=(last.step - first.step) / (last.wall_time - first.wall_time),
            peak_rss=usage.ru_maxrss * 1024,
            wall=wall,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning-starts", type=int, default=10000)
    parser.add_argument("--train-steps", type=int, default=20000)
    opts = parser.parse_args()

    import torch

    configs = [
        ("1 env, hard (--tau 0)", ["--num-envs", "1", "--tau", "0"]),
        ("1 env, soft entropy tau 0.1", ["--num-envs", "1", "--tau", "0.1"]),
        ("4 envs, soft entropy tau 0.1", ["--num-envs", "4", "--tau", "0.1"]),
        ("4 envs, soft kl tau 0.1, 5-step", ["--num-envs", "4", "--tau", "0.1", "--regularizer", "kl", "--n-step", "5"]),
    ]
    print(
        f"# soft_dqn.py benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CUDA {'yes' if torch.cuda.is_available() else 'no'}"
    )
    print(f"# command: python benchmarks/soft_dqn_bench.py --learning-starts {opts.learning_starts} --train-steps {opts.train_steps}")
    print()
    print(f"1M-slot replay buffer, resident after allocation: {replay_rss() / 1e9:.2f} GB")
    print()
    print("| configuration | training SPS | peak RSS (GB) | wall (s) |")
    print("|---|---:|---:|---:|")
    for name, extra in configs:
        r = run_config(extra, opts.learning_starts, opts.train_steps)
        print(f"| {name} | {r['train_sps']:,.0f} | {r['peak_rss'] / 1e9:.2f} | {r['wall']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
