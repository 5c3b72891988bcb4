"""The Nature CNN's passes with NCHW and with channels-last convolution weights (the input is
channels-last in both, as the scripts make it): median of 5 alternating repetitions, in ms.

    python benchmarks/channels_last.py      # ~1 min on 2 CPU cores; on CUDA when there is one
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from a2c_entropy import ActorCritic  # noqa: E402

PASSES = [("acting, batch 1 (soft_dqn)", 1, False), ("acting, batch 16 (A2C)", 16, False),
          ("forward + backward, batch 32 (soft_dqn update)", 32, True),
          ("forward + backward, batch 80 (A2C update)", 80, True)]  # fmt: skip


def ms_per_pass(model: torch.nn.Module, batch: int, backward: bool, device: torch.device, seconds: float = 1.0) -> float:
    x = torch.randint(0, 255, (batch, 4, 84, 84), dtype=torch.uint8, device=device)

    def one():
        with torch.set_grad_enabled(backward):
            logits, value = model(x)
            if backward:
                (logits.sum() + value.sum()).backward()

    for _ in range(3):
        one()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one()
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


if __name__ == "__main__":
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = {"NCHW weights": [], "channels-last weights": []}
    for _ in range(5):
        for layout in times:
            model = ActorCritic(4).to(device)  # channels-last, as the scripts build it
            if layout == "NCHW weights":
                model = model.to(memory_format=torch.contiguous_format)
            times[layout].append([ms_per_pass(model, b, bw, device) for _, b, bw in PASSES])
    print(f"# {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| pass | {' | '.join(times)} |\n|---|---:|---:|")
    for i, (name, *_) in enumerate(PASSES):
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[i] for r in rows):.2f} ms" for rows in times.values()) + " |")
