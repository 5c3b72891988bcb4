"""a2c_entropy.py run as a user runs it: both modes x both regularizers on a tiny budget, the
logged tags and learning-rate schedule, that the mode reaches the update, determinism (bad
input, --save-model and the time-limit bootstrap: test_cli_common.py)."""

import math

import numpy as np
import pytest

from conftest import SMOKE, only_run_dir, read_scalars, run_in, scalars_of_runs, without_sps

# 4 envs x 5 steps = 20 agent steps per update, 50 updates, losses logged every 10.
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
RUNS = {
    "proper-entropy": ["--entropy-mode", "proper", "--regularizer", "entropy"],
    "proper-kl": ["--entropy-mode", "proper", "--regularizer", "kl"],
    "naive-entropy": ["--entropy-mode", "naive", "--regularizer", "entropy"],
    "naive-kl": ["--entropy-mode", "naive", "--regularizer", "kl"],
    "proper-tau0": ["--entropy-mode", "proper", "--tau", "0"],
    "naive-tau0": ["--entropy-mode", "naive", "--tau", "0"],
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, dict]:
    """The scalars each run of RUNS logged (same seed)."""
    return scalars_of_runs(tmp_path_factory, "a2c_entropy.py", SMOKE["a2c_entropy.py"], RUNS)


@pytest.mark.parametrize("name", RUNS)
def test_smoke_run_logs_finite_losses(smoke, name):
    scalars = smoke[name]
    assert TAGS <= set(scalars), TAGS - set(scalars)
    assert [step for step, _ in scalars["losses/value_loss"]] == [200, 400, 600, 800, 1000]
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/kl"):
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    for (_, h), (_, kl) in zip(scalars["losses/entropy"], scalars["losses/kl"]):
        assert 0 < h <= math.log(4) + 1e-6 and kl == pytest.approx(math.log(4) - h, abs=1e-5)
    # linear decay from 7e-4, set before update i as 7e-4 * (1 - (i - 1) / 50)
    lrs = [lr for _, lr in scalars["charts/learning_rate"]]
    assert lrs == pytest.approx([7e-4 * (1 - (i - 1) / 50) for i in (10, 20, 30, 40, 50)])
    # real games (all 5 lives): a random Breakout game lasts far longer than one life
    assert scalars["charts/episodic_length"] and all(length > 100 for _, length in scalars["charts/episodic_length"])


def test_the_mode_reaches_the_update(smoke):
    """Same seed everywhere. With tau = 0 there is no bonus, so the two modes train
    identically; the naive mode's gradient does not depend on --regularizer (-tau H and
    +tau KL differ by a constant); with tau > 0 the proper mode's value targets differ."""
    assert without_sps(smoke["proper-tau0"]) == without_sps(smoke["naive-tau0"])
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "charts/episodic_return"):
        np.testing.assert_allclose(
            [v for _, v in smoke["naive-entropy"][tag]], [v for _, v in smoke["naive-kl"][tag]], rtol=1e-4, err_msg=tag
        )
    assert smoke["proper-entropy"]["losses/value_loss"] != smoke["naive-entropy"]["losses/value_loss"]
    assert smoke["proper-kl"]["losses/value_loss"] != smoke["proper-entropy"]["losses/value_loss"]


def test_same_seed_gives_identical_logs(smoke, tmp_path):
    proc = run_in(tmp_path, "a2c_entropy.py", *SMOKE["a2c_entropy.py"], *RUNS["proper-kl"], fresh=True)
    assert proc.returncode == 0, proc.stderr
    assert without_sps(read_scalars(only_run_dir(tmp_path))) == without_sps(smoke["proper-kl"])
