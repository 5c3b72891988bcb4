"""Draw a figure of experiments/*.toml from its runs' TensorBoard logs, the paper's way, and
print the table of final returns.

    python experiments/plot.py experiments/fig1_a2c_entropy.toml --games Qbert   # -> experiments/results/figures/
    python experiments/plot.py experiments/fig3_pgql.toml --out my.png --last 100
    python experiments/plot.py experiments/fig3_pgql.toml --games Qbert --save-data --out docs/figures/fig3_qbert.png

Every run's logged scalars (game returns, losses, entropy; a few hundred KB) are kept in
docs/data/{figure}/{variant}/{game}/seed{seed}.csv.gz, committed. A plot reads a run's TensorBoard
logs where it finds them under experiments/results/ and its compact copy under docs/data/ where it
finds none; only --save-data writes the logs it read into docs/data/, and the figure goes to
experiments/results/figures/ unless --out says where (docs/figures/ for a figure of docs/results.md),
so a trial run changes no committed evidence. A fresh clone redraws every figure of
docs/results.md with the command printed beside it (tests/test_docs.py runs each one).

One panel per game, frames on the x axis, one line per variant: the mean over seeds of the
training return (real games, all lives, unclipped), each seed's curve being the mean return
of the games that ended in each of --bins frame intervals, with a shaded band of +-1 standard
deviation over seeds. The table gives, per game and variant, the mean +- std over seeds of
each seed's last --last games (the sample std, ddof 1; with 2 seeds it is their gap / sqrt 2), and
the frames that the shortest seed reached. Runs are found
where experiments/run.py puts them; a run still going or stopped counts with what it logged.
With --frames, every run is cut at that budget: a run extended past it, or shared through same_as
at a larger one, is compared at the same frames as the others.

A second table aggregates over games the rliable way (Agarwal et al. 2021): each run's final
return is human-normalized, (score - random) / (human - random), and each variant gets the
interquartile mean (IQM) of all its runs with a 95% stratified-bootstrap confidence interval
(--reps replicates; each resamples the seeds within every game, never across games). With fewer
than 3 runs in a game the bootstrap could only return the min and max of its seeds: no interval is printed.

With --per-run FRAMES, a third table has one row per run: the mean return of the games that
ended in each FRAMES-frame interval, the games played, the mean of the last --last and the last
logged policy entropy.
"""

import argparse
import csv
import gzip
import io
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import FRAMES_PER_STEP, ROOT, plan  # noqa: E402

TAG = "charts/episodic_return"

# (random, human) scores of the games in experiments/*.toml: Badia et al. 2020 (Agent57), the
# reference scores that rliable and Dopamine normalize with.
RANDOM_HUMAN = {
    "BeamRider": (363.9, 16926.5),
    "Breakout": (1.7, 30.5),
    "Enduro": (0.0, 860.5),
    "Pong": (-20.7, 14.6),
    "Qbert": (163.9, 13455.0),
    "Seaquest": (68.4, 42054.7),
    "SpaceInvaders": (148.0, 1668.7),
}


def logged_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(agent step, value)] of every scalar a run's TensorBoard logs hold ({} if none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for d in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}) if run_dir.exists() else []:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def save_compact(scalars: dict, path: Path) -> None:
    """The scalars as gzipped CSV rows tag,step,value (written whole, then moved into place). The gzip
    header carries no time or name, so the same logs give the same bytes and git sees no change."""
    text = io.StringIO(newline="")
    rows = csv.writer(text)
    rows.writerow(["tag", "step", "value"])
    rows.writerows((tag, step, f"{value:.7g}") for tag, points in scalars.items() for step, value in points)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
    tmp.replace(path)


def load_compact(path: Path) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    if path.exists():
        with gzip.open(path, "rt", newline="") as f:
            for tag, step, value in list(csv.reader(f))[1:]:
                scalars.setdefault(tag, []).append((int(step), float(value)))
    return scalars


def episodes(scalars: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(frames, return) of every game a run logged, in order (empty arrays if none), and the
    frames the run reached (its last logged step of any kind)."""
    games = scalars.get(TAG, [])
    reached = max((points[-1][0] for points in scalars.values() if points), default=0)
    return (
        np.asarray([step for step, _ in games], dtype=np.int64) * FRAMES_PER_STEP,
        np.asarray([value for _, value in games], dtype=np.float64),
        reached * FRAMES_PER_STEP,
    )


def binned_curve(frames: np.ndarray, returns: np.ndarray, edges: np.ndarray, reached: int) -> np.ndarray:
    """Mean return of the games that ended in each interval [edges[i], edges[i+1]); an interval
    with no game ending in it carries the previous value (NaN before the first game, and from
    the first interval that starts after the run's last step, `reached`)."""
    index = np.searchsorted(edges, frames, side="right") - 1
    sums = np.bincount(index, weights=returns, minlength=len(edges) - 1)[: len(edges) - 1]
    counts = np.bincount(index, minlength=len(edges) - 1)[: len(edges) - 1]
    curve = np.full(len(edges) - 1, np.nan)
    curve[counts > 0] = sums[counts > 0] / counts[counts > 0]
    for i in range(1, len(curve)):  # forward fill
        if np.isnan(curve[i]):
            curve[i] = curve[i - 1]
    curve[edges[:-1] >= reached] = np.nan
    return curve


def final_return(returns: np.ndarray, last: int) -> float:
    """Mean of a run's last `last` games (NaN if it logged none)."""
    return float(np.mean(returns[-last:])) if len(returns) else float("nan")


def seed_finals(seeds: list, last: int) -> np.ndarray:
    """`final_return` of each seed's run in `seeds` (a `collect` entry), leaving out runs with no game yet."""
    finals = np.array([final_return(returns, last) for _, returns, _ in seeds])
    return finals[~np.isnan(finals)]


def variants_and_games(data: dict) -> tuple[list[str], list[str]]:
    """The variants and the games of `collect`'s data, in the description's order."""
    return list(dict.fromkeys(v for v, _ in data)), list(dict.fromkeys(g for _, g in data))


def game_name(env_id: str) -> str:
    """`BreakoutNoFrameskip-v4` or `ALE/Breakout-v5` -> `Breakout`."""
    return env_id.removeprefix("ALE/").split("NoFrameskip")[0].split("-v")[0]


def human_normalized(env_id: str, score):
    """(score - random) / (human - random) of a score or an array of them: 0 plays like random, 1 like the human tester."""
    random, human = RANDOM_HUMAN[game_name(env_id)]
    return (score - random) / (human - random)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the scores left after cutting floor(n/4) from each end
    (scipy.stats.trim_mean(x, 0.25) over all of them, as rliable; n < 4 cuts nothing)."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    cut = len(x) // 4
    return float(x[cut : len(x) - cut].mean())


def stratified_bootstrap_iqm(per_game: list[np.ndarray], reps: int, rng: np.random.Generator, confidence: float = 0.95):
    """IQM of all runs and its percentile confidence interval. Each replicate draws, for every
    game, as many runs as it has, with replacement from that game's runs only (the games are
    the strata), pools them and takes the IQM."""
    pooled = np.concatenate(per_game)
    draws = np.concatenate([runs[rng.integers(0, len(runs), size=(reps, len(runs)))] for runs in per_game], axis=1)
    draws.sort(axis=1)
    cut = draws.shape[1] // 4
    replicates = draws[:, cut : draws.shape[1] - cut].mean(axis=1)
    low, high = np.percentile(replicates, [50 * (1 - confidence), 50 * (1 + confidence)])
    return iqm(pooled), float(low), float(high)


def collect(description: str, results: Path, saved: Path, frames: int | None, games, seeds, variants, save=False):
    """{(variant, game): [(frames, returns, reached) per seed]} for the planned runs, up to `frames` when given,
    the runs, and per run its scalars (whole) with its (frames, returns, reached). A run's TensorBoard logs
    under `results` are read (and, with `save`, saved compactly under `saved`); without logs, what was saved is read."""
    runs = plan(description, results, frames, games, seeds, variants, [])
    data: dict[tuple[str, str], list] = {}
    logs = []
    for r in runs:
        compact = saved / r.directory.relative_to(results).with_suffix(".csv.gz")
        scalars = logged_scalars(r.directory)
        if scalars and save:
            save_compact(scalars, compact)
        scalars = scalars or load_compact(compact)
        frames_at, returns, reached = episodes(scalars)
        if frames:  # a run extended past the budget, or shared through same_as at a larger one, is cut at it
            kept = frames_at <= frames
            frames_at, returns, reached = frames_at[kept], returns[kept], min(reached, frames)
        data.setdefault((r.variant, r.game), []).append((frames_at, returns, reached))
        logs.append((scalars, frames_at, returns, reached))
    return data, runs, logs


def table(data: dict, last: int) -> str:
    variants, games = variants_and_games(data)
    lines = [f"| game (frames reached) | {' | '.join(variants)} |", "|---|" + "---:|" * len(variants)]
    for game in games:
        cells, reached = [], []
        for variant in variants:
            done = seed_finals(data[(variant, game)], last)
            reached += [frames for _, _, frames in data[(variant, game)] if frames]  # runs with no logs yet: not counted
            spread = f" ± {np.std(done, ddof=1):.1f}" if len(done) > 1 else ""
            cells.append(f"{np.mean(done):.1f}{spread} (n={len(done)})" if len(done) else "–")
        lines.append(f"| {game} ({min(reached, default=0):,}) | {' | '.join(cells)} |")
    return "\n".join(lines)


def per_run(runs: list, logs: list, every: int, last: int, frames: int | None) -> str:
    """One row per run of `collect` (its runs and logs): its `binned_curve` over `every`-frame intervals (an interval with
    no game ending in it carries the previous value, as on the curves), its games,
    the mean of its last `last` and its last logged `losses/entropy` (up to `frames` when given)."""
    reached = max(ran for *_, ran in logs)
    edges = np.arange(0, reached + every, every)
    span = [f"{low / 1e6:g}–{high / 1e6:g}M" for low, high in zip(edges[:-1], edges[1:])]
    lines = [
        f"| variant | game | seed | {' | '.join(span)} | games | last {last} | entropy |",
        "|---|---|---:|" + "---:|" * (len(span) + 3),
    ]
    for run, (scalars, frames_at, returns, ran) in zip(runs, logs):
        if not scalars:  # a planned run not launched
            continue
        curve = [f"{x:.1f}" if np.isfinite(x) else "–" for x in binned_curve(frames_at, returns, edges, ran)]
        entropy = [v for s, v in scalars.get("losses/entropy", []) if not frames or s * FRAMES_PER_STEP <= frames]
        cells = [*curve, f"{len(returns):,}", f"{final_return(returns, last):.1f}", f"{entropy[-1]:.3f}" if entropy else "–"]
        lines.append(f"| {run.variant} | {game_name(run.game)} | {run.seed} | {' | '.join(cells)} |")
    return "\n".join(lines)


def aggregate(data: dict, last: int, reps: int, seed: int = 0) -> str:
    """The rliable-style table: per variant, the IQM of the human-normalized final returns of
    all its runs over all games with a 95% stratified-bootstrap CI."""
    variants, games = variants_and_games(data)
    unknown = [g for g in games if game_name(g) not in RANDOM_HUMAN]
    games = [g for g in games if g not in unknown]
    lines = ["| variant | IQM (human-normalized) | 95% CI | runs |", "|---|---:|---|---:|"]
    for variant in variants:
        per_game = [human_normalized(game, seed_finals(data[(variant, game)], last)) for game in games]
        per_game = [runs for runs in per_game if len(runs)]
        if not per_game:
            lines.append(f"| {variant} | – | – | 0 |")
            continue
        point, low, high = stratified_bootstrap_iqm(per_game, reps, np.random.default_rng(seed))
        runs = sum(len(x) for x in per_game)
        interval = f"[{low:.3f}, {high:.3f}]" if min(len(x) for x in per_game) >= 3 else "– (< 3 runs in a game)"
        lines.append(f"| {variant} | {point:.3f} | {interval} | {runs} ({len(per_game)} game{'s' * (len(per_game) > 1)}) |")
    if unknown:
        lines.append(f"(left out, no reference scores: {', '.join(unknown)})")
    return "\n".join(lines)


def draw(data: dict, title: str, out: Path, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants, games = variants_and_games(data)
    end = max((frames for seeds in data.values() for _, _, frames in seeds), default=1)
    edges = np.linspace(0, end, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    cols = min(3, len(games))
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        for variant in variants:
            curves = np.array([binned_curve(f, r, edges, reached) for f, r, reached in data[(variant, game)] if len(f)])
            if not len(curves):
                continue
            with warnings.catch_warnings():  # bins before a seed's first game are NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            line = ax.plot(centers, mean, label=f"{variant} ({len(curves)} seed{'s' * (len(curves) > 1)})")[0]
            ax.fill_between(centers, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(game.replace("NoFrameskip-v4", ""))
        ax.set_xlabel("frames")
        ax.set_ylabel("episode return")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(6, 6))
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(games) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("description", help="an experiments/*.toml file")
    parser.add_argument(
        "--frames", type=int, help="the --frames the runs were launched with: games that end after it are left out"
    )
    parser.add_argument("--games", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    parser.add_argument("--data", default=str(ROOT / "docs" / "data"), help="where the runs' compact logs are kept")
    parser.add_argument("--out", help="PNG path (default experiments/results/figures/{figure}.png)")
    parser.add_argument("--save-data", action="store_true", help="write the logs read into --data (the committed evidence)")
    parser.add_argument("--bins", type=int, default=50, help="frame intervals of the curves")
    parser.add_argument("--last", type=int, default=100, help="games per seed in the final-return table")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap replicates of the IQM's confidence interval")
    parser.add_argument(
        "--per-run", type=int, metavar="FRAMES", help="also a table of each run's mean return per FRAMES frames"
    )
    opts = parser.parse_args(argv)

    from run import load

    data, runs, logs = collect(
        opts.description,
        Path(opts.results),
        Path(opts.data),
        opts.frames,
        opts.games,
        opts.seeds,
        opts.variants,
        save=opts.save_data,
    )
    if not any(len(returns) for seeds in data.values() for _, returns, _ in seeds):
        print(f"plot.py: no runs found: none of the {len(runs)} planned runs has logs under --results {opts.results} "
              f"or saved data under --data {opts.data}", file=sys.stderr)  # fmt: skip
        return 1
    out = Path(opts.out) if opts.out else ROOT / "experiments" / "results" / "figures" / f"{Path(opts.description).stem}.png"
    draw(data, load(opts.description)["title"], out, opts.bins)
    print(f"figure: {out}")
    print(f"final return: mean ± sample std over seeds of each seed's last {opts.last} games")
    print(table(data, opts.last))
    print("aggregate over games: IQM of every run's human-normalized final return, ", end="")
    print(f"95% stratified-bootstrap CI ({opts.reps:,} replicates)")
    print(aggregate(data, opts.last, opts.reps))
    if opts.per_run:
        print(f"per run: mean return of the games ending in each {opts.per_run:,}-frame interval, ", end="")
        print(f"games, last {opts.last}, final entropy")
        print(per_run(runs, logs, opts.per_run, opts.last, opts.frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
