"""The scripts share no module (a user copies one file), so helpers are repeated between
them. The repeated helpers must stay identical: then the tests written against one copy
(e.g. the environment tests in tests/test_soft_dqn_replay.py) cover every copy, and a fix in
one is a fix in all. `diff a2c_entropy.py pgql_equiv.py` is then only Section 6.3."""

import inspect

import pytest

import a2c_entropy
import natural_pg_damped
import pgql_equiv
import soft_dqn

# every script: the environment, argument parsing, progress line, videos, checkpoints
ENV_AND_CLI = ["ale_game_name", "make_env", "game_restarted", "parse_args", "Progress", "save_gif", "video_schedule"]
ENV_AND_CLI += ["resumed", "save_checkpoint", "restart_seed", "StopRequest"]  # long runs
# the A2C family: network, optimizer, the paper's A2C math, sampling, evaluation
A2C = [
    "layer_init",
    "ActorCritic",
    "RMSpropTF",
    "entropy_and_kl",
    "reward_bonus",
    "n_step_advantages",
    "a2c_loss",
    "sample_actions",
    "explained_variance",
    "evaluate",
]
# what natural_pg_damped.py (separate policy and value networks, no A2C loss) shares with A2C
NPG = ["layer_init", "entropy_and_kl", "reward_bonus", "n_step_advantages", "sample_actions", "explained_variance"]
PAIRS = [(soft_dqn, m, name) for m in (a2c_entropy, pgql_equiv, natural_pg_damped) for name in ENV_AND_CLI]
PAIRS += [(a2c_entropy, pgql_equiv, name) for name in A2C]
PAIRS += [(a2c_entropy, natural_pg_damped, name) for name in NPG]


@pytest.mark.parametrize("original, copy, name", PAIRS, ids=lambda x: getattr(x, "__name__", x))
def test_repeated_helper_is_identical(original, copy, name):
    assert inspect.getsource(getattr(copy, name)) == inspect.getsource(getattr(original, name)), (
        f"{copy.__name__}.{name} differs from {original.__name__}.{name}: change every copy"
    )
