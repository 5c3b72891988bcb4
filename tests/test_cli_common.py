"""What every script does the same way: bad options stop with a message naming the option and a
non-zero exit before anything is built (tyro's box, status 2; resume errors: one line, status
1); --resume takes the checkpoint's options as defaults; a loss that turns non-finite stops the
run with a message naming the loss, the step and the update; --save-model saves, then evaluates."""

import importlib

import numpy as np
import pytest
import torch

from conftest import SCRIPTS, SMOKE, only_run_dir, read_scalars, run_in

MODULES = {script: importlib.import_module(script[: -len(".py")]) for script in SCRIPTS}

BAD_INPUT = [
    ("soft_dqn.py", ["--env-id", "FooBarNoFrameskip-v4"], "unknown game 'FooBarNoFrameskip-v4'"),
    ("soft_dqn.py", ["--tau", "-0.1"], "--tau must be a finite number >= 0"),
    ("soft_dqn.py", ["--n-step", "0"], "--n-step and --num-envs must be >= 1"),
    ("soft_dqn.py", ["--num-envs", "0"], "--n-step and --num-envs must be >= 1"),
    ("a2c_entropy.py", ["--num-envs", "0"], "--num-envs and --num-steps must be >= 1"),
    ("pgql_equiv.py", ["--num-steps", "0"], "--num-envs and --num-steps must be >= 1"),
    ("natural_pg_damped.py", ["--num-envs", "0"], "--num-envs and --num-steps must be >= 1"),
    ("soft_dqn.py", ["--buffer-size", "1000000000"], "--buffer-size 1,000,000,000 needs 7,069.0 GB of memory"),
    ("soft_dqn.py", ["--learning-starts", "20000000"], "--learning-starts must be below --total-timesteps"),
    ("soft_dqn.py", ["--buffer-size", "40", "--batch-size", "8", "--num-envs", "8"], "leaves 5 slots per env"),
    ("soft_dqn.py", ["--end-e", "2"], "need 0 <= --end-e <= --start-e <= 1"),
    ("soft_dqn.py", ["--train-frequency", "0"], "--*-frequency must be >= 1"),
    ("soft_dqn.py", ["--gamma", "1.5"], "--gamma must be in [0, 1]"),
    ("soft_dqn.py", ["--eval-episodes", "0"], "--eval-episodes must be >= 1"),
    ("soft_dqn.py", ["--tau", "abc"], "Error parsing --tau: could not convert string to float: 'abc'"),
    ("soft_dqn.py", ["--regularizer", "foo"], "invalid choice 'foo' for argument '--regularizer'"),
    ("soft_dqn.py", ["--no-such-option", "1"], "Unrecognized options: --no-such-option"),
    ("soft_dqn.py", ["--seed", "-1"], "--seed must be in [0, 2**31 - 2**16)"),
    ("soft_dqn.py", ["--munchausen-alpha", "0.9", "--tau", "0"], "--munchausen-alpha > 0 needs --tau > 0"),
    ("soft_dqn.py", ["--munchausen-alpha", "0.9", "--regularizer", "kl"], "needs --tau > 0, --regularizer entropy"),
    ("soft_dqn.py", ["--munchausen-alpha", "0.9", "--n-step", "3"], "--regularizer entropy and --n-step 1"),
    ("soft_dqn.py", ["--munchausen-alpha", "-1"], "--munchausen-alpha must be finite, >= 0: -1.0"),
    ("soft_dqn.py", ["--munchausen-alpha", "inf"], "--munchausen-alpha must be finite, >= 0: inf"),
    ("soft_dqn.py", ["--munchausen-l0", "0.5"], "--munchausen-l0 must be finite, <= 0: 0.5"),
    ("soft_dqn.py", ["--cudagraphs", "--no-cuda"], "--cudagraphs needs --compile and CUDA"),
    ("a2c_entropy.py", ["--env-id", "FooBarNoFrameskip-v4"], "unknown game 'FooBarNoFrameskip-v4'"),
    ("a2c_entropy.py", ["--tau", "-0.01"], "--tau must be a finite number >= 0"),
    ("a2c_entropy.py", ["--tau", "inf"], "--tau must be a finite number >= 0"),
    ("a2c_entropy.py", ["--total-timesteps", "50"], "--total-timesteps must be >= --num-envs * --num-steps = 80"),
    ("a2c_entropy.py", ["--gamma", "1.5"], "--gamma must be in [0, 1]"),
    ("a2c_entropy.py", ["--learning-rate", "0"], "--learning-rate must be a finite number > 0"),
    ("a2c_entropy.py", ["--vf-coef", "-1"], "--vf-coef must be >= 0 and --max-grad-norm > 0"),
    ("a2c_entropy.py", ["--max-grad-norm", "0"], "--vf-coef must be >= 0 and --max-grad-norm > 0"),
    ("a2c_entropy.py", ["--rmsprop-alpha", "1"], "--rmsprop-alpha must be in [0, 1) and --rmsprop-eps > 0"),
    ("pgql_equiv.py", ["--log-interval", "0"], "--log-interval must be >= 1"),
    ("natural_pg_damped.py", ["--cg-damping", "-1"], "--cg-damping must be a finite number >= 0"),
    ("a2c_entropy.py", ["--entropy-mode", "foo"], "invalid choice 'foo' for argument '--entropy-mode'"),
    ("a2c_entropy.py", ["--regularizer", "l2"], "invalid choice 'l2' for argument '--regularizer'"),
    ("a2c_entropy.py", ["--num-steps", "five"], "Error parsing --num-steps"),
    ("a2c_entropy.py", ["--seed", "-1"], "--seed must be in [0, 2**31 - 2**16)"),
    ("pgql_equiv.py", ["--update", "ql", "--tau", "0"], "--tau 0 has no soft Q-function"),
    ("pgql_equiv.py", ["--tau", "0"], "(plain A2C: --equiv-check-every 0)"),
    ("pgql_equiv.py", ["--tau", "-1"], "--tau must be a finite number >= 0"),
    ("pgql_equiv.py", ["--equiv-check-every", "-1"], "--equiv-check-every must be >= 0"),
    ("pgql_equiv.py", ["--update", "sarsa"], "invalid choice 'sarsa' for argument '--update'"),
    ("pgql_equiv.py", ["--env-id", "NoSuchGame-v4"], "unknown game 'NoSuchGame-v4'"),
    ("natural_pg_damped.py", ["--seed", str(2**31)], "--seed must be in [0, 2**31 - 2**16)"),
    ("natural_pg_damped.py", ["--eps", "0"], "--eps must be in (0, 1]"),
    ("natural_pg_damped.py", ["--eps", "1.5"], "--eps must be in (0, 1]"),
    ("natural_pg_damped.py", ["--tau", "0"], "--tau must be a finite number > 0"),
    ("natural_pg_damped.py", ["--cg-iters", "0"], "--cg-iters and --diagnostic-every must be >= 1"),
    ("natural_pg_damped.py", ["--diagnostic-every", "0"], "--cg-iters and --diagnostic-every must be >= 1"),
    ("natural_pg_damped.py", ["--max-kl", "0"], "--max-kl must be a finite number > 0"),
    ("natural_pg_damped.py", ["--policy-epochs", "0"], "--policy-epochs and --value-epochs must be >= 1"),
    ("natural_pg_damped.py", ["--num-minibatches", "400"], "--num-minibatches must be in [1, num-envs * num-steps = 320]"),
    ("natural_pg_damped.py", ["--solver", "trpo"], "invalid choice 'trpo' for argument '--solver'"),
    ("natural_pg_damped.py", ["--fisher", "diagonal"], "invalid choice 'diagonal' for argument '--fisher'"),
    ("natural_pg_damped.py", ["--env-id", "NoSuchGame-v4"], "unknown game 'NoSuchGame-v4'"),
]


def tyro_error(capsys) -> str:
    """What tyro printed to stderr, its box and line wrapping undone."""
    return " ".join(capsys.readouterr().err.replace("\u2502", " ").split())


@pytest.mark.parametrize("script, argv, message", BAD_INPUT)
def test_bad_input_names_the_option_and_exits_2(capsys, script, argv, message):
    with pytest.raises(SystemExit) as stop:
        MODULES[script].parse_args(argv)
    assert stop.value.code == 2
    assert message in tyro_error(capsys)


def test_bad_input_stops_before_anything_is_built(run_script, tmp_path):
    """As a real process (one script: the path from tyro to the exit is the block's `parse_args`, in all four)."""
    proc = run_script("natural_pg_damped.py", "--seed", "-1", fresh=True)
    assert proc.returncode == 2 and "--seed must be in [0, 2**31 - 2**16)" in " ".join(
        proc.stderr.replace("\u2502", " ").split()
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def checkpoint_file(tmp_path):
    """A checkpoint as a2c_entropy.py writes it at step 1000 (the options and step are all that
    --resume reads before the run starts), in its run directory."""

    def write(script: str = "a2c_entropy.py", step: int = 1000, **options) -> str:
        args = MODULES[script].parse_args([*SMOKE[script], *options.get("argv", [])])[0]
        path = tmp_path / "runs" / "run" / "checkpoint.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(args=vars(args), run_name="run", global_step=step), path)
        return str(path)

    return write


@pytest.mark.parametrize("spelling", ["--total-timesteps", "--total_timesteps"])
def test_resume_takes_the_saved_options_as_defaults(checkpoint_file, spelling):
    path = checkpoint_file(argv=["--tau", "0.05", "--gamma", "0.9"])
    args, checkpoint = MODULES["a2c_entropy.py"].parse_args(["--resume", path, spelling, "5000", "--checkpoint_every", "500"])
    assert (args.tau, args.gamma, args.num_envs, args.resume) == (0.05, 0.9, 4, path)
    assert (args.total_timesteps, args.checkpoint_every, checkpoint["global_step"]) == (5000, 500, 1000)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-envs", "8"], "--num-envs cannot change in a resumed run"),
        (["--save-model", "--tau", "0.5"], "--save-model, --tau cannot change in a resumed run"),
    ],
)
def test_resume_refuses_what_it_cannot_do_in_one_line(checkpoint_file, argv, message):
    path = checkpoint_file()
    with pytest.raises(SystemExit) as stop:
        MODULES["a2c_entropy.py"].parse_args(["--resume", path, *argv])
    assert message in stop.value.code and stop.value.code.count("\n") == 0


def test_resume_rechecks_the_saved_options(checkpoint_file, capsys):
    with pytest.raises(SystemExit) as stop:
        MODULES["a2c_entropy.py"].parse_args(["--resume", checkpoint_file(), "--gamma", "2"])
    assert stop.value.code == 2 and "--gamma must be in [0, 1]" in tyro_error(capsys)


def test_resume_applies_the_command_line_before_checking(tmp_path, capsys):
    """A run saved with options this machine cannot run (CUDA graphs, on a CPU-only machine)
    resumes once the command line turns them off; otherwise tyro names the option."""
    args = vars(MODULES["soft_dqn.py"].parse_args(SMOKE["soft_dqn.py"])[0])
    torch.save(dict(args={**args, "compile": True, "cudagraphs": True}, run_name="run", global_step=400), tmp_path / "c.pt")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as stop:
            MODULES["soft_dqn.py"].parse_args(["--resume", str(tmp_path / "c.pt")])
        assert stop.value.code == 2 and "--cudagraphs needs --compile and CUDA" in tyro_error(capsys)
    resumed, _ = MODULES["soft_dqn.py"].parse_args(["--resume", str(tmp_path / "c.pt"), "--no-cudagraphs"])
    assert resumed.compile and not resumed.cudagraphs


@pytest.mark.parametrize(
    "script, path, message",
    [
        ("a2c_entropy.py", "no/such.pt", "--resume no/such.pt: not a checkpoint, or damaged ([Errno 2] No such file"),
        ("natural_pg_damped.py", "runs/run/checkpoint.pt", "not a checkpoint of this script"),
    ],
)
def test_resume_of_a_missing_or_foreign_file_is_one_line(checkpoint_file, monkeypatch, tmp_path, script, path, message):
    checkpoint_file("a2c_entropy.py")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        MODULES[script].parse_args(["--resume", path])
    assert message in stop.value.code and stop.value.code.count("\n") == 0


@pytest.mark.parametrize(
    "script, args, loss",
    [
        ("soft_dqn.py", [*SMOKE["soft_dqn.py"], "--learning-rate", "1e30"], "losses/td_loss"),
        ("a2c_entropy.py", [*SMOKE["a2c_entropy.py"], "--learning-rate", "1e30"], "losses/policy_loss"),
        ("pgql_equiv.py", [*SMOKE["pgql_equiv.py"], "--update", "ql", "--learning-rate", "1e30"], "losses/q_loss"),
        ("natural_pg_damped.py", [*SMOKE["natural_pg_damped.py"], "--value-lr", "1e30"], "losses/value_loss"),
        (
            "natural_pg_damped.py",
            [*SMOKE["natural_pg_damped.py"], "--policy-lr", "1e30", "--max-kl", "None"],
            "losses/damped_q_loss",
        ),
    ],
)
def test_non_finite_loss_stops_the_run_naming_step_and_loss(run_script, script, args, loss):
    proc = run_script(script, *args)
    assert proc.returncode != 0
    assert f"non-finite {loss}" in proc.stderr or f", {loss} (" in proc.stderr, proc.stderr
    assert "at global_step" in proc.stderr and ", update " in proc.stderr, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_save_model_then_evaluate(run_script, tmp_path, script):
    proc = run_script(script, *SMOKE[script], "--save-model", "--eval-episodes", "3", "--capture-video")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / script.replace(".py", ".cleanrl_model")).exists()
    evals = read_scalars(run_dir)["eval/episodic_return"]
    assert [step for step, _ in evals] == [0, 1, 2] and all(ret >= 0 for _, ret in evals)
    gifs = sorted(p.name for p in (tmp_path / "videos").rglob("*.gif"))
    assert "eval-game-0.gif" in gifs and "train-game-0.gif" in gifs


@pytest.mark.parametrize("script", ["a2c_entropy.py", "natural_pg_damped.py"])
def test_time_limit_truncation_runs_the_bootstrap_branch(monkeypatch, tmp_path, script):
    """The 108,000-frame limit is never reached in a smoke run: run the script with a 400-frame
    limit (100 agent steps), so most games end by truncation."""
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
    proc = run_in(tmp_path, script, *SMOKE[script])  # in this process, where the patch holds
    assert proc.returncode == 0, proc.stderr
    total = int(SMOKE[script][SMOKE[script].index("--total-timesteps") + 1])
    envs = int(SMOKE[script][SMOKE[script].index("--num-envs") + 1])
    games = envs * (total // envs // 100)  # 100 steps a game at most
    assert np.sum(truncations) >= 0.75 * games
    lengths = [length for _, length in read_scalars(only_run_dir(tmp_path))["charts/episodic_length"]]
    assert len(lengths) >= 0.75 * games and max(lengths) <= 100
    assert max(step for step, _ in read_scalars(only_run_dir(tmp_path))["losses/value_loss"]) == total


def test_the_progress_line_gives_no_eta_until_learning_runs(capsys, monkeypatch):
    """Before: `python soft_dqn.py --tau 0.1` said "ETA 2:03:55" during the 80k warm-up steps, then "ETA 16:41:09"
    once learning started. A line whose last 10 s include any warm-up step says when learning starts instead."""
    import time

    report = MODULES["soft_dqn.py"].report
    clock = iter([100.0, 109.0, 120.0, 130.0])
    monkeypatch.setattr(time, "time", lambda: next(clock))
    last = [90.0, 0]
    report(20_000, 1_000_000, [1.0, 3.0], last, learning_starts=80_000)  # warm-up, 2,000 SPS
    report(21_000, 1_000_000, [], last, learning_starts=80_000)  # 9 s later: no line
    report(80_100, 1_000_000, [1.0, 3.0], last, learning_starts=80_000)  # this interval still holds warm-up steps
    report(82_100, 1_000_000, [float(r) for r in range(30)], last, learning_starts=80_000)  # learning, 200 SPS
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "20,000/1,000,000 steps | 2,000 SPS | return 2.0 (last 20 games) | learning from step 80,000, then an ETA"
    assert out[1].endswith("| learning from step 80,000, then an ETA") and len(out) == 3
    assert out[2] == "82,100/1,000,000 steps | 200 SPS | return 19.5 (last 20 games) | ETA 1:16:30"
