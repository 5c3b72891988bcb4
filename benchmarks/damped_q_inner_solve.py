"""How close does damped-q's inner solve come to the step Section 5 says it approximates, and does it matter?
Prints markdown tables (the ones in docs/natural_pg_damped.md).

    python benchmarks/damped_q_inner_solve.py --checkpoints init RUN_DIR/checkpoint.pt   # ~2.5 min per batch, 2 cores

Section 5's equivalence is about the damped objective's *exact* minimizer; `--solver damped-q` approximates it with
--policy-epochs passes of Adam. For fixed batches (16 envs x 20 steps, collected by the checkpoint's policy after
--warmup steps of play, as natural_pg_damped.py's loop would collect them), this compares, from the same theta_old:

- the natural step s = (eps/tau) (F + lambda I)^-1 Psi^T A / B by CG: 10 iterations (`--solver npg`) and
  --reference-cg (the reference every other row is compared with);
- damped-q's Adam on 1/2 mean (Q_theta - Qhat^eps)^2 + tau^2 lambda/2 ||theta - theta_old||^2: the script's own
  `damped_q_step` (fresh Adam, 4 minibatches an epoch), without the trust region, for each --policy-lrs and --epochs;
- toward the damped objective's minimizer by Gauss-Newton (at eps 0.1 it does not converge: the tables say how far):
  each iteration solves (F_k + lambda I) d = -grad / tau^2
  at the current theta by --reference-cg iterations of CG (F_k the empirical Fisher there), with step halving. Its
  first iteration is the natural step (eq. 78); the later ones are what the nonlinearity adds.

Columns: the Fisher cosine with the reference step (empirical Fisher at theta_old, the run's `npg/cosine_step_fisher`),
the Euclidean length ratio (`npg/step_norm_ratio`), the mean KL(pi_old || pi_new) of the full step, the share of the
damped objective's reduction reached (100% = the Gauss-Newton minimizer), and, after --max-kl's trust region (as the
run applies it), the first-order gain g . step of the entropy-regularized objective (g = Psi^T A / B), relative to
the natural step's under the same trust region. Seconds: the step's computation on this machine.
"""

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import natural_pg_damped as npg  # noqa: E402


def load_networks(checkpoint: str, env_id: str, seed: int):
    """The policy and V of a natural_pg_damped.py checkpoint, or fresh ones (`init`, the script's initialization)."""
    envs = npg.make_env(env_id, 1)
    actions = envs.single_action_space.n
    envs.close()
    torch.manual_seed(seed)
    policy, value = npg.NatureCNN(actions, head_std=0.01), npg.NatureCNN(1, head_std=1.0)
    if checkpoint != "init":
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        policy.load_state_dict(state["policy"])
        value.load_state_dict(state["value"])
        return policy, value, state["global_step"], state["args"]
    return policy, value, 0, None


def collect_batches(policy, value, env_id, count, warmup, seed, a) -> list[npg.Batch]:
    """`count` consecutive rollouts of a.num_envs x a.num_steps after `warmup` steps per env, with the policy held fixed,
    turned into the Batch the script's policy step takes (advantages, A_t and the damped targets as in its loop)."""
    T, N = a.num_steps, a.num_envs
    envs, generator = npg.make_env(env_id, N), torch.Generator().manual_seed(seed)
    obs, _ = envs.reset(seed=seed)
    for _ in range(warmup):
        with torch.no_grad():
            obs = envs.step(npg.sample_actions(policy(torch.from_numpy(obs)), generator).numpy())[0]
    batches = []
    for _ in range(count):
        rollout = dict(obs=[], actions=[], rewards=[], terminated=[], truncated=[], cut_values=[])
        for _ in range(T):
            rollout["obs"].append(torch.from_numpy(obs))
            with torch.no_grad():
                rollout["actions"].append(npg.sample_actions(policy(rollout["obs"][-1]), generator))
            obs, reward, terminated, truncated, info = envs.step(rollout["actions"][-1].numpy())
            cut_values = np.zeros(N, dtype=np.float32)
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):
                with torch.no_grad():
                    cut_values[cut] = value(torch.from_numpy(info["final_obs"][cut])).squeeze(-1).numpy()
            for key, x in zip(
                ("rewards", "terminated", "truncated", "cut_values"),
                (np.clip(reward, -1, 1), terminated, truncated, cut_values),
            ):
                rollout[key].append(torch.as_tensor(x))
        b_obs, b_actions = torch.stack(rollout["obs"]).flatten(0, 1), torch.cat(rollout["actions"])
        with torch.no_grad():
            values, next_value = value(b_obs).squeeze(-1), value(torch.from_numpy(obs)).squeeze(-1)
        theta_old, logits_old, jv, jtu = npg.policy_jacobian(policy, b_obs)
        bonuses = npg.reward_bonus(logits_old.view(T, N, -1), a.tau, a.regularizer)
        rewards, terminated, truncated, cut_values = (
            torch.stack(rollout[k]) for k in ("rewards", "terminated", "truncated", "cut_values")
        )
        advantages, _ = npg.n_step_advantages(
            rewards.float(), bonuses, values.view(T, N), next_value, terminated, truncated, cut_values, a.gamma, "proper"
        )
        advantages = advantages.flatten()
        reg_advantages = npg.regularized_advantages(advantages, logits_old, b_actions, a.tau)
        targets = npg.damped_q_target(values, logits_old, b_actions, advantages, a.tau, a.eps)
        fvp = npg.fisher_vector_product(jv, jtu, logits_old, b_actions, "empirical", a.cg_damping)
        batches.append(npg.Batch(b_obs, b_actions, values, theta_old, logits_old, jv, jtu, fvp, reg_advantages, targets))
    envs.close()
    return batches


def damped_loss(policy, b: npg.Batch, a) -> float:
    """The damped objective damped-q minimizes (eq. 77 plus the proximal term), at the policy's current parameters."""
    with torch.no_grad():
        params_old = list(b.theta_old.split([p.numel() for p in policy.parameters()]))
        params = [p.flatten() for p in policy.parameters()]
        loss = npg.damped_q_loss(policy(b.obs), b.values_old, b.actions, b.targets, a.tau)
        return (loss + npg.proximal_term(params, params_old, a.tau, a.cg_damping)).item()


def gauss_newton(policy, b: npg.Batch, a, read_off: list[int], cg_iters: int) -> tuple[dict, float]:
    """Gauss-Newton on the damped objective from theta_old: ({k: (theta_k - theta_old, seconds so far)} for k in
    `read_off`, the gradient's norm at the last iterate over its norm at theta_old). Divided by tau^2 the objective is
    1/2 mean r_t^2 + lambda/2 ||w||^2 (r = `npg_residual`, eq. 78, w = theta - theta_old): gradient
    Psi_k^T r / B + lambda w, Gauss-Newton matrix Psi_k^T Psi_k / B + lambda I, each step halved until the loss falls."""
    start, steps, w, norms = time.perf_counter(), {}, torch.zeros_like(b.theta_old), []
    for k in range(1, max(read_off) + 2):
        npg.set_parameters(policy, b.theta_old + w)
        _, logits, jv, jtu = npg.policy_jacobian(policy, b.obs)
        residual = npg.npg_residual(logits, b.logits_old, b.actions, b.reg_advantages, a.tau, a.eps)
        gradient = npg.policy_gradient(jtu, logits, b.actions, residual) + a.cg_damping * w
        norms.append(gradient.norm().item())
        if k > max(read_off):
            break
        matvec = npg.fisher_vector_product(jv, jtu, logits, b.actions, "empirical", a.cg_damping)
        direction, _ = npg.conjugate_gradient(matvec, -gradient, cg_iters)
        before, size = damped_loss(policy, b, a), 1.0
        while size > 1e-3:
            npg.set_parameters(policy, b.theta_old + w + size * direction)
            if damped_loss(policy, b, a) <= before:
                break
            size /= 2
        w = w + size * direction if size > 1e-3 else w
        if k in read_off:
            steps[k] = (w.clone(), time.perf_counter() - start)
    return steps, norms[-1] / norms[0]


def adam_fit(policy, b: npg.Batch, a, lr: float, epochs: int, seed: int) -> tuple[torch.Tensor, float]:
    """(theta - theta_old, seconds) of the script's own `damped_q_step` from theta_old at `lr` for `epochs` epochs, with
    no trust region and no comparison (the rows measure those): a fresh Adam, minibatches shuffled from `seed`."""
    npg.set_parameters(policy, b.theta_old)
    start, args = time.perf_counter(), dataclasses.replace(a, policy_lr=lr, policy_epochs=epochs, max_kl=None)
    npg.damped_q_step(policy, policy, b._replace(jv=None), args, torch.Generator().manual_seed(seed))
    return torch.cat([p.detach().flatten() for p in policy.parameters()]) - b.theta_old, time.perf_counter() - start


def measure(policy, b: npg.Batch, a, step, reference, gradient) -> dict:
    """One row's numbers for `step` (theta - theta_old) against the reference natural step. `loss` (the damped objective
    at theta_old + step) and `gain` (g . f step, f the largest fraction of the step whose mean KL is within --max-kl,
    found by bisection on the measured KL) are made relative by the caller."""
    weigh = npg.logit_fisher(b.logits_old.double(), b.actions, "empirical")
    cosine = npg.fisher_cosine(b.jv(step).double(), b.jv(reference).double(), weigh).item()

    def kl_of(fraction: float) -> float:
        npg.set_parameters(policy, b.theta_old + fraction * step)
        with torch.no_grad():
            return npg.mean_kl(b.logits_old, policy(b.obs)).item()

    kl, fraction = kl_of(1.0), 1.0
    if a.max_kl is not None and kl > a.max_kl:
        low, high = 0.0, 1.0
        for _ in range(20):
            middle = (low + high) / 2
            low, high = (middle, high) if kl_of(middle) <= a.max_kl else (low, middle)
        fraction = low
    npg.set_parameters(policy, b.theta_old + step)
    return dict(
        cosine=cosine,
        norm_ratio=(step.double().norm() / reference.double().norm()).item(),
        kl=kl,
        loss=damped_loss(policy, b, a),
        gain=fraction * gradient.double().dot(step.double()).item(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", nargs="+", default=["init"], help="natural_pg_damped.py checkpoints, or `init`")
    parser.add_argument("--env-id", default="QbertNoFrameskip-v4", help="for `init` (a checkpoint names its own)")
    parser.add_argument("--batches", type=int, default=2, help="consecutive rollouts per checkpoint")
    parser.add_argument("--warmup", type=int, default=200, help="steps per env played before the first rollout")
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--policy-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--reference-cg", type=int, default=50, help="CG iterations of the reference and Gauss-Newton solves")
    parser.add_argument("--gauss-newton", type=int, nargs="+", default=[1, 3, 10], help="Gauss-Newton iterations read off")
    parser.add_argument("--eps", type=float, help="the damping eps of the target (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()

    print(
        f"# {' '.join(sys.argv)}\n# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    for checkpoint in opts.checkpoints:
        policy, value, step_reached, saved = load_networks(checkpoint, opts.env_id, opts.seed)
        a = (
            npg.Args(**{k: v for k, v in (saved or {}).items() if k in npg.Args.__dataclass_fields__})
            if saved
            else npg.Args(env_id=opts.env_id)
        )
        a.eps = opts.eps or a.eps
        rows: dict[str, list[dict]] = {}  # step name -> its numbers on each batch
        residuals = []  # the reference CG's relative residual on each batch
        gradients_left = []  # the damped objective's gradient norm after Gauss-Newton, relative to theta_old's
        batches = collect_batches(policy, value, a.env_id, opts.batches, opts.warmup, opts.seed, a)
        for b in batches:
            gradient = npg.policy_gradient(b.jtu, b.logits_old, b.actions, b.reg_advantages)
            start = time.perf_counter()
            cg10, _ = npg.conjugate_gradient(b.fvp, gradient, a.cg_iters)
            seconds_cg10 = time.perf_counter() - start
            reference, residual = npg.conjugate_gradient(b.fvp, gradient, opts.reference_cg)
            reference, cg10 = (a.eps / a.tau) * reference, (a.eps / a.tau) * cg10
            candidates = {f"natural step, CG {a.cg_iters} (npg)": (cg10, seconds_cg10)}
            candidates[f"natural step, CG {opts.reference_cg} (the reference)"] = (reference, math.nan)
            residuals.append(residual)
            for lr in opts.policy_lrs:
                for epochs in opts.epochs:
                    candidates[f"damped-q: Adam lr {lr:g}, {epochs} epochs"] = adam_fit(policy, b, a, lr, epochs, opts.seed)
            newton, gradient_left = gauss_newton(policy, b, a, opts.gauss_newton, opts.reference_cg)
            for k, result in newton.items():
                candidates[f"damped objective: Gauss-Newton, {k} iteration{'s' * (k > 1)}"] = result
            gradients_left.append(gradient_left)
            npg.set_parameters(policy, b.theta_old)
            loss_old = damped_loss(policy, b, a)
            measured = {name: measure(policy, b, a, step, reference, gradient) for name, (step, _) in candidates.items()}
            lowest, natural_gain = min(row["loss"] for row in measured.values()), measured[list(candidates)[1]]["gain"]
            for name, row in measured.items():
                row["loss"] = (loss_old - row["loss"]) / (loss_old - lowest)  # the share of the largest reduction
                row["gain"] /= natural_gain
                rows.setdefault(name, []).append(row | dict(seconds=candidates[name][1]))
            print(f"  batch done: {checkpoint}", file=sys.stderr, flush=True)
        entropy = npg.entropy_and_kl(batches[0].logits_old)[0].mean().item()
        print(
            f"\n{checkpoint} ({a.env_id}, {step_reached:,} agent steps, policy entropy {entropy:.2f}; eps {a.eps:g}, "
            f"tau {a.tau:g}, lambda {a.cg_damping:g}, max-kl {a.max_kl}): median over {opts.batches} batch(es) "
            f"of {len(batches[0].actions)}; the reference's CG residual {max(residuals):.0e} at most; after "
            f"{max(opts.gauss_newton)} Gauss-Newton iterations the gradient is {max(gradients_left):.1e} of theta_old's\n"
        )
        print(
            "| step | Fisher cosine | length ratio | KL of the full step | damped objective reduced (% of the most) "
            "| gain within --max-kl | s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, values in rows.items():
            med = {k: statistics.median(v[k] for v in values) for k in values[0]}
            print(
                f"| {name} | {med['cosine']:.3f} | {med['norm_ratio']:.3f} | {med['kl']:.3g} | {100 * med['loss']:.0f}% "
                f"| {med['gain']:.2f} | {med['seconds']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
