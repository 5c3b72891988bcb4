"""The scripts share no module (a user copies one file), so code is repeated between them. The
repeated code must stay identical: then the tests written against one copy (e.g. the environment
tests in tests/test_env.py) cover every copy, and a fix in one is a fix in all. `diff
a2c_entropy.py pgql_equiv.py` is then only Section 6.3.

The scripts are minimal, and stay so: each holds a line budget (`wc -l` of the ruff-formatted
file), the copied plumbing block holds its own, and each reads top to bottom as the paper, with
the plumbing last."""

import inspect
import re

import pytest

from conftest import ROOT, SCRIPTS

import a2c_entropy
import natural_pg_damped
import pgql_equiv
import soft_dqn

MODULES = dict(zip(SCRIPTS, (soft_dqn, a2c_entropy, pgql_equiv, natural_pg_damped)))
MARK = "# identical in all four scripts: tests/test_copies.py"
BUDGET = {"soft_dqn.py": 700, "a2c_entropy.py": 580, "pgql_equiv.py": 720, "natural_pg_damped.py": 800}
BLOCK_BUDGET = 110


def shared_block(text: str) -> str:
    """The text from the marker line to `if __name__ == "__main__":`."""
    assert text.count(MARK) == 1, f"the marker line {MARK!r} must appear once"
    return text[text.index(MARK) : text.index('\nif __name__ == "__main__":')]


@pytest.mark.parametrize("script", SCRIPTS[1:])
def test_the_marked_block_is_identical_in_every_script(script):
    assert shared_block((ROOT / script).read_text()) == shared_block((ROOT / SCRIPTS[0]).read_text()), (
        f"{script}'s shared block differs from soft_dqn.py's: change every copy"
    )


def test_the_marked_block_holds_only_plumbing():
    """Nothing of the paper hides in the block a reader skips."""
    block = shared_block((ROOT / SCRIPTS[0]).read_text())
    for name in ("parse_args", "start_run", "save_checkpoint", "load_checkpoint", "stop_softly", "report"):
        assert f"\ndef {name}(" in block, name
    for paper in ("tau", "gamma", "logsumexp", "softmax"):
        assert paper not in block, paper


def lines(text: str) -> int:
    return len(text.splitlines())


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_and_its_plumbing_hold_their_line_budgets(script):
    text = (ROOT / script).read_text()
    assert lines(text) <= BUDGET[script], f"{script}: {lines(text)} lines, budget {BUDGET[script]}"
    assert lines(shared_block(text).rstrip()) <= BLOCK_BUDGET, f"{script}: plumbing block over {BLOCK_BUDGET} lines"
    assert "fmt: skip" not in text and "fmt: off" not in text, f"{script}: budgets are met by ruff's format"


def test_the_budget_test_counts_what_wc_counts(tmp_path):
    """A check that can fail: a script one line over its budget, or a block one line over, is refused."""
    text = (ROOT / "a2c_entropy.py").read_text()
    over = text + "\n" * (BUDGET["a2c_entropy.py"] - lines(text) + 1)
    assert lines(over) == BUDGET["a2c_entropy.py"] + 1
    padded = text.replace(MARK, MARK + "\n#" * (BLOCK_BUDGET - lines(shared_block(text).rstrip()) + 1))
    assert lines(shared_block(padded).rstrip()) == BLOCK_BUDGET + 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_reads_as_the_paper_with_the_plumbing_last(script):
    """Options, the paper's math, the network, the environment, the training loop, evaluation, then the plumbing."""
    text = (ROOT / script).read_text()
    order = ["\nclass Args", "\n# The paper's math", "\n# Environment", "\ndef main(", "\ndef evaluate(", "\n" + MARK]
    places = [text.index(marker) for marker in order]
    assert places == sorted(places), f"{script}: sections out of order"
    assert text.rstrip().endswith('if __name__ == "__main__":\n    main()')


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_help_names_exactly_the_options_a_resumed_run_may_change(script):
    module = MODULES[script]
    help_text = inspect.getsource(module.Args).split("resume: Optional[str] = None")[1].split('"""')[1]
    named = set(re.findall(r"--([a-z-]+)", help_text))
    options = {f.replace("_", "-") for f in module.Args.__dataclass_fields__}
    assert named == {o.replace("_", "-") for o in module.MAY_CHANGE} & options - {"resume"}


# The environment: Atari preprocessing and game accounting, the same in all four scripts
ENV = ["ale_game_name", "make_env", "game_restarted"]
# the A2C family: network, optimizer, the paper's A2C math, sampling, evaluation
A2C = ["layer_init", "ActorCritic", "RMSpropTF", "entropy_and_kl", "reward_bonus", "n_step_advantages", "a2c_loss"]
A2C += ["sample_actions", "explained_variance", "evaluate"]
# what natural_pg_damped.py (separate policy and value networks, no A2C loss) shares with A2C
NPG = ["layer_init", "entropy_and_kl", "reward_bonus", "n_step_advantages", "sample_actions", "explained_variance"]
PAIRS = [(pgql_equiv, name) for name in A2C + ENV] + [(natural_pg_damped, name) for name in NPG + ENV]
PAIRS += [(soft_dqn, name) for name in ENV]


@pytest.mark.parametrize("copy, name", PAIRS, ids=lambda x: getattr(x, "__name__", x))
def test_repeated_helper_is_identical(copy, name):
    assert inspect.getsource(getattr(copy, name)) == inspect.getsource(getattr(a2c_entropy, name)), (
        f"{copy.__name__}.{name} differs from a2c_entropy.{name}: change every copy"
    )
