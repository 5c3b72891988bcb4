"""benchmarks/gpu_check.sh, the prepared check for a lent GPU, kept from rotting: its CPU dry run
goes through every step it can take without a GPU (for one script: the steps are the same code for
each), every script accepts the run the check gives it, and its verdicts can fail."""

import importlib
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import tyro

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_the_dry_run_passes_every_step_it_takes(tmp_path):
    script = "natural_pg_damped.py"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run", "--work", str(tmp_path), "--scripts", script],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("all passed")
    name = script.removesuffix(".py")
    assert f"PASS  {name}: eager on cpu, checkpoint, --save-model" in proc.stdout
    assert f"PASS  {name}: resume device -> cpu" in proc.stdout
    assert f"| `{script}` (" in proc.stdout  # its row of the speed table
    assert proc.stdout.count("PASS ") == 2


@pytest.mark.parametrize("script", gpu_check.RUNS)
def test_every_script_accepts_the_run_it_is_given(script):
    """Every option of the check's run exists, parses and describes a valid run (Args.__post_init__),
    and the script logs the tag that times it."""
    args = tyro.cli(importlib.import_module(script.removesuffix(".py")).Args, args=gpu_check.arguments(script, 1000))
    assert args.num_envs == gpu_check.RUNS[script][2]  # the env count of its row in the speed table
    smoke_tags = importlib.import_module(f"test_{script.removesuffix('.py')}_cli").TAGS  # what its smoke test sees logged
    assert gpu_check.RUNS[script][1] in smoke_tags


def test_without_cuda_the_gpu_run_stops_at_once_saying_why():
    if __import__("torch").cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no usable CUDA device" in proc.stderr


def scalars(*values, tag="losses/loss"):
    return {tag: [(100 * i, v, float(i)) for i, v in enumerate(values)]}


def test_the_comparison_sees_a_loss_that_moved():
    assert gpu_check.first_losses_differ(scalars(1.0, 2.0, 3.0), scalars(1.0, 2.0, 3.0)) == ([], 0.0)
    assert gpu_check.first_losses_differ(scalars(1.0, 2.0, 3.0005), scalars(1.0, 2.0, 3.0))[0] == []  # float rounding
    assert gpu_check.first_losses_differ(scalars(1.0, 2.01, 3.0), scalars(1.0, 2.0, 3.0))[0] == ["losses/loss"]
    assert gpu_check.first_losses_differ(
        scalars(1.0, 2.0),
        scalars(1.0, 2.0),
    ) == ([], 0.0)
    missing = gpu_check.first_losses_differ(scalars(1.0, 2.0, 3.0), scalars(1.0, 2.0, 3.0, tag="losses/other"))
    assert missing[0] == ["losses/loss", "losses/other"]
    shifted = {"losses/loss": [(s + 1, v, t) for s, v, t in scalars(1.0, 2.0, 3.0)["losses/loss"]]}
    assert gpu_check.first_losses_differ(shifted, scalars(1.0, 2.0, 3.0))[0] == ["losses/loss"]


def test_a_run_fails_on_its_exit_status_device_or_a_non_finite_log(capsys):
    ok = SimpleNamespace(returncode=0, stdout="device: cuda (NVIDIA H200; torch 2.11)\n", stderr="")
    report = gpu_check.Report()
    assert gpu_check.checked(report, "fine", ok, scalars(1.0, 2.0), "cuda")
    assert not gpu_check.checked(report, "on the CPU", ok, scalars(1.0), "cpu")
    assert not gpu_check.checked(report, "nan", ok, scalars(1.0, math.nan), "cuda")
    assert not gpu_check.checked(report, "crashed", SimpleNamespace(returncode=1, stdout="", stderr="boom"), {}, "cuda")
    assert report.failed == ["on the CPU", "nan", "crashed"]
    assert "FAIL  crashed: exit 1: boom" in capsys.readouterr().out
