"""The docs name only options that exist: every `--option` in README.md and docs/*.md is an
option of one of the four scripts (their `Args`) or of a tool under experiments/ or
benchmarks/. A renamed or removed option fails here until the docs follow. And every figure
docs/results.md shows redraws, with the command printed beside it, from the committed data alone
(as in a fresh clone), as does the README's plot example."""

import dataclasses
import importlib
import re
import shlex

import numpy as np
import pytest

from conftest import ROOT, SCRIPTS


def known_options() -> set[str]:
    known = {"--help", "--check", "--durations"}  # --help of every tool, `ruff format --check`, pytest's `--durations`
    # pip's, in benchmarks/RESULTS.md's instructions for carrying wheels to a GPU machine
    known |= {"--no-deps", "--only-binary", "--python-version", "--implementation", "--platform", "--no-index", "--target"}
    for script in SCRIPTS:
        for field in dataclasses.fields(importlib.import_module(script[: -len(".py")]).Args):
            for name in (field.name, field.name.replace("_", "-")):
                known |= {f"--{name}", f"--no-{name}"}
    for tool in [*ROOT.glob("experiments/*.py"), *ROOT.glob("benchmarks/*.py")]:
        known |= set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)", tool.read_text()))
    return known


def test_every_option_in_the_docs_exists():
    known = known_options()
    for page in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.md")]:
        named = set(re.findall(r"(?:^|[\s`(\[])(--[a-z][a-z0-9_-]*)", page.read_text(), flags=re.M))
        assert named <= known, f"{page.relative_to(ROOT)} names options no script or tool has: {sorted(named - known)}"


FIGURE = re.compile(r"!\[[^\]]*\]\(figures/([^)\s]+\.png)\)")


def figure_commands() -> list[tuple[str, str]]:
    """(figure, the command that draws it) for every figure docs/results.md shows: the plot.py or coupled.py
    line, in the last bash block before the figure, that writes it."""
    text = (ROOT / "docs" / "results.md").read_text()
    found = []
    for m in FIGURE.finditer(text):
        block = text[: m.start()].rsplit("```bash", 1)[-1]
        lines = [line.split("  #")[0].strip() for line in block.splitlines()]
        drawing = [c for c in lines if f"--out docs/figures/{m.group(1)}" in c or c.endswith("coupled.py --plot-only")]
        found.append((m.group(1), drawing[0] if drawing else ""))
    return found


def redraw(command: str, tmp_path, monkeypatch) -> list:
    """Run a docs command as a fresh clone would (no experiments/results/, the committed docs/data/ only), its figure
    drawn into tmp_path; return what plot.py collected (one (frames, returns, reached) per planned run)."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import coupled
    import plot

    argv = shlex.split(command)
    if argv[1].endswith("coupled.py"):
        monkeypatch.setattr(coupled, "FIGURE", tmp_path / "figure.png")
        coupled.main(argv[2:])
        return [[(None, np.ones(1), None)]]
    collected = []

    def collect(*args, **kwargs):
        collected.append(real(*args, **kwargs))
        return collected[-1]

    real = plot.collect
    monkeypatch.setattr(plot, "collect", collect)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path / "figure.png")
    assert (
        plot.main([*argv[2:], "--results", str(tmp_path / "results"), "--reps", "200", "--out", str(tmp_path / "f.png")]) == 0
    )
    return list(collected[0][0].values())


@pytest.mark.parametrize("figure, command", figure_commands(), ids=[f for f, _ in figure_commands()])
def test_every_figure_in_results_redraws_from_the_committed_data(figure, command, tmp_path, monkeypatch):
    assert (ROOT / "docs" / "figures" / figure).exists(), f"docs/results.md shows {figure}, which is not committed"
    assert command, f"docs/results.md prints no command that draws {figure} (plot.py --out docs/figures/{figure})"
    seeds = redraw(command, tmp_path, monkeypatch)
    missing = sum(1 for runs in seeds for _, returns, _ in runs if not len(returns))
    assert not missing, f"{figure}: {missing} of the runs `{command}` plans have no committed data in docs/data"
    assert (tmp_path / "f.png").exists() or (tmp_path / "figure.png").exists()


def test_the_readmes_plot_example_works_in_a_fresh_clone(tmp_path, monkeypatch):
    command = next(line for line in (ROOT / "README.md").read_text().splitlines() if "experiments/plot.py" in line)
    seeds = redraw(command.split("  #")[0], tmp_path, monkeypatch)
    assert all(len(returns) for runs in seeds for _, returns, _ in runs)
