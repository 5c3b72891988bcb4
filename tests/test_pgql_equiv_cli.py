"""pgql_equiv.py run as a user runs it: both updates (and raw soft-Q) on a tiny budget, the
logged equivalence check, determinism, bad input."""

import math

import pytest

from conftest import only_run_dir, read_scalars, run_in

# 4 envs x 5 steps = 20 agent steps per update, 100 updates, losses logged every 25 and the
# equivalence checked every 20 updates (~6 s).
SMOKE = "--num-envs 4 --num-steps 5 --total-timesteps 2000 --log-interval 25 --equiv-check-every 20".split()
TAGS = {
    "charts/episodic_return",
    "charts/SPS",
    "charts/learning_rate",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/q_loss",
    "losses/entropy",
    "losses/kl",
    "losses/explained_variance",
    "equiv/cosine_expected",
    "equiv/rel_error_expected",
    "equiv/cosine_sampled",
}
RUNS = {
    "pg": ["--update", "pg"],
    "ql": ["--update", "ql"],
    "ql-unscaled": ["--update", "ql", "--no-grad-scaling"],
    "ql-kl": ["--update", "ql", "--regularizer", "kl"],
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, dict]:
    logs = {}
    for name, extra in RUNS.items():
        cwd = tmp_path_factory.mktemp(name)
        proc = run_in(cwd, "pgql_equiv.py", *SMOKE, *extra)
        assert proc.returncode == 0, proc.stderr
        logs[name] = read_scalars(only_run_dir(cwd))
    return logs


@pytest.mark.parametrize("name", RUNS)
def test_smoke_run_logs_the_equivalence(smoke, name):
    scalars = smoke[name]
    assert TAGS <= set(scalars), TAGS - set(scalars)
    assert [step for step, _ in scalars["equiv/cosine_expected"]] == [400, 800, 1200, 1600, 2000]
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/q_loss"):
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    # the theorem on the training network's float32 gradients, on every checked batch
    assert all(c > 1 - 1e-6 for _, c in scalars["equiv/cosine_expected"]), scalars["equiv/cosine_expected"]
    assert all(e < 1e-3 for _, e in scalars["equiv/rel_error_expected"]), scalars["equiv/rel_error_expected"]
    assert all(-1 <= c <= 1 + 1e-9 for _, c in scalars["equiv/cosine_sampled"])


def without_sps(scalars: dict) -> dict:
    return {tag: values for tag, values in scalars.items() if tag != "charts/SPS"}


def test_the_update_reaches_the_optimizer(smoke):
    """Same seed, different losses: the runs part ways."""
    assert smoke["pg"]["losses/value_loss"] != smoke["ql"]["losses/value_loss"]
    assert smoke["ql"]["losses/value_loss"] != smoke["ql-unscaled"]["losses/value_loss"]
    assert smoke["ql"]["losses/value_loss"] != smoke["ql-kl"]["losses/value_loss"]


def test_same_seed_gives_identical_logs(smoke, tmp_path):
    proc = run_in(tmp_path, "pgql_equiv.py", *SMOKE, *RUNS["ql"])
    assert proc.returncode == 0, proc.stderr
    assert without_sps(read_scalars(only_run_dir(tmp_path))) == without_sps(smoke["ql"])


def test_plain_a2c_with_tau_zero(run_script, tmp_path):
    proc = run_script("pgql_equiv.py", *SMOKE[:-2], "--equiv-check-every", "0", "--tau", "0")
    assert proc.returncode == 0, proc.stderr
    scalars = read_scalars(only_run_dir(tmp_path))
    assert "losses/policy_loss" in scalars and not any(tag.startswith("equiv/") or tag == "losses/q_loss" for tag in scalars)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--update", "ql", "--tau", "0"], "--tau 0 has no soft Q-function"),
        (["--tau", "0"], "for plain A2C pass --equiv-check-every 0"),
        (["--tau", "-1"], "--tau must be a finite number >= 0"),
        (["--equiv-check-every", "-1"], "--equiv-check-every must be >= 0"),
        (["--update", "sarsa"], "invalid choice 'sarsa' for argument '--update'"),
        (["--num-steps", "0"], "--num-steps must be >= 1"),
        (["--env-id", "NoSuchGame-v4"], "unknown game 'NoSuchGame-v4'"),
    ],
)
def test_bad_input_one_line_nonzero_exit(run_script, tmp_path, args, message):
    proc = run_script("pgql_equiv.py", *args)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_non_finite_loss_stops_the_run_naming_step_and_loss(run_script):
    proc = run_script("pgql_equiv.py", *SMOKE, "--update", "ql", "--learning-rate", "1e30")
    assert proc.returncode != 0
    assert "non-finite losses/" in proc.stderr and "at global_step" in proc.stderr, proc.stderr
