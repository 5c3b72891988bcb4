"""How soon does A2C leave random play on each Atari game? Reads the published training logs of
rl-zoo's A2C agents (SB3, 16 envs, ent_coef 0.01, vf_coef 0.25, RMSpropTFLike, constant
learning rate 7e-4, 10M agent steps = 40M frames; github.com/DLR-RM/rl-trained-agents, the
`a2c/{Game}NoFrameskip-v4_1/*.monitor.csv` files) and prints the mean score of the real games
that ended in each agent-step interval. No package beyond numpy; needs a clone of that repo:

    git clone --depth 1 https://github.com/DLR-RM/rl-trained-agents
    python benchmarks/zoo_a2c_curves.py rl-trained-agents --bin 250000 --until 3000000

Steps are counted as the Monitor sees them: each game's frames / 4, summed over the 16 envs in
the order the games ended (within one game's length of the true step).
"""

import argparse
import csv
from pathlib import Path

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", help="a clone of DLR-RM/rl-trained-agents")
    parser.add_argument("--bin", type=int, default=250_000, help="agent steps per interval")
    parser.add_argument("--until", type=int, default=3_000_000, help="last agent step shown")
    opts = parser.parse_args()

    edges = np.arange(0, opts.until + 1, opts.bin)
    print("| game | " + " | ".join(f"{lo / 1e6:g}–{hi / 1e6:g}M" for lo, hi in zip(edges[:-1], edges[1:])) + " |")
    print("|---|" + "---:|" * (len(edges) - 1))
    for run in sorted(Path(opts.repo, "a2c").glob("*NoFrameskip-v4_1")):
        games = []  # (time ended, score, frames)
        for monitor in run.glob("*.monitor.csv"):
            with open(monitor) as f:
                next(f)  # the Monitor's JSON header line
                games += [(float(row["t"]), float(row["r"]), int(row["l"])) for row in csv.DictReader(f)]
        games.sort()
        scores = np.array([g[1] for g in games])
        steps = np.cumsum([g[2] for g in games]) // 4
        cells = [scores[(steps >= lo) & (steps < hi)] for lo, hi in zip(edges[:-1], edges[1:])]
        row = [f"{c.mean():.0f}" if len(c) else "" for c in cells]
        print(f"| {run.name.removesuffix('NoFrameskip-v4_1')} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
