"""The scripts share no module (a user copies one file), so helpers are repeated between
them. The repeated helpers must stay identical: then the tests written against one copy
(e.g. the environment tests in tests/test_env.py) cover every copy, and a fix in one is a
fix in all. `diff a2c_entropy.py pgql_equiv.py` is then only Section 6.3."""

import inspect

import pytest

from conftest import ROOT, SCRIPTS

import a2c_entropy
import natural_pg_damped
import pgql_equiv

MARK = "# identical in all four scripts: tests/test_copies.py"


def shared_block(script: str) -> str:
    """The text from the marker line to `if __name__ == "__main__":`."""
    text = (ROOT / script).read_text()
    assert text.count(MARK) == 1, f"{script}: the marker line {MARK!r} must appear once"
    return text[text.index(MARK) : text.index('\nif __name__ == "__main__":')]


@pytest.mark.parametrize("script", SCRIPTS[1:])
def test_the_marked_block_is_identical_in_every_script(script):
    assert shared_block(script) == shared_block(SCRIPTS[0]), (
        f"{script}'s shared block differs from soft_dqn.py's: change every copy"
    )


def test_the_marked_block_holds_only_plumbing():
    """Nothing of the paper hides in the block a reader skips."""
    block = shared_block(SCRIPTS[0])
    for name in ("make_env", "game_restarted", "parse_args", "start_run", "save_checkpoint", "StopRequest", "Progress"):
        assert f"\ndef {name}(" in block or f"\nclass {name}" in block, name
    for paper in ("tau", "gamma", "logsumexp", "softmax"):
        assert paper not in block, paper


# the A2C family: network, optimizer, the paper's A2C math, sampling, evaluation
A2C = ["layer_init", "ActorCritic", "RMSpropTF", "entropy_and_kl", "reward_bonus", "n_step_advantages", "a2c_loss"]
A2C += ["sample_actions", "explained_variance", "evaluate"]
# what natural_pg_damped.py (separate policy and value networks, no A2C loss) shares with A2C
NPG = ["layer_init", "entropy_and_kl", "reward_bonus", "n_step_advantages", "sample_actions", "explained_variance"]
PAIRS = [(pgql_equiv, name) for name in A2C] + [(natural_pg_damped, name) for name in NPG]


@pytest.mark.parametrize("copy, name", PAIRS, ids=lambda x: getattr(x, "__name__", x))
def test_repeated_helper_is_identical(copy, name):
    assert inspect.getsource(getattr(copy, name)) == inspect.getsource(getattr(a2c_entropy, name)), (
        f"{copy.__name__}.{name} differs from a2c_entropy.{name}: change every copy"
    )
