"""soft_dqn.py run as a user runs it: every backup, 1- and 5-step, on a tiny budget, the
logged tags, determinism, unclipped scores, wandb (bad input and --save-model:
test_cli_common.py; env ids: test_env.py)."""

import math

import pytest

from conftest import SMOKE, only_run_dir, read_scalars, scalars_of_runs, without_sps


BACKUPS = {"hard": ["--tau", "0"], "soft-entropy": ["--tau", "0.1"], "soft-kl": ["--tau", "0.1", "--regularizer", "kl"]}
TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/epsilon",
    "charts/policy_entropy",
    "losses/td_loss",
    "losses/q_values",
}


# each backup and each n once (the soft entropy backup's n-step path also runs in test_compile.py and test_resume.py)
@pytest.mark.parametrize("backup, n_step", [("hard", 1), ("hard", 5), ("soft-entropy", 1), ("soft-kl", 5)])
def test_smoke_run_logs_finite_losses(run_script, tmp_path, backup, n_step):
    proc = run_script("soft_dqn.py", *SMOKE["soft_dqn.py"], *BACKUPS[backup], "--n-step", str(n_step))
    assert proc.returncode == 0, proc.stderr
    scalars = read_scalars(only_run_dir(tmp_path))
    assert TAGS <= set(scalars), TAGS - set(scalars)
    # one update per 2 env steps from step 400 on, logged every 100 updates; epsilon 1 -> 0.5
    # over 800 steps, as used for the vector step that started at step 598
    assert [step for step, _ in scalars["losses/td_loss"]] == [600, 800]
    assert scalars["charts/epsilon"][0] == (600, pytest.approx(1 - 0.5 * 598 / 800))
    for tag in ("losses/td_loss", "losses/q_values", "charts/policy_entropy"):
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    entropies = [v for _, v in scalars["charts/policy_entropy"]]
    if backup == "hard":
        assert entropies == [0.0, 0.0]
    else:
        assert all(0 < h <= math.log(4) + 1e-6 for h in entropies)
    # real games (all 5 lives): a Breakout game lasts far longer than one life (~40 steps at random)
    assert scalars["charts/episodic_length"] and all(length > 100 for _, length in scalars["charts/episodic_length"])


def test_episodic_return_is_the_unclipped_game_score(run_script, tmp_path):
    """MsPacman pays 10 points a dot: clipped, a random game scores ~20; unclipped ~200."""
    proc = run_script(
        "soft_dqn.py", "--env-id", "MsPacmanNoFrameskip-v4", "--num-envs", "2", "--total-timesteps", "1200",
        "--learning-starts", "1100", "--buffer-size", "1200", "--end-e", "1.0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    returns = [r for _, r in read_scalars(only_run_dir(tmp_path))["charts/episodic_return"]]
    assert returns and all(r % 10 == 0 for r in returns) and max(returns) >= 100, returns


def test_same_seed_gives_identical_logs(run_script, tmp_path):
    logs = []
    for i in range(2):
        proc = run_script(
            "soft_dqn.py",
            *SMOKE["soft_dqn.py"],
            "--tau",
            "0.1",
            "--regularizer",
            "kl",
            "--n-step",
            "3",
            "--exp-name",
            f"det{i}",
            fresh=i == 0,  # a new interpreter and this one: the same logs
        )
        assert proc.returncode == 0, proc.stderr
        run_dir = next(p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*") if f"det{i}" in str(p))
        scalars = read_scalars(run_dir)
        scalars.pop("charts/SPS")
        logs.append(scalars)
    assert logs[0] == logs[1]
    assert len(logs[0]["losses/td_loss"]) == 2


def test_track_with_wandb_offline(run_script, tmp_path):
    proc = run_script("soft_dqn.py", *SMOKE["soft_dqn.py"], "--track", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_munchausen_alpha_zero_is_the_soft_run_and_alpha_logs_its_term(tmp_path_factory):
    """--munchausen-alpha 0 reproduces the soft (entropy) run bit for bit; alpha 0.9 changes the TD
    targets (and so the losses) and logs the mean bonus, which lies in [l0, 0]."""
    common = [*SMOKE["soft_dqn.py"], "--tau", "0.03"]
    runs = {"soft": [], "alpha0": ["--munchausen-alpha", "0"], "m": ["--munchausen-alpha", "0.9", "--munchausen-l0", "-0.5"]}
    logs = {
        name: without_sps(scalars) for name, scalars in scalars_of_runs(tmp_path_factory, "soft_dqn.py", common, runs).items()
    }
    assert logs["alpha0"] == logs["soft"]
    assert "losses/munchausen_term" not in logs["soft"]
    terms = [v for _, v in logs["m"]["losses/munchausen_term"]]
    assert len(terms) == 2 and all(-0.5 <= v < 0 for v in terms), terms
    assert logs["m"]["losses/td_loss"] != logs["soft"]["losses/td_loss"]
