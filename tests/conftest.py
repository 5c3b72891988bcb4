"""Shared test helpers: import the top-level scripts as modules, run them as a user does,
and read back what they logged."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_in(cwd: Path, script: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS...` in `cwd` (runs/ and videos/ land there), as a user does."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_script(tmp_path):
    """run_in a fresh directory: run_script(script, *args, env=..., timeout=...)."""

    def run(script: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_in(tmp_path, script, *args, env=env, timeout=timeout)

    return run


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the TensorBoard event file(s) in `run_dir`: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_run_dir(cwd: Path) -> Path:
    """The single `runs/{run_name}` directory a script wrote under `cwd`."""
    dirs = sorted({p.parent for p in (cwd / "runs").rglob("events.out.tfevents.*")})  # a resumed run adds event files
    assert len(dirs) == 1, dirs
    return dirs[0]


def scalars_of_runs(
    tmp_path_factory, script: str, common: list[str], runs: dict[str, list[str]], env: dict | None = None, stderrs: dict | None = None
) -> dict[str, dict]:
    """Run `script` once per entry of `runs` (the `common` arguments, then the entry's), each in
    its own directory, with `env` added to the environment; return each run's logged scalars by
    name (and put each run's stderr into `stderrs` when one is given)."""
    logs = {}
    for name, extra in runs.items():
        cwd = tmp_path_factory.mktemp(name)
        proc = run_in(cwd, script, *common, *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        logs[name] = read_scalars(only_run_dir(cwd))
        if stderrs is not None:
            stderrs[name] = proc.stderr
    return logs


def without_sps(scalars: dict) -> dict:
    """Logged scalars minus the wall-clock-dependent `charts/SPS`: what a fixed seed must repeat."""
    return {tag: values for tag, values in scalars.items() if tag != "charts/SPS"}
