"""a2c_entropy.py run as a user runs it: both modes x both regularizers on a tiny budget, the
logged tags and learning-rate schedule, determinism, --save-model evaluation, bad input."""

import math

import pytest

from conftest import only_run_dir, read_scalars

# 4 envs x 5 steps = 20 agent steps per update, 100 updates, losses logged every 25 (~5 s).
SMOKE = "--num-envs 4 --num-steps 5 --total-timesteps 2000 --log-interval 25".split()
TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/learning_rate",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/entropy",
    "losses/kl",
    "losses/explained_variance",
}


@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
@pytest.mark.parametrize("mode", ["proper", "naive"])
def test_smoke_run_logs_finite_losses(run_script, tmp_path, mode, regularizer):
    proc = run_script("a2c_entropy.py", *SMOKE, "--entropy-mode", mode, "--regularizer", regularizer)
    assert proc.returncode == 0, proc.stderr
    scalars = read_scalars(only_run_dir(tmp_path))
    assert TAGS <= set(scalars), TAGS - set(scalars)
    assert [step for step, _ in scalars["losses/value_loss"]] == [500, 1000, 1500, 2000]
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/kl"):
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    for (_, h), (_, kl) in zip(scalars["losses/entropy"], scalars["losses/kl"]):
        assert 0 < h <= math.log(4) + 1e-6 and kl == pytest.approx(math.log(4) - h, abs=1e-5)
    # linear decay from 7e-4, set before update i as 7e-4 * (1 - (i - 1) / 100)
    lrs = [lr for _, lr in scalars["charts/learning_rate"]]
    assert lrs == pytest.approx([7e-4 * (1 - (i - 1) / 100) for i in (25, 50, 75, 100)])
    # real games (all 5 lives): a random Breakout game lasts far longer than one life
    assert scalars["charts/episodic_length"] and all(length > 100 for _, length in scalars["charts/episodic_length"])


def test_same_seed_gives_identical_logs(run_script, tmp_path):
    logs = []
    for i in range(2):
        proc = run_script("a2c_entropy.py", *SMOKE, "--regularizer", "kl", "--exp-name", f"det{i}")
        assert proc.returncode == 0, proc.stderr
        run_dir = next(p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*") if f"det{i}" in str(p))
        scalars = read_scalars(run_dir)
        scalars.pop("charts/SPS")
        logs.append(scalars)
    assert logs[0] == logs[1]
    assert len(logs[0]["losses/policy_loss"]) == 4 and logs[0]["charts/episodic_return"]


def test_save_model_then_evaluate(run_script, tmp_path):
    proc = run_script("a2c_entropy.py", *SMOKE, "--save-model", "--eval-episodes", "3", "--capture-video")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "a2c_entropy.cleanrl_model").exists()
    evals = read_scalars(run_dir)["eval/episodic_return"]
    assert [step for step, _ in evals] == [0, 1, 2] and all(ret >= 0 for _, ret in evals)
    gifs = sorted(p.name for p in (tmp_path / "videos").rglob("*.gif"))
    assert "eval-game-0.gif" in gifs and "train-game-0.gif" in gifs


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env-id", "FooBarNoFrameskip-v4"], "unknown game 'FooBarNoFrameskip-v4'"),
        (["--tau", "-0.01"], "--tau must be a finite number >= 0"),
        (["--tau", "inf"], "--tau must be a finite number >= 0"),
        (["--num-steps", "0"], "--num-steps must be >= 1"),
        (["--num-envs", "0"], "--num-envs must be >= 1"),
        (["--total-timesteps", "50"], "--total-timesteps 50 is less than one rollout (num-envs * num-steps = 80)"),
        (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
        (["--learning-rate", "0"], "--learning-rate must be a finite number > 0"),
        (["--vf-coef", "-1"], "--vf-coef must be a finite number >= 0"),
        (["--max-grad-norm", "0"], "--max-grad-norm must be > 0"),
        (["--entropy-mode", "foo"], "invalid choice 'foo' for argument '--entropy-mode'"),
        (["--regularizer", "l2"], "invalid choice 'l2' for argument '--regularizer'"),
        (["--num-steps", "five"], "Error parsing --num-steps"),
    ],
)
def test_bad_input_one_line_nonzero_exit(run_script, tmp_path, args, message):
    proc = run_script("a2c_entropy.py", *args)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()  # stopped before anything was built


def test_non_finite_loss_stops_the_run_naming_step_and_loss(run_script):
    proc = run_script("a2c_entropy.py", *SMOKE, "--learning-rate", "1e30")
    assert proc.returncode != 0
    assert "non-finite losses/" in proc.stderr and "at global_step" in proc.stderr, proc.stderr
