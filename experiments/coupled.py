"""Fig. 3's claim, measured directly: started from the same weights with the same action-sampling
noise, do the policy-gradient and soft Q-learning updates stay together?

    python experiments/coupled.py                  # the runs (~50 min on 2 CPU cores), then the data and the figure
    python experiments/coupled.py --frames 400000  # a shorter version of the same
    python experiments/coupled.py --plot-only      # redraw the figure and table from the committed CSVs

Four runs on one game and seed, each checkpointed at the same fixed steps (the snapshots):

    pg      pgql_equiv.py --update pg
    ql      pgql_equiv.py --update ql                   (same seed: same initial weights, same sampling noise)
    pg_eps  pg after its first update (80 agent steps), every weight moved by 1e-6 of its tensor's std
    naive   a2c_entropy.py --entropy-mode naive         (its proper mode is pg, bit for bit)

and three pairs compared at every snapshot: (pg, ql), the claim; (pg, pg_eps), the control, how
fast any two runs of this chaotic system drift apart; (pg, naive), the positive control, a
different algorithm. For each: the mean KL(pi_a || pi_b) over a fixed probe set of 512 states
(random play, its own seed) and the relative parameter distance ||theta_a - theta_b|| / ||theta_a||.

Each run is a chain of invocations, the first from scratch and each next one `--resume`d with a
larger `--total-timesteps`; so the learning rate is constant (`--no-anneal-lr`: an annealing
schedule would change with each new total), and every snapshot ends the games in progress in all
four runs alike. The runs live in experiments/results/coupled/ (ignored); what the figure needs is
written to docs/data/coupled_distances.csv and docs/data/coupled_returns.csv.gz (committed), and the
figure to docs/figures/coupled_pg_ql.png. Launching again continues from the last snapshot.
"""

import argparse
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "results" / "coupled"
DATA = ROOT / "docs" / "data"
FIGURE = ROOT / "docs" / "figures" / "coupled_pg_ql.png"
ROLLOUT = 80  # agent steps per update: the scripts' defaults, 16 envs x 5 steps
RUNS = {
    "pg": ("pgql_equiv.py", ["--update", "pg"]),
    "ql": ("pgql_equiv.py", ["--update", "ql"]),
    "pg_eps": None,  # pg's first snapshot, perturbed
    "naive": ("a2c_entropy.py", ["--entropy-mode", "naive"]),
}
PAIRS = {
    "PG vs QL (the claim)": "ql",
    "PG vs PG + 1e-6 noise (control)": "pg_eps",
    "PG vs naive A2C (positive control)": "naive",
}


def snapshot_steps(total: int) -> list[int]:
    """80, then about 1k, 3k, 10k, 30k, 100k agent steps, then every 100k up to `total`; multiples of 80."""
    marks = [ROLLOUT, 1_000, 3_000, 10_000, 30_000, *range(100_000, total + 1, 100_000), total]
    return sorted({max(ROLLOUT, m // ROLLOUT * ROLLOUT) for m in marks if m <= total})


def checkpoint_of(run: str) -> Path | None:
    found = sorted((RESULTS / run / "runs").rglob("checkpoint.pt"))
    return found[0] if found else None


def advance(run: str, step: int, previous: int | None, env_id: str, seed: int) -> None:
    """Bring `run` to agent step `step` from its snapshot at `previous`, and keep a copy of the checkpoint."""
    snapshot = RESULTS / run / "snapshots" / f"{step}.pt"
    if snapshot.exists():
        return
    directory = RESULTS / run
    if previous is None:  # from scratch (and from nothing an interrupted first invocation left)
        shutil.rmtree(directory / "runs", ignore_errors=True)
        script, options = RUNS[run]
        command = [script, *options, "--env-id", env_id, "--seed", str(seed), "--no-anneal-lr"]
    else:  # from the previous snapshot, even if an interrupted invocation wrote a later checkpoint
        checkpoint = checkpoint_of(run)
        shutil.copyfile(directory / "snapshots" / f"{previous}.pt", checkpoint)
        script = RUNS[run][0] if RUNS[run] else RUNS["pg"][0]
        command = [script, "--resume", str(checkpoint.relative_to(directory))]
    command += ["--total-timesteps", str(step), "--checkpoint-every", str(10**12)]  # a checkpoint at the end only
    print(f"{run}: agent step {previous or 0} -> {step}", flush=True)
    with open(directory / "stdout.log", "a") as out:
        subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=directory, stdout=out, check=True)
    snapshot.parent.mkdir(exist_ok=True)
    shutil.copyfile(checkpoint_of(run), snapshot)


def perturbed_copy(first: int, scale: float = 1e-6) -> None:
    """pg_eps starts as pg's first snapshot with every tensor moved by `scale` x its std of Gaussian noise."""
    import torch

    target = RESULTS / "pg_eps" / "snapshots" / f"{first}.pt"
    if target.exists():
        return
    state = torch.load(RESULTS / "pg" / "snapshots" / f"{first}.pt", weights_only=False)
    g = torch.Generator().manual_seed(12345)
    for tensor in state["agent"].values():
        tensor += scale * tensor.std(correction=0) * torch.randn(tensor.shape, generator=g)
    run_dir = RESULTS / "pg_eps" / "runs" / "pg_eps"  # a resumed run is named after its checkpoint's directory
    run_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    shutil.copyfile(target, run_dir / "checkpoint.pt")


def probe_states(env_id: str, count: int = 512) -> np.ndarray:
    """`count` states of random play (8 envs, every 4th step), seeded apart from the runs."""
    import pgql_equiv

    envs = pgql_equiv.make_env(env_id, 8)
    obs, _ = envs.reset(seed=10_000)
    rng, states = np.random.default_rng(10_000), []
    for t in range(4 * count // 8):
        if t % 4 == 0:
            states.append(obs)
        obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, 8))
    envs.close()
    return np.concatenate(states)


def distances(steps: list[int], env_id: str) -> list[dict]:
    """Per pair and snapshot: mean KL(pi_a || pi_b) on the probe states, and ||theta_a - theta_b|| / ||theta_a||."""
    import torch
    import torch.nn.functional as F

    import pgql_equiv

    probe = torch.from_numpy(probe_states(env_id))
    num_actions = None

    def load(run: str, step: int):
        nonlocal num_actions
        agent_state = torch.load(RESULTS / run / "snapshots" / f"{step}.pt", weights_only=False)["agent"]
        num_actions = num_actions or agent_state["actor.weight"].shape[0]
        agent = pgql_equiv.ActorCritic(num_actions)
        agent.load_state_dict(agent_state)
        with torch.no_grad():
            log_pi = F.log_softmax(agent(probe)[0].double(), dim=-1)
        return log_pi, torch.cat([p.detach().flatten().double() for p in agent.parameters()])

    rows = []
    for step in steps:
        log_pi_a, theta_a = load("pg", step)
        for pair, other in PAIRS.items():
            if not (RESULTS / other / "snapshots" / f"{step}.pt").exists():
                continue
            log_pi_b, theta_b = load(other, step)
            kl = (log_pi_a.exp() * (log_pi_a - log_pi_b)).sum(-1).mean().item()
            rows.append(
                dict(pair=pair, step=step, mean_kl=kl, rel_distance=((theta_a - theta_b).norm() / theta_a.norm()).item())
            )
    return rows


def returns(run: str) -> list[dict]:
    """The run's logged game returns and equivalence checks, every value (several games can end at one
    step; an invocation that was interrupted and redone logs its steps twice)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = {}
    for events in sorted((RESULTS / run / "runs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in ("charts/episodic_return", "equiv/cosine_expected", "equiv/rel_error_expected", "equiv/cosine_sampled"):
            if tag in acc.Tags()["scalars"]:
                for e in acc.Scalars(tag):
                    logged.setdefault(tag, {}).setdefault(e.step, []).append(e.value)
    return [
        dict(run=run, tag=tag, step=step, value=v) for tag, by in logged.items() for step, vs in sorted(by.items()) for v in vs
    ]


def write_csv(path: Path, keys: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wt") as f:
        f.write(",".join(keys) + "\n")
        for row in rows:
            f.write(",".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in keys) + "\n")


def read_csv(path: Path) -> list[dict]:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
        header, *lines = f.read().splitlines()
    keys = header.split(",")
    return [dict(zip(keys, line.split(","))) for line in lines]


def report(frames_per_step: int = 4, last: int = 100) -> None:
    """The figure and the table, from the committed CSVs only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(DATA / "coupled_distances.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tables = {key: [] for key in ("mean_kl", "rel_distance")}
    for pair in PAIRS:
        mine = [r for r in rows if r["pair"] == pair]
        if not mine:
            continue
        frames = np.array([int(r["step"]) * frames_per_step for r in mine])
        for ax, key in zip(axes, tables):
            values = np.array([float(r[key]) for r in mine])
            ax.plot(frames, np.maximum(values, 1e-16), marker="o", label=pair)
            tables[key].append(f"| {pair} | " + " | ".join(f"{v:.1e}" for v in values) + " |")
    for key, lines in tables.items():
        print(f"{key}\n| pair \\ frames | " + " | ".join(f"{f:,}" for f in frames) + " |")
        print("|---|" + "---:|" * len(frames) + "\n" + "\n".join(lines) + "\n")
    for ax, what in zip(axes, ("mean KL(pi_pg || pi_other) on 512 probe states", "||theta_pg - theta_other|| / ||theta_pg||")):
        ax.set(xscale="log", yscale="log", xlabel="frames", title=what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Breakout, seed 1: runs coupled by seed (same initial weights, same sampling noise)")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    print(f"figure: {FIGURE}")

    logged = read_csv(DATA / "coupled_returns.csv.gz")
    print(f"\n| run | games | mean return, last {last} games |\n|---|---:|---:|")
    for run in RUNS:
        games = [float(r["value"]) for r in logged if r["run"] == run and r["tag"] == "charts/episodic_return"]
        if games:
            print(f"| {run} | {len(games)} | {np.mean(games[-last:]):.2f} |")
    for run in ("pg", "ql"):
        checks = {tag: [float(r["value"]) for r in logged if r["run"] == run and r["tag"] == f"equiv/{tag}"]
                  for tag in ("cosine_expected", "rel_error_expected", "cosine_sampled")}  # fmt: skip
        if checks["rel_error_expected"]:
            rel = checks["rel_error_expected"]
            print(
                f"{run}: {len(rel)} equivalence checks; rel. error median {np.median(rel):.1e}, max {max(rel):.1e};"
                f" min cosine {min(checks['cosine_expected']):.9f}, sampled {min(checks['cosine_sampled']):.4f}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=2_000_000, help="frames per run (4 per agent step)")
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot-only", action="store_true", help="redraw from docs/data/ without running anything")
    opts = parser.parse_args(argv)
    if not opts.plot_only:
        if opts.frames // 4 < ROLLOUT:
            parser.error(f"--frames must be at least {4 * ROLLOUT}")
        steps = snapshot_steps(opts.frames // 4)
        for run in RUNS:
            (RESULTS / run).mkdir(parents=True, exist_ok=True)
            if run == "pg_eps":
                perturbed_copy(steps[0])
            for previous, step in zip([None, *steps], steps):
                if run != "pg_eps" or previous is not None:
                    advance(run, step, previous, opts.env_id, opts.seed)
        write_csv(DATA / "coupled_distances.csv", ["pair", "step", "mean_kl", "rel_distance"], distances(steps, opts.env_id))
        write_csv(
            DATA / "coupled_returns.csv.gz", ["run", "tag", "step", "value"], [row for run in RUNS for row in returns(run)]
        )
    report()


if __name__ == "__main__":
    main()
