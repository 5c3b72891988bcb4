"""What every script does the same way: bad options stop with one line on stderr and a
non-zero exit before anything is built; a loss that turns non-finite stops the run with a
message naming the loss, the step and the update; --save-model saves, then evaluates."""

import runpy
import sys

import numpy as np
import pytest

from conftest import ROOT, only_run_dir, read_scalars

from test_a2c_entropy_cli import SMOKE as A2C_SMOKE
from test_natural_pg_damped_cli import SMOKE as NPG_SMOKE
from test_pgql_equiv_cli import SMOKE as PGQL_SMOKE
from test_soft_dqn_cli import SMOKE as DQN_SMOKE


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("soft_dqn.py", ["--env-id", "FooBarNoFrameskip-v4"], "unknown game 'FooBarNoFrameskip-v4'"),
        ("soft_dqn.py", ["--tau", "-0.1"], "--tau must be a finite number >= 0"),
        ("soft_dqn.py", ["--n-step", "0"], "--n-step must be >= 1"),
        ("soft_dqn.py", ["--batch-size", "64", "--buffer-size", "32"], "--batch-size 64 is larger than --buffer-size 32"),
        ("soft_dqn.py", ["--learning-starts", "16"], "--learning-starts 16 is below --batch-size 32"),
        ("soft_dqn.py", ["--num-envs", "0"], "--num-envs must be >= 1"),
        ("soft_dqn.py", ["--buffer-size", "40", "--batch-size", "8", "--num-envs", "8"], "slots per env"),
        ("soft_dqn.py", ["--learning-rate", "nan"], "--learning-rate must be a finite number > 0"),
        ("soft_dqn.py", ["--end-e", "2"], "need 0 <= --end-e <= --start-e <= 1"),
        ("soft_dqn.py", ["--tau", "abc"], "Error parsing --tau: could not convert string to float: 'abc'"),
        ("soft_dqn.py", ["--regularizer", "foo"], "invalid choice 'foo' for argument '--regularizer'"),
        ("soft_dqn.py", ["--no-such-option", "1"], "Unrecognized options: --no-such-option"),
        ("soft_dqn.py", ["--seed", "-1"], "--seed must be in [0, 2**31 - 2**16)"),
        ("soft_dqn.py", ["--cudagraphs", "--no-cuda"], "--cudagraphs needs --compile"),
        ("soft_dqn.py", ["--compile", "--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device"),
        ("soft_dqn.py", ["--buffer-device", "cuda", "--no-cuda"], "--buffer-device cuda needs a CUDA device"),
        ("a2c_entropy.py", ["--env-id", "FooBarNoFrameskip-v4"], "unknown game 'FooBarNoFrameskip-v4'"),
        ("a2c_entropy.py", ["--tau", "-0.01"], "--tau must be a finite number >= 0"),
        ("a2c_entropy.py", ["--tau", "inf"], "--tau must be a finite number >= 0"),
        ("a2c_entropy.py", ["--num-steps", "0"], "--num-steps must be >= 1"),
        ("a2c_entropy.py", ["--num-envs", "0"], "--num-envs must be >= 1"),
        ("a2c_entropy.py", ["--total-timesteps", "50"], "--total-timesteps 50 is less than one rollout (num-envs * num-steps = 80)"),
        ("a2c_entropy.py", ["--gamma", "1.5"], "--gamma must be in [0, 1]"),
        ("a2c_entropy.py", ["--learning-rate", "0"], "--learning-rate must be a finite number > 0"),
        ("a2c_entropy.py", ["--vf-coef", "-1"], "--vf-coef must be a finite number >= 0"),
        ("a2c_entropy.py", ["--max-grad-norm", "0"], "--max-grad-norm must be > 0"),
        ("a2c_entropy.py", ["--entropy-mode", "foo"], "invalid choice 'foo' for argument '--entropy-mode'"),
        ("a2c_entropy.py", ["--regularizer", "l2"], "invalid choice 'l2' for argument '--regularizer'"),
        ("a2c_entropy.py", ["--num-steps", "five"], "Error parsing --num-steps"),
        ("a2c_entropy.py", ["--seed", "-1"], "--seed must be in [0, 2**31 - 2**16)"),
        ("natural_pg_damped.py", ["--seed", str(2**31)], "--seed must be in [0, 2**31 - 2**16)"),
        ("a2c_entropy.py", ["--rmsprop-eps", "inf"], "--rmsprop-eps must be a finite number > 0"),
        ("pgql_equiv.py", ["--update", "ql", "--tau", "0"], "--tau 0 has no soft Q-function"),
        ("pgql_equiv.py", ["--tau", "0"], "for plain A2C pass --equiv-check-every 0"),
        ("pgql_equiv.py", ["--tau", "-1"], "--tau must be a finite number >= 0"),
        ("pgql_equiv.py", ["--equiv-check-every", "-1"], "--equiv-check-every must be >= 0"),
        ("pgql_equiv.py", ["--update", "sarsa"], "invalid choice 'sarsa' for argument '--update'"),
        ("pgql_equiv.py", ["--num-steps", "0"], "--num-steps must be >= 1"),
        ("pgql_equiv.py", ["--env-id", "NoSuchGame-v4"], "unknown game 'NoSuchGame-v4'"),
        ("natural_pg_damped.py", ["--eps", "0"], "--eps must be in (0, 1]"),
        ("natural_pg_damped.py", ["--eps", "1.5"], "--eps must be in (0, 1]"),
        ("natural_pg_damped.py", ["--tau", "0"], "--tau must be a finite number > 0"),
        ("natural_pg_damped.py", ["--cg-iters", "0"], "--cg-iters must be >= 1"),
        ("natural_pg_damped.py", ["--cg-damping", "-1"], "--cg-damping must be a finite number >= 0"),
        ("natural_pg_damped.py", ["--max-kl", "0"], "--max-kl must be a finite number > 0"),
        ("natural_pg_damped.py", ["--policy-epochs", "0"], "--policy-epochs must be >= 1"),
        ("natural_pg_damped.py", ["--value-lr", "-1"], "--value-lr must be a finite number > 0"),
        ("natural_pg_damped.py", ["--num-minibatches", "400"], "--num-minibatches must be in [1, num-envs * num-steps = 320]"),
        ("natural_pg_damped.py", ["--solver", "trpo"], "invalid choice 'trpo' for argument '--solver'"),
        ("natural_pg_damped.py", ["--fisher", "diagonal"], "invalid choice 'diagonal' for argument '--fisher'"),
        ("natural_pg_damped.py", ["--env-id", "NoSuchGame-v4"], "unknown game 'NoSuchGame-v4'"),
        ("soft_dqn.py", ["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        ("a2c_entropy.py", ["--resume", "no/such.pt"], "--resume no/such.pt: no such checkpoint file"),
        ("pgql_equiv.py", ["--checkpoint-every", "-5"], "--checkpoint-every must be >= 0"),
        ("natural_pg_damped.py", ["--resume", "missing.pt"], "--resume missing.pt: no such checkpoint file"),
    ],
)
def test_bad_input_one_line_nonzero_exit(run_script, tmp_path, script, args, message):
    proc = run_script(script, *args)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()  # stopped before anything was built


@pytest.mark.parametrize(
    "script, args, loss",
    [
        ("soft_dqn.py", [*DQN_SMOKE, "--learning-rate", "1e30"], "losses/td_loss"),
        ("a2c_entropy.py", [*A2C_SMOKE, "--learning-rate", "1e30"], "losses/policy_loss"),
        ("pgql_equiv.py", [*PGQL_SMOKE, "--update", "ql", "--learning-rate", "1e30"], "losses/q_loss"),
        ("natural_pg_damped.py", [*NPG_SMOKE, "--value-lr", "1e30"], "losses/value_loss"),
        ("natural_pg_damped.py", [*NPG_SMOKE, "--policy-lr", "1e30", "--max-kl", "None"], "losses/damped_q_loss"),
    ],
)
def test_non_finite_loss_stops_the_run_naming_step_and_loss(run_script, script, args, loss):
    proc = run_script(script, *args)
    assert proc.returncode != 0
    assert f"non-finite {loss}" in proc.stderr or f", {loss} (" in proc.stderr, proc.stderr
    assert "at global_step" in proc.stderr and ", update " in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "script, args",
    [("soft_dqn.py", DQN_SMOKE), ("a2c_entropy.py", A2C_SMOKE), ("pgql_equiv.py", PGQL_SMOKE), ("natural_pg_damped.py", NPG_SMOKE)],
)
def test_save_model_then_evaluate(run_script, tmp_path, script, args):
    proc = run_script(script, *args, "--save-model", "--eval-episodes", "3", "--capture-video")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / script.replace(".py", ".cleanrl_model")).exists()
    evals = read_scalars(run_dir)["eval/episodic_return"]
    assert [step for step, _ in evals] == [0, 1, 2] and all(ret >= 0 for _, ret in evals)
    gifs = sorted(p.name for p in (tmp_path / "videos").rglob("*.gif"))
    assert "eval-game-0.gif" in gifs and "train-game-0.gif" in gifs


@pytest.mark.parametrize("script, args", [("a2c_entropy.py", A2C_SMOKE), ("natural_pg_damped.py", NPG_SMOKE)])
def test_time_limit_truncation_runs_the_bootstrap_branch(monkeypatch, tmp_path, script, args):
    """The 108,000-frame limit is never reached in a smoke run: run the script in-process
    with a 400-frame limit (100 agent steps), so most games end by truncation."""
    import ale_py.vector_env

    truncations = []

    class Limited(ale_py.vector_env.AtariVectorEnv):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "max_num_frames_per_episode": 400})

        def step(self, actions):
            out = super().step(actions)
            truncations.append(out[3] & ~out[2])
            return out

    monkeypatch.setattr(ale_py.vector_env, "AtariVectorEnv", Limited)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, *args])
    result = runpy.run_path(str(ROOT / script), run_name="__main__")
    total = int(args[args.index("--total-timesteps") + 1])
    games = 4 * (total // 4 // 100)  # 4 envs, 100 steps a game at most
    assert np.sum(truncations) >= 0.75 * games
    lengths = [length for _, length in read_scalars(only_run_dir(tmp_path))["charts/episodic_length"]]
    assert len(lengths) >= 0.75 * games and max(lengths) <= 100
    assert result["global_step"] == total
