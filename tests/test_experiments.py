"""experiments/: the per-figure descriptions, the runner (local workers, skip, resume/extend,
Slurm through submitit's local debug executor) and the plot/table."""

import importlib
import json
import shutil
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tyro

from conftest import ROOT, read_scalars

sys.path.insert(0, str(ROOT / "experiments"))
import coupled  # noqa: E402
import plot  # noqa: E402
import run as runner  # noqa: E402

TINY = """
title = "tiny"
script = "a2c_entropy.py"
games = ["BreakoutNoFrameskip-v4"]
seeds = [1, 2]
frames = 8000
args = ["--num-envs", "4", "--num-steps", "5", "--log-interval", "10"]
[variants]
"A2C (1-step)" = ["--entropy-mode", "naive"]
"A2C (proper)" = ["--entropy-mode", "proper"]
"""


@pytest.mark.parametrize(
    "name, runs, frames",
    [
        ("fig1_a2c_entropy", 36, 320_000_000),
        ("fig2_soft_dqn", 72, 40_000_000),
        ("fig2_munchausen", 8, 2_000_000),  # 3 backups and the soft runs resumed without their replay, 2 seeds each
        ("fig3_pgql", 36, 320_000_000),
        ("sec5_natural_pg", 48, 40_000_000),  # 2 solvers, damped-q with a closer inner solve, A2C
    ],
)
def test_descriptions_plan_the_papers_runs_with_options_the_script_accepts(tmp_path, name, runs, frames):
    planned = runner.plan(str(ROOT / "experiments" / f"{name}.toml"), tmp_path, None, None, None, None, [])
    assert len(planned) == runs and {r.frames for r in planned} == {frames}
    assert len({r.directory for r in planned}) == runs
    for r in planned:
        # every option exists, parses and describes a valid run (Args.__post_init__)
        args = tyro.cli(importlib.import_module(r.script.removesuffix(".py")).Args, args=r.command(250_000)[2:])
        assert args.env_id == r.game and args.seed == r.seed and args.total_timesteps == frames // 4


def test_a_variant_may_share_another_descriptions_runs(tmp_path):
    """Fig. 3's PG is Fig. 1's proper A2C: planned as that description's runs (script, options, directory),
    under this description's name; a variant it does not have is an error before anything runs."""
    (tmp_path / "tiny.toml").write_text(TINY)
    shared = TINY.replace('"A2C (1-step)" = ["--entropy-mode", "naive"]', "").replace(
        'script = "a2c_entropy.py"', 'script = "pgql_equiv.py"'
    )
    shared = shared.replace(
        '"A2C (proper)" = ["--entropy-mode", "proper"]', '"PG" = { same_as = "tiny.toml", variant = "A2C (proper)" }'
    )
    (tmp_path / "shared.toml").write_text(shared + '"QL" = ["--update", "ql"]\n')
    own = {r.seed: r for r in runner.plan(str(tmp_path / "tiny.toml"), tmp_path, None, None, None, ["A2C (proper)"], [])}
    pg, ql = runner.plan(str(tmp_path / "shared.toml"), tmp_path, None, None, [1], None, [])
    assert (pg.variant, pg.script, pg.directory, pg.command(500)) == (
        "PG",
        "a2c_entropy.py",
        own[1].directory,
        own[1].command(500),
    )
    assert (ql.script, ql.directory) == ("pgql_equiv.py", tmp_path / "shared" / "QL" / "BreakoutNoFrameskip-v4" / "seed1")
    (tmp_path / "shared.toml").write_text(shared.replace('variant = "A2C (proper)"', 'variant = "A2C"'))
    with pytest.raises(SystemExit, match="variant 'PG': tiny has no variant 'A2C' of its own"):
        runner.plan(str(tmp_path / "shared.toml"), tmp_path, None, None, None, None, [])


def test_runner_runs_skips_extends_and_the_plot_reads_the_logs(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    launch = [str(tmp_path / "tiny.toml"), "--results", str(tmp_path / "res"), "--checkpoint-every", "500"]
    assert runner.main([*launch, "--workers", "2"]) == 0
    dirs = sorted((tmp_path / "res" / "tiny").glob("*/*/seed*"))
    assert len(dirs) == 4 and all(json.loads((d / "done.json").read_text())["frames"] == 8000 for d in dirs)
    stamps = [(d / "done.json").stat().st_mtime for d in dirs]

    assert runner.main(launch) == 0  # everything done: nothing runs
    assert "0 of 4 runs to launch" in capsys.readouterr().out
    assert [(d / "done.json").stat().st_mtime for d in dirs] == stamps

    # more frames for one run: it resumes from its checkpoint and its logs go on
    assert runner.main([*launch, "--frames", "10000", "--seeds", "1", "--variants", "A2C (proper)"]) == 0
    extended = tmp_path / "res" / "tiny" / "A2C_proper" / "BreakoutNoFrameskip-v4" / "seed1"
    done = json.loads((extended / "done.json").read_text())
    assert done["frames"] == 10000 and "--resume" in done["command"]
    run_dir = next(p.parent for p in (extended / "runs").rglob("events.out.tfevents.*"))
    assert [s for s, _ in read_scalars(run_dir)["losses/policy_loss"]] == [
        *range(200, 2401, 200),
        2500,
    ]  # every 10 updates and the last

    # plain plotting reads the logs and writes no evidence: only --save-data writes into --data
    plot.main([str(tmp_path / "tiny.toml"), "--results", str(tmp_path / "res"), "--out", str(tmp_path / "trial.png"),
               "--data", str(tmp_path / "data")])  # fmt: skip
    assert (tmp_path / "trial.png").exists() and not (tmp_path / "data").exists()
    capsys.readouterr()
    assert (
        plot.main(
            [
                str(tmp_path / "tiny.toml"),
                "--results",
                str(tmp_path / "res"),
                "--out",
                str(tmp_path / "fig.png"),
                "--last",
                "3",
                "--data",
                str(tmp_path / "data"),
                "--save-data",
            ]
        )
        == 0
    )
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    # the tables, recomputed here from the logs: mean +- std over seeds of each seed's last 3 games,
    # and the aggregate, which with 2 runs cuts nothing: the mean of the human-normalized finals
    for variant, name in (("A2C_1-step", "A2C (1-step)"), ("A2C_proper", "A2C (proper)")):
        finals = []
        for seed in (1, 2):
            d = tmp_path / "res" / "tiny" / variant / "BreakoutNoFrameskip-v4" / f"seed{seed}"
            returns = [
                v for _, v in read_scalars(next(p.parent for p in d.rglob("events.out.tfevents.*")))["charts/episodic_return"]
            ]
            finals.append(np.mean(returns[-3:]))
        assert f"{np.mean(finals):.1f} ± {np.std(finals, ddof=1):.1f} (n=2)" in printed  # the sample std
        iqm = np.mean((np.array(finals) - 1.7) / (30.5 - 1.7))
        assert f"| {name} | {iqm:.3f} | – (< 3 runs in a game) |" in printed  # no min-max posing as an interval
    assert "| BreakoutNoFrameskip-v4 (8,000) |" in printed  # the shortest seed reached 8,000 frames

    # the compact copies of the logs redraw the same tables once the runs are gone
    assert len(list((tmp_path / "data" / "tiny").rglob("seed*.csv.gz"))) == 4
    shutil.rmtree(tmp_path / "res")
    plot.main([str(tmp_path / "tiny.toml"), "--results", str(tmp_path / "res"), "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / "again.png"), "--last", "3"])  # fmt: skip
    assert capsys.readouterr().out.split("final return:")[1] == printed.split("final return:")[1]  # the tables

    # --frames compares every run at that budget: games that end after it are left out
    plot.main([str(tmp_path / "tiny.toml"), "--results", str(tmp_path / "res"), "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / "cut.png"), "--last", "3", "--frames", "6000"])  # fmt: skip
    printed = capsys.readouterr().out
    finals = []
    for seed in (1, 2):
        saved = tmp_path / "data" / "tiny" / "A2C_proper" / "BreakoutNoFrameskip-v4" / f"seed{seed}.csv.gz"
        games = plot.load_compact(saved)["charts/episodic_return"]
        finals.append(np.mean([v for step, v in games if step * runner.FRAMES_PER_STEP <= 6000][-3:]))
    assert "| BreakoutNoFrameskip-v4 (6,000) | " in printed
    assert f"{np.mean(finals):.1f} ± {np.std(finals, ddof=1):.1f} (n=2)" in printed

    # --per-run: one row per run, cut at --frames as the tables are (its arithmetic: the test after next)
    plot.main([str(tmp_path / "tiny.toml"), "--results", str(tmp_path / "res"), "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / "cut.png"), "--last", "3", "--frames", "6000", "--per-run", "4000"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| variant | game | seed | 0–0.004M | 0.004–0.008M | games | last 3 | entropy |" in printed
    for seed in (1, 2):
        logs = plot.load_compact(tmp_path / "data" / "tiny" / "A2C_proper" / "BreakoutNoFrameskip-v4" / f"seed{seed}.csv.gz")
        kept = [v for step, v in logs["charts/episodic_return"] if step * runner.FRAMES_PER_STEP <= 6000]
        row = next(line for line in printed.splitlines() if line.startswith(f"| A2C (proper) | Breakout | {seed} | "))
        assert f"| {len(kept):,} | {np.mean(kept[-3:]):.1f} | " in row


def test_binned_curve_and_final_return():
    edges = np.array([0, 10, 20, 30, 40, 50])
    curve = plot.binned_curve(np.array([12, 18, 35]), np.array([1.0, 3.0, 5.0]), edges, reached=40)
    # [0,10): no game yet; [10,20): mean(1, 3); [20,30): carried; [30,40): 5; [40,50): after the run
    assert np.array_equal(curve, [np.nan, 2.0, 2.0, 5.0, np.nan], equal_nan=True)
    assert plot.final_return(np.array([1.0, 2.0, 3.0, 10.0]), last=2) == 6.5
    assert np.isnan(plot.final_return(np.array([]), last=100))


def test_per_run_rows_carry_empty_intervals_and_cut_the_entropy_at_frames():
    runs = [SimpleNamespace(variant="QL", game="QbertNoFrameskip-v4", seed=s) for s in (1, 2)]
    logs = [({"losses/entropy": [(500, 1.7), (2000, 1.5)]}, np.array([1000, 3000, 5000]), np.array([10.0, 20.0, 60.0]), 6000),
            ({"losses/entropy": [(500, 1.6)]}, np.array([4500]), np.array([7.0]), 6000)]  # fmt: skip
    rows = plot.per_run(runs, logs, every=2000, last=2, frames=6000).splitlines()
    assert rows[0] == "| variant | game | seed | 0–0.002M | 0.002–0.004M | 0.004–0.006M | games | last 2 | entropy |"
    assert rows[2:] == ["| QL | Qbert | 1 | 10.0 | 20.0 | 60.0 | 3 | 40.0 | 1.700 |",  # entropy logged by 6,000 frames
                        "| QL | Qbert | 2 | – | – | 7.0 | 1 | 7.0 | 1.600 |"]  # fmt: skip


def test_compact_logs_round_trip_and_the_same_logs_give_the_same_bytes(tmp_path):
    scalars = {"charts/episodic_return": [(10, 1.5), (30, -2.0)], "losses/value_loss": [(20, 0.123456789)]}
    first, second = tmp_path / "a" / "seed1.csv.gz", tmp_path / "b" / "seed1.csv.gz"
    plot.save_compact(scalars, first)
    time.sleep(1.1)  # gzip stamps whole seconds: a header time would differ
    plot.save_compact(scalars, second)
    assert first.read_bytes() == second.read_bytes()  # git sees an unchanged file as unchanged
    assert plot.load_compact(first) == {**scalars, "losses/value_loss": [(20, 0.1234568)]}  # 7 significant digits


def test_iqm_and_its_stratified_bootstrap():
    assert plot.iqm(np.arange(1.0, 9.0)) == 4.5  # 8 scores: 2 cut from each end, mean of 3..6
    assert plot.iqm(np.array([0.0, 1.0, 100.0])) == pytest.approx(101 / 3)  # under 4 scores nothing is cut
    assert plot.iqm(np.array([-50.0, 1.0, 2.0, 3.0, 4.0, 1e6])) == 2.5  # outliers at both ends drop out
    # Stratified: every replicate holds the 4 runs of game A (all 0) and 2 draws from game B
    # ({10, 20}); the IQM of [0, 0, 0, 0, b1, b2] cutting 1 from each end is min(b1, b2) / 4, so
    # 2.5 or 5 (P = 3/4, 1/4) and never 0, which an unstratified bootstrap could draw.
    point, low, high = plot.stratified_bootstrap_iqm([np.zeros(4), np.array([10.0, 20.0])], 4000, np.random.default_rng(0))
    assert (point, low, high) == (2.5, 2.5, 5.0)
    assert plot.human_normalized("BreakoutNoFrameskip-v4", 1.7) == 0 and plot.human_normalized("ALE/Pong-v5", 14.6) == 1
    descriptions = [runner.load(str(p)) for p in (ROOT / "experiments").glob("*.toml")]
    assert {plot.game_name(g) for d in descriptions for g in d["games"]} <= set(plot.RANDOM_HUMAN)  # every game we run


def test_slurm_submission_through_submitit(tmp_path):
    """The --slurm path, run by submitit's `debug` executor (in this process, no cluster)."""
    pytest.importorskip("submitit")
    (tmp_path / "tiny.toml").write_text(TINY)
    status = runner.main([
        str(tmp_path / "tiny.toml"), "--results", str(tmp_path / "res"), "--seeds", "1", "--variants", "A2C (proper)",
        "--slurm", "--slurm-cluster", "debug", "--slurm-folder", str(tmp_path / "slurm"), "--cpus", "2",
    ])  # fmt: skip
    assert status == 0
    assert (tmp_path / "res" / "tiny" / "A2C_proper" / "BreakoutNoFrameskip-v4" / "seed1" / "done.json").exists()


def test_coupled_runs_start_together_and_the_controls_separate(tmp_path, monkeypatch, capsys):
    """experiments/coupled.py on 2 updates: PG and QL from one seed share their initial weights and
    sampling noise, so after their first update they differ by the per-sample gradient difference only;
    the perturbed copy sits 1e-6 away; a relaunch runs nothing; the table is redrawn from the CSVs."""
    monkeypatch.setattr(coupled, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(coupled, "DATA", tmp_path / "data")
    monkeypatch.setattr(coupled, "FIGURE", tmp_path / "coupled.png")
    coupled.main(["--frames", "640"])  # snapshots at agent steps 80 and 160
    rows = coupled.read_csv(tmp_path / "data" / "coupled_distances.csv")
    got = {(r["pair"].split(" (")[0], int(r["step"])): (float(r["mean_kl"]), float(r["rel_distance"])) for r in rows}
    assert set(got) == {(pair.split(" (")[0], step) for pair in coupled.PAIRS for step in (80, 160)}
    assert got["PG vs QL", 80][1] < 1e-6  # one update apart: same init, same batch, gradients nearly equal
    assert got["PG vs PG + 1e-6 noise", 80][1] == pytest.approx(1e-6, rel=0.05)
    assert got["PG vs naive A2C", 160][1] > got["PG vs QL", 160][1]
    assert (tmp_path / "coupled.png").stat().st_size > 10_000
    stamps = sorted(p.stat().st_mtime for p in (tmp_path / "results").rglob("snapshots/*.pt"))
    capsys.readouterr()
    coupled.main(["--frames", "640"])
    assert "agent step" not in capsys.readouterr().out  # every snapshot exists: nothing ran again
    assert sorted(p.stat().st_mtime for p in (tmp_path / "results").rglob("snapshots/*.pt")) == stamps
