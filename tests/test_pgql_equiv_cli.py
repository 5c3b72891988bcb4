"""pgql_equiv.py run as a user runs it: both updates (and raw soft-Q) on a tiny budget, the
logged equivalence check, determinism (bad input and --save-model: test_cli_common.py)."""

import math

import pytest

from conftest import SMOKE, only_run_dir, read_scalars, run_in, scalars_of_runs, without_sps

# 4 envs x 5 steps = 20 agent steps per update, 50 updates, losses logged and the equivalence
# checked every 10.
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
    """The scalars each run of RUNS logged (same seed)."""
    return scalars_of_runs(tmp_path_factory, "pgql_equiv.py", SMOKE["pgql_equiv.py"], RUNS)


@pytest.mark.parametrize("name", RUNS)
def test_smoke_run_logs_the_equivalence(smoke, name):
    scalars = smoke[name]
    assert TAGS <= set(scalars), TAGS - set(scalars)
    assert [step for step, _ in scalars["equiv/cosine_expected"]] == [200, 400, 600, 800, 1000]
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/q_loss"):
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    # the theorem on the training network's float32 gradients, on every checked batch
    assert all(c > 1 - 1e-6 for _, c in scalars["equiv/cosine_expected"]), scalars["equiv/cosine_expected"]
    assert all(e < 1e-3 for _, e in scalars["equiv/rel_error_expected"]), scalars["equiv/rel_error_expected"]
    assert all(-1 <= c <= 1 + 1e-9 for _, c in scalars["equiv/cosine_sampled"])


def test_the_update_reaches_the_optimizer(smoke):
    """Same seed, different losses: the runs part ways."""
    assert smoke["pg"]["losses/value_loss"] != smoke["ql"]["losses/value_loss"]
    assert smoke["ql"]["losses/value_loss"] != smoke["ql-unscaled"]["losses/value_loss"]
    assert smoke["ql"]["losses/value_loss"] != smoke["ql-kl"]["losses/value_loss"]


def test_same_seed_gives_identical_logs(smoke, tmp_path):
    proc = run_in(tmp_path, "pgql_equiv.py", *SMOKE["pgql_equiv.py"], *RUNS["ql"], fresh=True)
    assert proc.returncode == 0, proc.stderr
    assert without_sps(read_scalars(only_run_dir(tmp_path))) == without_sps(smoke["ql"])


def test_pg_update_trains_exactly_as_a2c_entropy_proper(smoke, tmp_path):
    """--update pg is a2c_entropy.py's proper estimator, and the equivalence check only reads: at the same
    seed every value both scripts log is bit-identical, so Fig. 3's PG runs are Fig. 1's proper runs
    at the same tau (docs/results.md reuses them)."""
    proc = run_in(tmp_path, "a2c_entropy.py", *SMOKE["a2c_entropy.py"], "--entropy-mode", "proper")
    assert proc.returncode == 0, proc.stderr
    a2c, pg = without_sps(read_scalars(only_run_dir(tmp_path))), without_sps(smoke["pg"])
    shared = set(a2c) & set(pg)
    assert {"charts/episodic_return", "losses/policy_loss", "losses/value_loss", "losses/entropy"} <= shared
    assert {tag: a2c[tag] for tag in shared} == {tag: pg[tag] for tag in shared}


def test_plain_a2c_with_tau_zero(run_script, tmp_path):
    proc = run_script("pgql_equiv.py", *SMOKE["pgql_equiv.py"][:-2], "--equiv-check-every", "0", "--tau", "0")
    assert proc.returncode == 0, proc.stderr
    scalars = read_scalars(only_run_dir(tmp_path))
    assert "losses/policy_loss" in scalars and not any(tag.startswith("equiv/") or tag == "losses/q_loss" for tag in scalars)
