"""How far does a subsampled Fisher-vector product move the CG natural step, and what does it save?
Prints a markdown table (the one in benchmarks/RESULTS.md).

    python benchmarks/npg_fvp_fraction.py                        # ~3 min on 2 CPU cores
    python benchmarks/npg_fvp_fraction.py --fractions 0.1 0.5 --batches 5

natural_pg_damped.py's `--fvp-fraction f` estimates the Fisher of CG's products on a random
fraction f of the batch (TRPO's subsampling) and the gradient on all of it. For each of
`--batches` batches (16 envs x 20 steps of Breakout from the initial networks, seeds 0, 1, ...)
and `--draws` samples per fraction, as the script does it (10 CG iterations, lambda 0.1,
empirical Fisher): the cosine of the sampled step with the full-batch step, in parameter space
and in the full batch's Fisher metric, their length ratio, and the wall time of the solve
(including the sample's own reverse-mode pass).
"""

import argparse
import math
import statistics
import sys
import time

import numpy as np
import torch

from npg_damping_sweep import collect_batch, npg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--tau", type=float, default=0.01)
    args = parser.parse_args()

    rows = {f: dict(cos=[], fisher=[], ratio=[], seconds=[]) for f in [1.0, *args.fractions]}
    for seed in range(args.batches):
        b = collect_batch(args.env_id, 16, 20, args.tau, seed)
        actions, logits, jv, jtu, policy = b["actions"], b["logits_old"], b["jv"], b["jtu"], b["policy"]
        reg_advantages = npg.regularized_advantages(b["advantages"], logits, actions, args.tau)
        gradient = npg.policy_gradient(jtu, logits, actions, reg_advantages)
        weigh = npg.logit_fisher(logits.double(), actions, "empirical")
        reference = None
        for fraction in rows:
            for draw in range(1 if fraction == 1.0 else args.draws):
                start = time.perf_counter()
                size = math.ceil(fraction * len(actions))
                sample = torch.from_numpy(np.sort(np.random.default_rng([seed, draw]).permutation(len(actions))[:size]))
                jv_f, jtu_f = npg.policy_jacobian(policy, b["obs"][sample])[2:] if size < len(actions) else (jv, jtu)
                fvp = npg.fisher_vector_product(jv_f, jtu_f, logits[sample], actions[sample], "empirical", 0.1)
                step, _ = npg.conjugate_gradient(fvp, gradient, 10)
                rows[fraction]["seconds"].append(time.perf_counter() - start)
                reference = step.double() if fraction == 1.0 else reference
                s = step.double()
                rows[fraction]["cos"].append((s @ reference / (s.norm() * reference.norm())).item())
                rows[fraction]["fisher"].append(
                    npg.fisher_cosine(jv(s.float()).double(), jv(reference.float()).double(), weigh).item()
                )
                rows[fraction]["ratio"].append((s.norm() / reference.norm()).item())
        print(f"batch {seed + 1} of {args.batches} done", file=sys.stderr, flush=True)

    print(
        f"{args.env_id}, {args.batches} batches of 320 from the initial networks x {args.draws} samples; median [min, max]\n"
    )
    print("| --fvp-fraction | cosine with the full-batch step | Fisher cosine | length ratio | CG solve (s) |")
    print("|---:|---:|---:|---:|---:|")
    for fraction, r in rows.items():
        cells = [f"{statistics.median(r[k]):.3f} [{min(r[k]):.3f}, {max(r[k]):.3f}]" for k in ("cos", "fisher", "ratio")]
        print(f"| {fraction:g} | " + " | ".join(cells) + f" | {statistics.median(r['seconds']):.2f} |", flush=True)


if __name__ == "__main__":
    main()
