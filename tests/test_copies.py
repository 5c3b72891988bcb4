"""The scripts share no module (a user copies one file), so helpers are repeated between
them. The repeated helpers must stay identical: then the environment tests written against
soft_dqn.py (tests/test_soft_dqn_replay.py) cover every copy, and a fix in one is a fix in all."""

import inspect

import pytest

import a2c_entropy
import soft_dqn

SHARED = ["ale_game_name", "make_env", "game_restarted", "parse_args", "Progress", "save_gif", "video_schedule"]


@pytest.mark.parametrize("module", [a2c_entropy], ids=lambda m: m.__name__)
@pytest.mark.parametrize("name", SHARED)
def test_repeated_helper_is_identical_to_soft_dqns(module, name):
    assert inspect.getsource(getattr(module, name)) == inspect.getsource(getattr(soft_dqn, name)), (
        f"{module.__name__}.{name} differs from soft_dqn.{name}: change every copy"
    )
