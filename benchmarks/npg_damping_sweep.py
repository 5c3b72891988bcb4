"""How close does a few-epoch Adam fit of the damped-Q target come to the CG natural step, as a
function of the damping lambda? Prints a markdown table (the one in docs/natural_pg_damped.md).

    python benchmarks/npg_damping_sweep.py                       # ~3 min on 2 CPU cores
    python benchmarks/npg_damping_sweep.py --dampings 1e-3 1e-2 0.1 1

One batch (16 envs x 20 steps of Breakout) from natural_pg_damped.py's initial policy and value
networks (seed 0). For each lambda: the natural step (eps/tau) x with (F + lambda I) x = Psi^T A / B
by CG (10 iterations, and 50 as the reference), then Adam on the damped-Q loss plus the
proximal term at the same lambda, as `--solver damped-q` does it (4 minibatches an epoch),
read off after each of `--epochs`. Cosines are in the empirical Fisher metric against the
50-iteration solution.
"""

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import natural_pg_damped as npg  # noqa: E402


def collect_batch(env_id: str, num_envs: int, num_steps: int, tau: float, seed: int) -> dict:
    torch.manual_seed(seed)
    envs = npg.make_env(env_id, num_envs)
    policy, value = npg.NatureCNN(envs.single_action_space.n, head_std=0.01), npg.NatureCNN(1, head_std=1.0)
    generator = torch.Generator().manual_seed(seed)
    obs, _ = envs.reset(seed=seed)
    observations, actions, rewards, terminated, truncated = [], [], [], [], []
    for _ in range(num_steps):
        observations.append(torch.from_numpy(obs))
        with torch.no_grad():
            actions.append(npg.sample_actions(policy(observations[-1]), generator))
        obs, reward, term, trunc, _ = envs.step(actions[-1].numpy())
        rewards.append(np.clip(reward, -1, 1))
        terminated.append(term)
        truncated.append(trunc & ~term)
    envs.close()
    b_obs = torch.stack(observations).flatten(0, 1)
    with torch.no_grad():
        values = value(b_obs).squeeze(-1).view(num_steps, num_envs)
        next_value = value(torch.from_numpy(obs)).squeeze(-1)
    theta_old, logits_old, jv, jtu = npg.policy_jacobian(policy, b_obs)
    advantages, _ = npg.n_step_advantages(
        torch.tensor(np.array(rewards), dtype=torch.float32),
        npg.reward_bonus(logits_old.view(num_steps, num_envs, -1), tau, "entropy"),
        values,
        next_value,
        torch.tensor(np.array(terminated)),
        torch.tensor(np.array(truncated)),
        torch.zeros(num_steps, num_envs),  # no time limit is reached in 20 steps from a reset
        0.99,
        "proper",
    )
    return dict(
        policy=policy,
        obs=b_obs,
        actions=torch.cat(actions),
        values=values.flatten(),
        advantages=advantages.flatten(),
        theta_old=theta_old,
        logits_old=logits_old,
        jv=jv,
        jtu=jtu,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--dampings", type=float, nargs="+", default=[1e-3, 0.1, 1.0])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[3e-4, 1e-3])
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 8, 32])
    parser.add_argument("--tau", type=float, default=0.01)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    b = collect_batch(args.env_id, 16, 20, args.tau, args.seed)
    actions, logits_old, jv, jtu = b["actions"], b["logits_old"], b["jv"], b["jtu"]
    batch = len(actions)
    reg_advantages = npg.regularized_advantages(b["advantages"], logits_old, actions, args.tau)
    targets = npg.damped_q_target(b["values"], logits_old, actions, b["advantages"], args.tau, args.eps)
    gradient = npg.policy_gradient(jtu, logits_old, actions, reg_advantages)
    weigh = npg.logit_fisher(logits_old.double(), actions, "empirical")

    def fisher_cosine(u: torch.Tensor, v: torch.Tensor) -> float:
        return npg.fisher_cosine(jv(u).double(), jv(v).double(), weigh).item()

    print(
        f"{args.env_id}, one batch of {batch} from the initial networks; eps/tau = {args.eps / args.tau:g}; "
        f"Fisher cosine after {' / '.join(map(str, args.epochs))} epochs\n"
    )
    print(
        "| lambda | CG residual, 10 it. | cos(CG 10, CG 50) | "
        + " | ".join(f"Adam lr {lr:g}" for lr in args.learning_rates)
        + " |"
    )
    print("|---|---:|---:|" + "---|" * len(args.learning_rates))
    for damping in args.dampings:
        fvp = npg.fisher_vector_product(jv, jtu, logits_old, actions, "empirical", damping)
        cg10, residual10 = npg.conjugate_gradient(fvp, gradient, 10)
        cg50, _ = npg.conjugate_gradient(fvp, gradient, 50)
        natural = (args.eps / args.tau) * cg50
        cells = []
        for lr in args.learning_rates:
            policy = copy.deepcopy(b["policy"])
            params_old = [p.detach().clone() for p in policy.parameters()]
            optimizer = torch.optim.Adam(policy.parameters(), lr=lr, eps=1e-5)
            shuffle = torch.Generator().manual_seed(args.seed)
            cosines = []
            for epoch in range(1, max(args.epochs) + 1):
                for mb in torch.randperm(batch, generator=shuffle).split(batch // 4):
                    loss = npg.damped_q_loss(policy(b["obs"][mb]), b["values"][mb], actions[mb], targets[mb], args.tau)
                    loss = loss + npg.proximal_term(list(policy.parameters()), params_old, args.tau, damping)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                if epoch in args.epochs:
                    step = torch.cat([p.detach().flatten() for p in policy.parameters()]) - b["theta_old"]
                    cosines.append(f"{fisher_cosine(step, natural):.3f}")
            cells.append(" / ".join(cosines))
        cg_cosine = (cg10.double() @ cg50.double() / (cg10.double().norm() * cg50.double().norm())).item()
        print(f"| {damping:g} | {residual10:.2g} | {cg_cosine:.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
