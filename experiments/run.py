"""Launch the paper's experiments, described one per figure in experiments/*.toml.

    pip install -r experiments/requirements.txt
    python experiments/run.py experiments/fig3_pgql.toml --frames 2000000 --games Breakout --seeds 1 2 3 --workers 1
    python experiments/run.py experiments/fig1_a2c_entropy.toml --dry-run          # what would run, at the paper's scale
    python experiments/run.py experiments/fig2_soft_dqn.toml --slurm --partition gpu --gpus 1 --timeout-min 2880
    python experiments/run.py experiments/fig3_pgql.toml --frames 2000000 -- --num-envs 8   # after --: extra script options

A description names the script, the games, the seeds, the frames (the paper's scale), options
common to every run (`args`) and the variants (name -> options). --frames, --games, --seeds and
--variants choose the scale without editing it. Each run (variant, game, seed) lives in its
own directory, experiments/results/{figure}/{variant}/{game}/seed{seed}/, with the script's
runs/ inside and the script's output in stdout.log / stderr.log. A variant may instead name
another description's variant, `"PG" = { same_as = "fig1_a2c_entropy.toml", variant = "A2C (proper)" }`:
its runs are that description's (script, options, directory), shared rather than repeated.

- `done.json` (written when a run finishes: command, frames, wall time, date, machine) marks it
  done, and a later launch skips it, unless it asks for more frames than were run;
- a run with a checkpoint but no `done.json` (stopped, killed, preempted, or done at fewer
  frames) is resumed from its checkpoint (`--resume`, extended to the new --frames);
- a run with neither starts from scratch.

Every run gets `--checkpoint-every` (default: every 250k agent steps, 1M frames). Locally, N
workers run N runs at a time, each with cores/N torch threads. With --slurm the same runs go
to a Slurm cluster as one job array through submitit; Slurm's SIGTERM before a time limit or a
preemption makes a run write its checkpoint, and launching again resumes what did not finish.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMES_PER_STEP = 4  # every script's agent step is 4 emulator frames (frame skip)


@dataclass(frozen=True)
class Run:
    figure: str
    variant: str
    game: str
    seed: int
    script: str
    options: tuple[str, ...]  # the description's common args, then the variant's, then the extras
    frames: int
    directory: Path

    def checkpoint(self) -> Path | None:
        found = sorted((self.directory / "runs").rglob("checkpoint.pt")) if (self.directory / "runs").exists() else []
        return found[0] if found else None

    def done_frames(self) -> int:
        done = self.directory / "done.json"
        return json.loads(done.read_text())["frames"] if done.exists() else 0

    def status(self) -> str:
        if self.done_frames() >= self.frames:
            return "done"
        return "resume" if self.checkpoint() else "new"

    def command(self, checkpoint_every: int) -> list[str]:
        """The script's command line: a new run with its options, or its checkpoint resumed (with
        the checkpoint's options), both up to `frames`."""
        checkpoint = self.checkpoint()
        if checkpoint:
            what = ["--resume", str(checkpoint.relative_to(self.directory))]
        else:
            what = [*self.options, "--env-id", self.game, "--seed", str(self.seed)]
        steps = str(self.frames // FRAMES_PER_STEP)
        return [
            sys.executable,
            str(ROOT / self.script),
            *what,
            "--total-timesteps",
            steps,
            "--checkpoint-every",
            str(checkpoint_every),
        ]


def slug(text: str) -> str:
    """A directory name for a variant or game name: `soft (KL), tau=0.1` -> `soft_KL_tau_0.1`."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_").replace("=", "_")


def load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            description = tomllib.load(f)
    except OSError as e:
        raise SystemExit(f"{path}: cannot read the description: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"{path}: not valid TOML: {e}")
    missing = {"title", "script", "games", "seeds", "frames", "variants"} - set(description)
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(sorted(missing))}")
    return description


def match_games(wanted: list[str] | None, games: list[str]) -> list[str]:
    """--games entries are full ids or names contained in one (`Breakout` -> BreakoutNoFrameskip-v4)."""
    if not wanted:
        return games
    chosen = []
    for w in wanted:
        hits = [g for g in games if w == g or w.lower() in g.lower()]
        chosen += hits or [w]  # a game the description does not list runs as given
    return list(dict.fromkeys(chosen))


def plan(path: str, results: Path, frames: int | None, games, seeds, variants, extra: list[str]) -> list[Run]:
    """Every run of the description at the requested scale."""
    d = load(path)
    figure = Path(path).stem
    unknown = set(variants or []) - set(d["variants"])
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; {figure} has {sorted(d['variants'])}")
    sys.path.insert(0, str(ROOT))
    from soft_dqn import ale_game_name  # the scripts' own check (the same in all four)

    for game in match_games(games, d["games"]):
        try:
            ale_game_name(game)
        except ValueError as e:
            raise SystemExit(f"--games: {e}".replace("--env-id: ", ""))
    runs = []
    for variant, options in d["variants"].items():
        if variants and variant not in variants:
            continue
        owner, script, common, name = figure, d["script"], d.get("args", []), variant
        if isinstance(options, dict):  # another description's runs, shared: e.g. Fig. 3's PG is Fig. 1's proper A2C
            owner, name = Path(options.get("same_as", "?")).stem, options.get("variant")
            other = load(str(Path(path).parent / f"{owner}.toml"))
            if not isinstance(other["variants"].get(name), list):
                raise SystemExit(f"{path}: variant {variant!r}: {owner} has no variant {name!r} of its own")
            script, common, options = other["script"], other.get("args", []), other["variants"][name]
        for game in match_games(games, d["games"]):
            for seed in seeds or d["seeds"]:
                runs.append(Run(
                    owner, variant, game, seed, script, (*common, *options, *extra), frames or d["frames"],
                    results / owner / slug(name) / game / f"seed{seed}",
                ))  # fmt: skip
    return runs


STOP = threading.Event()  # set by the first Ctrl-C / SIGTERM: no run starts after it
RUNNING: set[subprocess.Popen] = set()
LOCK = threading.Lock()


def stop_all(signum, frame) -> None:
    """The first signal goes on to every running run (each writes its checkpoint and exits) and no
    run starts after it; later ones only say what is being waited for."""
    name = signal.Signals(signum).name
    with LOCK:
        if STOP.is_set():
            print(f"\n{name}: still waiting for {len(RUNNING)} run(s) to write their checkpoints", file=sys.stderr, flush=True)
            return
        STOP.set()
        print(f"\n{name}: stopping: {len(RUNNING)} running run(s) write their checkpoints; no new run starts",
              file=sys.stderr, flush=True)  # fmt: skip
        for proc in RUNNING:
            proc.send_signal(signum)


def execute(run: Run, checkpoint_every: int, threads: int | None = None) -> int | None:
    """Run (or resume) one run in its directory; write done.json when it finishes. Returns the exit
    status, or None for a run not started because run.py was asked to stop."""
    if STOP.is_set():
        return None
    run.directory.mkdir(parents=True, exist_ok=True)
    if run.status() == "new" and (run.directory / "runs").exists():
        shutil.rmtree(run.directory / "runs")  # killed before its first checkpoint: start clean
    command = run.command(checkpoint_every)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    start = time.time()
    with open(run.directory / "stdout.log", "a") as out, open(run.directory / "stderr.log", "a") as err:
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}", file=err, flush=True)
        # Its own session: a terminal's Ctrl-C reaches run.py alone, which passes it on once (stop_all).
        proc = subprocess.Popen(command, cwd=run.directory, stdout=out, stderr=err, env=env, start_new_session=True)
        with LOCK:
            RUNNING.add(proc)
            if STOP.is_set():  # the signal came while it was being launched
                proc.send_signal(signal.SIGINT)
        status = proc.wait()
        with LOCK:
            RUNNING.discard(proc)
    if status == 0:
        previous = json.loads((run.directory / "done.json").read_text()) if (run.directory / "done.json").exists() else {}
        (run.directory / "done.json").write_text(json.dumps(dict(
            figure=run.figure, variant=run.variant, game=run.game, seed=run.seed, frames=run.frames,
            command=" ".join(command), wall_s=round(time.time() - start, 1) + previous.get("wall_s", 0.0),
            finished=time.strftime("%Y-%m-%d %H:%M:%S"), machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
        ), indent=1))  # fmt: skip
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    again = f"python {' '.join(map(shlex.quote, ['experiments/run.py', *argv]))}"  # how to go on after a stop
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("description", help="an experiments/*.toml file")
    parser.add_argument("--frames", type=int, help="emulator frames per run (default: the description's, the paper's scale)")
    parser.add_argument("--games", nargs="+", help="a subset of the games (full ids or parts: Breakout)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the description's)")
    parser.add_argument("--variants", nargs="+", help="a subset of the variants, by name")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"), help="where run directories go")
    parser.add_argument("--checkpoint-every", type=int, default=250_000, help="agent steps between checkpoints")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, locally (>= 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    parser.add_argument("--slurm", action="store_true", help="submit the runs as a Slurm job array (submitit)")
    parser.add_argument("--slurm-folder", default=str(ROOT / "experiments" / "slurm"), help="submitit's logs and pickles")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--timeout-min", type=int, default=24 * 60, help="Slurm time limit per run, minutes")
    parser.add_argument("--cpus", type=int, default=8, help="Slurm CPUs per run")
    parser.add_argument("--gpus", type=int, default=0, help="Slurm GPUs per run")
    parser.add_argument("--slurm-cluster", default=None, help=argparse.SUPPRESS)  # submitit's `debug` for tests
    opts = parser.parse_args(argv)
    if opts.workers < 1:
        parser.error(f"--workers must be >= 1, got {opts.workers}")

    runs = plan(opts.description, Path(opts.results), opts.frames, opts.games, opts.seeds, opts.variants, extra)
    todo = [r for r in runs if r.status() != "done"]
    for r in runs:
        print(f"{r.status():>6}  {r.variant} | {r.game} | seed {r.seed} | {r.frames:,} frames  ({r.directory})")
    print(f"{len(todo)} of {len(runs)} runs to launch")
    if opts.dry_run:
        for r in todo:
            print(" ".join(r.command(opts.checkpoint_every)))
        return 0
    if not todo:
        return 0

    if opts.slurm:
        try:
            import submitit
        except ImportError:
            raise SystemExit("--slurm needs submitit: pip install -r experiments/requirements.txt")
        executor = submitit.AutoExecutor(folder=opts.slurm_folder, cluster=opts.slurm_cluster)
        partition = {"slurm_partition": opts.partition} if opts.partition else {}
        executor.update_parameters(
            timeout_min=opts.timeout_min,
            cpus_per_task=opts.cpus,
            gpus_per_node=opts.gpus,
            name=Path(opts.description).stem,
            **partition,
        )
        jobs = executor.map_array(execute, todo, [opts.checkpoint_every] * len(todo), [opts.cpus] * len(todo))
        print(f"submitted {len(jobs)} runs: job {jobs[0].job_id.split('_')[0]}; launch again to resume what does not finish")
        if opts.slurm_cluster == "debug":
            return max(job.result() for job in jobs)
        return 0

    threads = max(1, (os.cpu_count() or 1) // opts.workers)
    failed = 0
    STOP.clear()
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    with concurrent.futures.ThreadPoolExecutor(opts.workers) as pool:
        futures = {pool.submit(execute, r, opts.checkpoint_every, threads): r for r in todo}
        for future in concurrent.futures.as_completed(futures):
            r, status = futures[future], future.result()
            if status is None:
                continue
            failed += status != 0 and not STOP.is_set()
            outcome = "done" if status == 0 else "stopped" if STOP.is_set() else f"FAILED ({status})"
            print(f"{outcome}  {r.variant} | {r.game} | seed {r.seed}  (logs in {r.directory})", flush=True)
    if STOP.is_set():
        print(f"stopped; runs resume from their checkpoints with: {again}", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
