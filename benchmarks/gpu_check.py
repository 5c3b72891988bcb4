"""One prepared check of every CUDA path of the four scripts, for a lent GPU machine.

    bash benchmarks/gpu_check.sh                  # on the GPU machine (installs .whl/ first), ~8 min on one H200
    python benchmarks/gpu_check.py --cpu-dry-run  # the steps on the CPU at toy budgets; CI: tests/test_gpu_check.py
    python benchmarks/gpu_check.py --scripts soft_dqn.py  # one script's steps only

Each step prints PASS or FAIL with its figures; the exit status is 1 if any failed.
1. run: each script eager on the device, with a checkpoint and `--save-model` evaluation: exit 0,
   prints "device: cuda", logs only finite numbers;
2. resume across devices: a CUDA run's checkpoint resumed on the CPU, and a CPU run's on CUDA;
3. CPU vs CUDA: the run of step 1 again on the CPU logs the same first losses (rtol 1e-3; TF32
   off through NVIDIA_TF32_OVERRIDE=0, so both sides are float32);
4. compiled: `--compile` (soft_dqn also `--cudagraphs`) runs and logs the eager run's first losses;
5. speed: a table of each script's SPS (eager, compiled) against the raw env at the same env count;
6. the tests that compare float logs on the GPU: tests/test_resume.py (resumed = uninterrupted, exactly).
The dry run keeps the script from rotting: steps 1, 2 (one direction) and 5 on the CPU, whose
"device" is the CPU; 3, 4 and 6 compare or test what CI's tests already cover on the CPU.
Figures and the wheel list: benchmarks/RESULTS.md, section GPU.
"""

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench  # benchmarks/bench.py: SPS between the first and last logged update, raw env speed, tables

ROOT = Path(__file__).resolve().parents[1]
FLOAT32 = {"NVIDIA_TF32_OVERRIDE": "0", "PYTHONUNBUFFERED": "1"}  # cuBLAS and cuDNN without TF32

# (arguments, the tag whose log times the run, environments): small runs that reach every code path
# (soft_dqn: updates and target copies; pgql: the equivalence check; npg: both solvers' machinery).
RUNS = {
    "soft_dqn.py": ("--num-envs 1 --total-timesteps {5n} --learning-starts {n} --buffer-size {5n} --train-frequency 1 "
                    "--target-network-frequency 500 --exploration-fraction 0.5", "losses/td_loss", 1),
    "a2c_entropy.py": ("--num-envs 16 --total-timesteps {16n} --log-interval 5", "losses/value_loss", 16),
    "pgql_equiv.py": ("--num-envs 16 --total-timesteps {16n} --log-interval 5 --update ql --equiv-check-every 5",
                      "losses/value_loss", 16),
    "natural_pg_damped.py": ("--num-envs 8 --num-steps 10 --total-timesteps {4n} --cg-iters 5 --diagnostic-every 5",
                             "npg/kl_old_new", 8),
}  # fmt: skip


def arguments(script: str, n: int) -> list[str]:
    """RUNS[script]'s arguments at budget unit n agent steps."""
    template = RUNS[script][0]
    for k in (16, 5, 4):
        template = template.replace(f"{{{k}n}}", str(k * n))
    return template.replace("{n}", str(n)).split()


def run(script: str, args: list[str], cwd: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """`python SCRIPT ARGS` in `cwd` (float32, no TF32): the process and its logged scalars, tag -> [(step, value, time)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **FLOAT32}
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    scalars = {}
    for run_dir in sorted({p.parent for p in (cwd / "runs").rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value, e.wall_time) for e in acc.Scalars(tag))
    return proc, scalars


def first_losses_differ(a: dict, b: dict, points: int = 3, rtol: float = 1e-3, atol: float = 1e-5) -> tuple[list, float]:
    """The `losses/` tags whose first `points` logged values differ between two runs' scalars beyond
    rtol/atol (or whose steps differ), and the largest relative difference seen."""
    bad, worst = [], 0.0
    for tag in sorted(t for t in a.keys() | b.keys() if t.startswith("losses/")):
        x, y = a.get(tag, [])[:points], b.get(tag, [])[:points]
        if not x or [s for s, *_ in x] != [s for s, *_ in y]:
            bad.append(tag)
            continue
        for (_, u, _), (_, v, _) in zip(x, y):
            worst = max(worst, abs(u - v) / max(abs(v), 1e-12))
            if abs(u - v) > atol + rtol * abs(v):
                bad.append(tag)
                break
    return bad, worst


class Report:
    def __init__(self):
        self.failed = []

    def __call__(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok


def checked(report: Report, name: str, proc: subprocess.CompletedProcess, scalars: dict, device: str) -> bool:
    """Step 1's verdict on one run: exit 0, the device line, finite logs."""
    if proc.returncode != 0:
        return report(name, False, f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    line = next((s for s in proc.stdout.splitlines() if s.startswith("device: ")), "no device line")
    nonfinite = sorted(tag for tag, values in scalars.items() if not all(math.isfinite(v) for _, v, _ in values))
    ok = line.startswith(f"device: {device}") and not nonfinite and bool(scalars)
    return report(name, ok, f"{line}; {sum(map(len, scalars.values()))} scalars, non-finite: {nonfinite or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="steps 1, 2 and 5 on the CPU at toy budgets")
    parser.add_argument("--n", type=int, default=None, help="budget unit in agent steps (default 1000; dry run 100)")
    parser.add_argument("--work", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--scripts", nargs="+", choices=list(RUNS), default=list(RUNS), help="which scripts (default: all)")
    opts = parser.parse_args()
    import torch

    dry = opts.cpu_dry_run
    n = opts.n or (100 if dry else 1000)
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no usable CUDA device (use --cpu-dry-run to try the steps on the CPU)", file=sys.stderr)
        return 2
    device, on, off = ("cpu" if dry else "cuda"), ["--cuda"], ["--no-cuda"]  # dry: --cuda finds no GPU, runs on the CPU
    gpu = "none (dry run)" if dry else torch.cuda.get_device_name()
    print(f"# benchmarks/gpu_check.py {' '.join(sys.argv[1:])}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPU cores, GPU {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    report, speed = Report(), []
    work = Path(opts.work or tempfile.mkdtemp(prefix="gpu_check_"))
    for script in opts.scripts:
        (_, tag, num_envs), args = RUNS[script], arguments(script, n)
        total = int(args[args.index("--total-timesteps") + 1])
        name, half = script.removesuffix(".py"), ["--checkpoint-every", str(total // 2)]
        started = time.time()

        # 1. eager on the device, checkpointing halfway, then --save-model and one game of evaluation per env
        proc, eager = run(script, [*args, *on, *half, "--save-model", "--eval-episodes", "1"], work / name / "eager")
        if not checked(report, f"{name}: eager on {device}, checkpoint, --save-model", proc, eager, device):
            continue
        speed.append((f"`{script}`", bench.steady_sps([(t, s) for s, _, t in eager[tag]]), num_envs))

        # 2. resume across devices: the device's halfway checkpoint on the CPU; a CPU one on the device
        for src, dst, first, then in (("device", "cpu", on, off), ("cpu", "device", off, on))[: 1 if dry else 2]:
            cwd = work / name / f"resume_{src}_to_{dst}"
            proc, _ = run(script, [*args, *first, "--total-timesteps", str(total // 2), *half], cwd)
            checkpoint = next((cwd / "runs").rglob("checkpoint.pt"), None) if proc.returncode == 0 else None
            if checkpoint is None:
                report(f"{name}: resume {src} -> {dst}", False, f"no checkpoint: {proc.stderr.strip()[-800:]}")
                continue
            proc, resumed = run(script, ["--resume", str(checkpoint), "--total-timesteps", str(total), *then], cwd)
            last = max((s for values in resumed.values() for s, *_ in values), default=0)
            ok = proc.returncode == 0 and last > total // 2
            report(f"{name}: resume {src} -> {dst}", ok, f"exit {proc.returncode}, logged up to step {last:,} of {total:,}"
                   + ("" if ok else f": {proc.stderr.strip()[-800:]}"))  # fmt: skip

        if not dry:
            # 3. the same run on the CPU
            proc, cpu = run(script, [*args, *off, *half], work / name / "cpu")
            bad, worst = first_losses_differ(cpu, eager)
            report(f"{name}: CPU vs CUDA, first 3 logged losses", proc.returncode == 0 and not bad,
                   f"max rel. difference {worst:.1e}; differing: {bad or 'none'}")  # fmt: skip

            # 4. compiled (and CUDA graphs for soft_dqn) on the device
            variants = [["--compile"]] + ([["--compile", "--cudagraphs"]] if script == "soft_dqn.py" else [])
            for extra in variants:
                label = " ".join(extra)
                proc, compiled = run(script, [*args, *on, *half, *extra], work / name / label.replace(" ", "_"))
                if checked(report, f"{name}: {label} on {device}", proc, compiled, device):
                    bad, worst = first_losses_differ(compiled, eager)
                    report(f"{name}: {label} vs eager, first 3 logged losses", not bad,
                           f"max rel. difference {worst:.1e}; differing: {bad or 'none'}")  # fmt: skip
                    speed.append((f"`{script} {label}`", bench.steady_sps([(t, s) for s, _, t in compiled[tag]]), num_envs))
        print(f"#   {script}: {time.time() - started:.0f} s", flush=True)

    # 5. speed against the raw env at the same env count (steady state: first to last logged update)
    raw = {e: bench.child(bench.RAW_ENV_CHILD.format(root=str(ROOT)), sys.executable, "BreakoutNoFrameskip-v4", 20 * n, e)
           for e in sorted({e for *_, e in speed})}  # fmt: skip
    print(f"\n| BreakoutNoFrameskip-v4, {device} (budget unit {n:,} steps) | SPS | raw env SPS (same envs) | ours/raw |")
    print("|---|---:|---:|---:|")
    for label, sps, envs in speed:
        print(f"| {label} ({envs} envs) | {sps:,.0f} | {raw[envs]['sps']:,.0f} | {sps / raw[envs]['sps']:.2f} |")
    print()

    # 6. the tests that compare float logs, on the GPU
    if not dry:
        tests = ["tests/test_resume.py"]  # (test_compile.py's comparison is step 4's)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *tests], cwd=ROOT, capture_output=True, text=True)
        report(" ".join(tests), proc.returncode == 0, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
        if proc.returncode != 0:
            print(proc.stdout[-4000:])
    print(f"{len(report.failed)} failed: {', '.join(report.failed)}" if report.failed else "all passed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
