"""Damped soft Q-learning as a natural policy gradient step, on Atari.

Section 5 of "Equivalence Between Policy Gradients and Soft Q-Learning" (Schulman, Chen, Abbeel 2017) is theory
without an experiment: this script runs it and measures the theorem on every batch. Each iteration collects a rollout
with pi_old, computes the advantages Delta_t with V_old (eqs. 52-54), takes one policy step, then refits V:

    --solver damped-q: fit Q_theta(s,a) = V_old(s) + tau log(pi_theta(a|s)/pibar(a|s)), V_old frozen, to
                       Qhat^eps_t = Q_old(s_t,a_t) + eps (Qhat_t - Q_old(s_t,a_t)) by Adam   (eqs. 74-77)
    --solver npg:      theta <- theta_old + (eps/tau) F^-1 Psi^T A / B by conjugate gradient  (eqs. 66-71)

with psi_t = grad log pi(a_t|s_t), A_t the entropy-regularized advantage (eq. 71), B the batch size. Term by term
Q_theta - Qhat^eps = tau ((log pi_theta - log pi_old)(a_t|s_t) - (eps/tau) A_t) (eq. 78): the damped regression is
the natural-gradient regression. The npg/* charts say how close the steps taken are to the CG natural step (damped-q
computes it every --diagnostic-every iterations). Policy and V are separate networks: the theorem holds V fixed during
the policy step. Equations: docs/paper.md; the charts, and why --cg-damping 0.1: docs/natural_pg_damped.md.

Run:
    python natural_pg_damped.py --solver damped-q --eps 0.5     # fit Q to the damped target, V frozen
    python natural_pg_damped.py --solver npg --eps 0.5          # natural gradient by conjugate gradient
    python natural_pg_damped.py --solver npg --fisher exact --max-kl None --eps 0.01   # true Fisher, no trust region
"""

import argparse
import datetime
import math
import os
import re
import signal
import sys
import time
import zipfile
from dataclasses import dataclass, fields
from typing import Callable, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.func import functional_call, jvp, vjp
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "soft-q-equivalence"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to save GIFs of what the agent sees (env 0) to `videos/{run_name}`"""
    save_model: bool = False
    """whether to save the model to `runs/{run_name}` and then evaluate it"""
    eval_episodes: int = 10
    """number of full games played with the stochastic policy after `--save-model`"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """the id of the environment (`BreakoutNoFrameskip-v4` or `ALE/Breakout-v5`: both name the game)"""
    total_timesteps: int = 10_000_000
    """total timesteps of the experiments (agent steps summed over envs; 4 frames each)"""
    solver: Literal["damped-q", "npg"] = "damped-q"
    """`damped-q`: Adam on the damped soft-Q regression; `npg`: the natural gradient step by conjugate gradient"""
    eps: float = 0.1
    """the damping eps in (0, 1] of the soft-Q target; the natural-gradient step size is eps/tau"""
    tau: float = 0.01
    """the entropy / KL coefficient (temperature), > 0"""
    regularizer: Literal["entropy", "kl"] = "entropy"
    """`entropy` bonus +tau*H or `kl` penalty -tau*KL[pi || uniform]; they differ by tau*log|A| per step"""
    fisher: Literal["empirical", "exact"] = "empirical"
    """`empirical`: Psi^T Psi / B at the sampled actions (eq. 66); `exact`: E_a[psi psi^T], the Hessian of the KL"""
    cg_iters: int = 10
    """conjugate gradient iterations of the natural-gradient solve"""
    fvp_fraction: float = 1.0
    """the fraction of the batch, drawn at random, that CG's Fisher-vector products use (TRPO: 0.1); the gradient uses all"""
    diagnostic_every: int = 50
    """damped-q: every this many iterations, also compute the CG natural step to compare with (npg/cosine_*; ~2 iterations)"""
    cg_damping: float = 0.1
    """lambda: npg solves (F + lambda I) x = g, damped-q adds tau^2 lambda/2 ||theta - theta_old||^2 (Psi^T Psi is singular)"""
    max_kl: Optional[float] = 0.01
    """scale each policy step back until the batch's mean KL(pi_old || pi_new) is at most this (`None`: no trust region)"""
    policy_epochs: int = 4
    """damped-q: passes of Adam over the batch's minibatches per iteration"""
    policy_lr: float = 1e-3
    """damped-q: the learning rate of the policy's Adam"""
    value_epochs: int = 4
    """passes of Adam over the batch's minibatches fitting V to Vhat = V_old + Delta, after the policy step"""
    value_lr: float = 2.5e-4
    """the learning rate of the value function's Adam"""
    num_minibatches: int = 4
    """the number of minibatches each epoch splits the batch into"""
    num_envs: int = 16
    """the number of parallel game environments"""
    num_steps: int = 20
    """the number of steps to run in each environment per policy rollout (the n of the n-step return)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    compile: bool = False
    """torch.compile both networks (acting, the minibatch steps) and the Fisher-vector product's forward-mode pass"""
    checkpoint_every: int = 0
    """write `runs/{run_name}/checkpoint.pt` every this many agent steps and at the end; 0: only on SIGINT/SIGTERM"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint with its options; only --total-timesteps, --checkpoint-every, --track,
    --cuda and --compile may be given"""

    def __post_init__(self):
        """Reject what would crash the envs, fail late or train silently wrong (tyro shows it and exits 2)."""
        ale_game_name(self.env_id)
        rollout = self.num_envs * self.num_steps
        checks = {
            "--seed must be in [0, 2**31 - 2**16) (ale-py seeds env i with seed + i)": 0 <= self.seed < 2**31 - 2**16,
            f"--eps must be in (0, 1], got {self.eps}": 0 < self.eps <= 1,
            f"--tau must be a finite number > 0, got {self.tau}": 0 < self.tau < math.inf,
            "--cg-iters and --diagnostic-every must be >= 1": min(self.cg_iters, self.diagnostic_every) >= 1,
            "--max-kl must be a finite number > 0": self.max_kl is None or 0 < self.max_kl < math.inf,
            "--cg-damping must be a finite number >= 0": 0 <= self.cg_damping < math.inf,
            "--policy-epochs and --value-epochs must be >= 1": min(self.policy_epochs, self.value_epochs) >= 1,
            "--num-envs and --num-steps must be >= 1": min(self.num_envs, self.num_steps) >= 1,
            f"--num-minibatches must be in [1, num-envs * num-steps = {rollout}]": 1 <= self.num_minibatches <= rollout,
            f"--total-timesteps must be >= --num-envs * --num-steps = {rollout}": self.total_timesteps >= rollout,
            f"--gamma must be in [0, 1], got {self.gamma}": 0 <= self.gamma <= 1,
            "--eval-episodes must be >= 1": self.eval_episodes >= 1,
        }
        if not all(checks.values()):
            raise ValueError("; ".join(message for message, ok in checks.items() if not ok))


# The paper's math (uniform reference policy pibar = 1/|A| throughout) ------------------------------------------------


def entropy_and_kl(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H(pi(.|s)) and KL[pi || pibar](s) = sum_a pi log(pi / pibar) = log|A| - H (eq. 26, pibar uniform), over the last
    axis of the policy's logits."""
    log_pi = F.log_softmax(logits, dim=-1)
    entropy = -(log_pi.exp() * log_pi).sum(dim=-1)
    return entropy, math.log(logits.shape[-1]) - entropy


def reward_bonus(logits: torch.Tensor, tau: float, regularizer: str) -> torch.Tensor:
    """The per-step augmentation of the reward in the entropy-regularized return (eq. 36):
    -tau*KL[pi || pibar](s) for `kl`, +tau*H(pi(.|s)) for `entropy` (= the kl form + tau*log|A|)."""
    entropy, kl = entropy_and_kl(logits)
    return -tau * kl if regularizer == "kl" else tau * entropy


def n_step_advantages(rewards, bonuses, values, next_value, terminated, truncated, truncation_values, gamma, entropy_mode):
    """Advantages Delta_t and value targets Vhat_t = V(s_t) + Delta_t of one rollout (eqs. 52-54).

    Inputs are (T, N) over rollout steps t and envs: reward r_t, bonus(s_t) (-tau*KL_t or +tau*H_t, from
    `reward_bonus`), V(s_t), the transition's end flags and, where it was truncated by the time limit, V of the
    state it was cut at; `next_value` (N,) is V(s_T) after the rollout. Step t's return looks ahead to the
    rollout's end (T - t steps, the A2C n-step return):

        naive  (eq. 79): Vhat_t = r_t            + gamma * Vhat_{t+1}
        proper (eq. 80): Vhat_t = r_t + bonus_t  + gamma * Vhat_{t+1}     (Delta_t = sum_d gamma^d delta_{t+d}, eq. 52)

    with Vhat_T = V(s_T). A termination (a lost life or a game over) cuts the sum and drops the bootstrap; a
    truncation bootstraps from V of the state it cut at. The modes differ in the line marked below, nowhere else.
    """
    step_rewards = rewards + bonuses if entropy_mode == "proper" else rewards  # <- naive vs proper
    returns = torch.empty_like(rewards)
    future = next_value
    for t in reversed(range(rewards.shape[0])):
        future = torch.where(truncated[t] & ~terminated[t], truncation_values[t], future)
        future = step_rewards[t] + torch.where(terminated[t], 0.0, gamma * future)
        returns[t] = future
    return returns - values, returns


def log_ratio(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log(pi(a_t|s_t) / pibar(a_t|s_t)) per row of `logits` (B, |A|) and action (B,): Q's advantage stream (eq. 57)."""
    return F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1) + math.log(logits.shape[-1])


def regularized_advantages(advantages, logits_old, actions, tau) -> torch.Tensor:
    """A_t = Delta_t - tau (log(pi_old(a_t|s_t)/pibar(a_t|s_t)) - KL[pi_old || pibar](s_t)) (eqs. 71, 78):
    Psi^T A / B is the entropy-regularized policy gradient, the KL term's gradient in score-function form."""
    return advantages - tau * (log_ratio(logits_old, actions) - entropy_and_kl(logits_old)[1])


def damped_q_target(values_old, logits_old, actions, advantages, tau, eps) -> torch.Tensor:
    """Qhat^eps_t = Q_old(s_t,a_t) + eps (Qhat_t - Q_old(s_t,a_t)) (eqs. 74-76), Q_old = V_old + tau log(pi_old/pibar)
    (eq. 57) and Qhat_t = V_old(s_t) + tau KL_old(s_t) + Delta_t the n-step soft Q target of Section 4.
    eps = 1 is plain soft Q-learning with V held fixed (eqs. 72-73), not a natural gradient step."""
    q_old = values_old + tau * log_ratio(logits_old, actions)
    q_hat = values_old + tau * entropy_and_kl(logits_old)[1] + advantages
    return (q_old + eps * (q_hat - q_old)).detach()


def damped_q_loss(logits, values_old, actions, targets, tau) -> torch.Tensor:
    """1/2 mean_t (Q_theta(s_t,a_t) - Qhat^eps_t)^2 with Q_theta = V_old + tau log(pi_theta/pibar) and V_old
    held constant (eq. 77): the damped soft Q-learning regression, in the policy only."""
    q = values_old.detach() + tau * log_ratio(logits, actions)
    return 0.5 * (q - targets).pow(2).mean()


def proximal_term(params: list, params_old: list, tau: float, damping: float) -> torch.Tensor:
    """tau^2 damping/2 ||theta - theta_old||^2. Added to the damped-Q loss, it makes the loss's Gauss-Newton
    step (eps/tau) (Psi^T Psi / B + damping I)^-1 Psi^T A / B: npg's CG step with the same `--cg-damping`."""
    return 0.5 * tau**2 * damping * sum((p - q).pow(2).sum() for p, q in zip(params, params_old))


def npg_residual(logits, logits_old, actions, reg_advantages, tau, eps) -> torch.Tensor:
    """r_t = (log pi_theta - log pi_old)(a_t|s_t) - (eps/tau) A_t, the residual of the entropy-regularized
    natural-gradient regression (eqs. 68, 71): Q_theta - Qhat^eps = tau r_t (eq. 78), and linearized in
    w = theta - theta_old, r = Psi w - (eps/tau) A is eq. 66's least-squares residual."""
    return log_ratio(logits, actions) - log_ratio(logits_old, actions).detach() - (eps / tau) * reg_advantages


def policy_jacobian(model: nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable, Callable]:
    """(theta, logits, jv, jtu), all detached: the policy's flattened parameters, its logits, and the maps
    v -> J v (forward mode) and u -> J^T u (reverse mode, reusing one forward pass), J = d logits / d theta."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def logits_of(flat: torch.Tensor) -> torch.Tensor:
        tensors = torch.split(flat, [math.prod(s) for s in shapes])
        return functional_call(model, {n: t.view(s) for n, t, s in zip(names, tensors, shapes)}, (obs,))

    logits, vjp_fn = vjp(logits_of, theta)
    return theta, logits.detach(), lambda v: jvp(logits_of, (theta,), (v,))[1], lambda u: vjp_fn(u)[0]


@torch.no_grad()
def set_parameters(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy the flat vector `theta` (ordered as `policy_jacobian`'s) into `model`'s parameters in
    place: each keeps its memory layout (channels-last convolutions), so compiled graphs see the same tensors."""
    params = list(model.parameters())
    for p, chunk in zip(params, theta.split([p.numel() for p in params])):
        p.copy_(chunk.view_as(p))


def logit_fisher(logits: torch.Tensor, actions: torch.Tensor, fisher: str) -> Callable:
    """d -> M_t d_t for logit-space vectors d (B, |A|): the softmax policy's Fisher information in its
    logits, with p_t = softmax(logits_t) = pi_old(.|s_t) and psi_t = J_t^T (e_{a_t} - p_t):

        empirical: M_t = (e_{a_t} - p_t)(e_{a_t} - p_t)^T, so J^T M J / B = Psi^T Psi / B (eq. 66's matrix)
        exact:     M_t = diag(p_t) - p_t p_t^T, so J^T M J / B = E_a[psi psi^T], the Hessian of the KL
    """
    p = torch.softmax(logits, dim=-1)
    score = F.one_hot(actions, logits.shape[-1]).to(p.dtype) - p
    if fisher == "empirical":
        return lambda d: score * (score * d).sum(dim=-1, keepdim=True)
    return lambda d: p * d - p * (p * d).sum(dim=-1, keepdim=True)


def fisher_vector_product(jv, jtu, logits, actions, fisher, damping) -> Callable:
    """v -> (F + damping I) v, matrix-free: F v = J^T M J v / B (`logit_fisher`'s M), a forward- and a reverse-mode pass."""
    weigh = logit_fisher(logits, actions, fisher)
    return lambda v: jtu(weigh(jv(v)) / logits.shape[0]) + damping * v


def fisher_cosine(du: torch.Tensor, dv: torch.Tensor, weigh: Callable) -> torch.Tensor:
    """u^T F v / sqrt(u^T F u v^T F v), the Fisher-metric cosine of u and v, from du = J u, dv = J v and `logit_fisher`'s M."""
    uv, uu, vv = (du * weigh(dv)).sum(), (du * weigh(du)).sum(), (dv * weigh(dv)).sum()
    return uv / (uu * vv).sqrt()


def policy_gradient(jtu: Callable, logits: torch.Tensor, actions: torch.Tensor, reg_advantages: torch.Tensor) -> torch.Tensor:
    """g = Psi^T A / B = sum_t psi_t A_t / B (eq. 66's right side); with eq. 71's A_t, the entropy-regularized gradient."""
    score = F.one_hot(actions, logits.shape[-1]).to(logits.dtype) - torch.softmax(logits, dim=-1)
    return jtu(score * reg_advantages[:, None] / logits.shape[0])


def conjugate_gradient(matvec: Callable, b: torch.Tensor, iters: int, tol: float = 1e-10) -> tuple[torch.Tensor, float]:
    """Solve A x = b (A symmetric positive definite, given as x -> A x) from x = 0 in at most `iters` iterations.
    Returns x and the relative residual ||b - A x|| / ||b||."""
    x, r, d = torch.zeros_like(b), b.clone(), b.clone()
    rr, b_norm = r.dot(r), b.norm()
    if b_norm == 0:
        return x, 0.0
    for _ in range(iters):
        if rr.sqrt() <= tol * b_norm:
            break
        ad = matvec(d)
        alpha = rr / d.dot(ad)
        x += alpha * d
        r -= alpha * ad
        rr, rr_old = r.dot(r), rr
        d = r + (rr / rr_old) * d
    return x, (rr.sqrt() / b_norm).item()


def mean_kl(logits_old: torch.Tensor, logits_new: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(pi_old(.|s_t) || pi_new(.|s_t))."""
    log_old, log_new = F.log_softmax(logits_old, dim=-1), F.log_softmax(logits_new, dim=-1)
    return (log_old.exp() * (log_old - log_new)).sum(dim=-1).mean()


def quadratic_kl(logits: torch.Tensor, d_logits: torch.Tensor) -> float:
    """1/2 s^T F s (F the exact Fisher, the KL's Hessian): the quadratic model of the mean KL(pi_old || pi_{theta_old + s})
    from the logit change d = J s; per state 1/2 d^T (diag(p) - p p^T) d = 1/2 Var_{a ~ pi_old}(d_a). The empirical
    Fisher would not do: with more parameters than samples its quadratic overstates the KL (tests)."""
    p = torch.softmax(logits, dim=-1)
    return (0.5 * ((p * d_logits**2).sum(-1) - (p * d_logits).sum(-1) ** 2)).mean().item()


def kl_backtrack(kl_of: Callable, max_kl: float, start: float = 1.0, tries: int = 10) -> tuple[float, float]:
    """A fraction f of a step whose KL, kl_of(f), is at most max_kl: `start`, and after each try over it
    f * 0.95 sqrt(max_kl / kl_of(f)), where the KL, quadratic in f near 0, would be 0.9 max_kl (f / 2 if the KL is not
    finite; TRPO's halving would quarter a 1% overshoot). Returns (f, kl_of(f)), or (0, 0) after `tries` tries."""
    fraction = start
    for _ in range(tries):
        kl = kl_of(fraction)
        if kl <= max_kl:
            return fraction, kl
        fraction *= 0.95 * math.sqrt(max_kl / kl) if math.isfinite(kl) else 0.5
    return 0.0, 0.0


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """a ~ pi(.|s) = softmax(logits) by the Gumbel-max trick, argmax(logits - log E), E ~ Exp(1). Unlike torch.multinomial
    it does not raise on NaN logits: a diverged network reaches the next update's loss check, which names the step."""
    return (logits - torch.empty_like(logits).exponential_(generator=generator).log()).argmax(dim=-1)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Var(targets - predictions) / Var(targets): 1 is perfect, 0 no better than a constant."""
    var = targets.var()
    return torch.where(var > 0, 1 - (targets - predictions).var() / var, torch.full_like(var, float("nan")))


# The policy step: npg or damped-q, each measured against the CG natural step -----------------------------------------


class Batch(NamedTuple):
    """One rollout, flattened (B = num_envs * num_steps), and what pi_old and V_old say about it."""

    obs: torch.Tensor  # (B, 4, 84, 84) uint8
    actions: torch.Tensor  # (B,)
    values_old: torch.Tensor  # (B,) V_old(s_t)
    theta_old: torch.Tensor  # the policy's parameters, flattened
    logits_old: torch.Tensor  # (B, |A|)
    jv: Optional[Callable]  # v -> J v and u -> J^T u, J = d logits / d theta at theta_old (`policy_jacobian`);
    jtu: Optional[Callable]  # None when damped-q skips the comparison with the CG step (--diagnostic-every)
    fvp: Optional[Callable]  # v -> (F + lambda I) v on the --fvp-fraction sample (`fisher_vector_product`); None likewise
    reg_advantages: torch.Tensor  # (B,) A_t (eq. 71)
    targets: torch.Tensor  # (B,) Qhat^eps_t (eq. 76)


def natural_step(b: Batch, args: Args) -> tuple[torch.Tensor, float]:
    """s = (eps/tau) x, (F + lambda I) x = g = Psi^T A / B (eqs. 66-71, lambda = --cg-damping), x by --cg-iters of
    conjugate gradient (F on --fvp-fraction of the batch, g on all of it); and CG's relative residual."""
    g = policy_gradient(b.jtu, b.logits_old, b.actions, b.reg_advantages)
    direction, cg_residual = conjugate_gradient(b.fvp, g, args.cg_iters)
    return (args.eps / args.tau) * direction, cg_residual


@torch.no_grad()
def finish_step(policy, policy_fn, b, step, fraction, natural, cg_residual, args) -> dict:
    """The trust region, then what the loop logs. With --max-kl the policy goes to theta_old + f step, f found by
    backtracking from `fraction` until the batch's mean KL(pi_old || pi) is within it (`kl_backtrack`). Logged, on the
    batch: the damped-Q loss (eq. 77), the RMS natural-gradient residual (eq. 68), the entropy, the KL, and (when the CG
    `natural` step was computed) the step's length ratio to it and, if a step was taken, their cosines (plain, Fisher)."""
    tried = {}  # fraction -> the policy's logits on the batch there
    if args.max_kl is not None:

        def kl_of(f: float) -> float:
            set_parameters(policy, b.theta_old + f * step)
            tried[f] = policy_fn(b.obs)
            return mean_kl(b.logits_old, tried[f]).item()

        fraction, _ = kl_backtrack(kl_of, args.max_kl, start=fraction)
        set_parameters(policy, b.theta_old + fraction * step)
    taken = fraction * step
    logits_new = tried[fraction] if fraction in tried else policy_fn(b.obs)
    residual = npg_residual(logits_new, b.logits_old, b.actions, b.reg_advantages, args.tau, args.eps)
    logs = {
        "losses/damped_q_loss": damped_q_loss(logits_new, b.values_old, b.actions, b.targets, args.tau),
        "losses/npg_residual": residual.pow(2).mean().sqrt(),
        "losses/entropy": entropy_and_kl(logits_new)[0].mean(),
        "npg/kl_old_new": mean_kl(b.logits_old, logits_new),
        "npg/step_fraction": torch.tensor(fraction),
    }
    if natural is None:
        return logs
    t, s = taken.double(), natural.double()  # in float64: a float32 dot product over 1.7M entries is off by ~1e-4
    logs |= {"npg/step_norm_ratio": t.norm() / s.norm(), "npg/cg_residual": torch.tensor(cg_residual)}
    if fraction == 0:  # the trust region kept theta_old: no step, no direction to compare
        return logs
    weigh = logit_fisher(b.logits_old.double(), b.actions, args.fisher)
    cosine_fisher = fisher_cosine(b.jv(taken).double(), b.jv(natural).double(), weigh)
    return logs | {"npg/cosine_step": t.dot(s) / (t.norm() * s.norm()), "npg/cosine_step_fisher": cosine_fisher}


def npg_step(policy: nn.Module, policy_fn: Callable, b: Batch, args: Args) -> dict:
    """--solver npg: theta <- theta_old + f s, s the CG natural step (eqs. 66-71). With --max-kl f starts where the KL's
    quadratic model (`quadratic_kl`, exact Fisher whatever --fisher) reaches it, as in TRPO; `finish_step` backtracks."""
    natural, cg_residual = natural_step(b, args)
    fraction = 1.0
    if args.max_kl is not None:
        predicted = quadratic_kl(b.logits_old, b.jv(natural))  # of the full step; f^2 times that for f s
        fraction = min(1.0, math.sqrt(args.max_kl / predicted)) if predicted > 0 else 1.0
    set_parameters(policy, b.theta_old + fraction * natural)
    return finish_step(policy, policy_fn, b, natural, fraction, natural, cg_residual, args)


def damped_q_step(policy: nn.Module, policy_fn: Callable, b: Batch, args: Args, shuffle: torch.Generator) -> dict:
    """--solver damped-q: from theta_old, --policy-epochs passes of a fresh Adam over minibatches of
    1/2 mean (Q_theta - Qhat^eps)^2 + tau^2 lambda/2 ||theta - theta_old||^2 (eq. 77 and `proximal_term`), V_old frozen.
    By eq. 78 its Gauss-Newton step is the CG natural step, compared with every --diagnostic-every iterations."""
    natural, cg_residual = natural_step(b, args) if b.jv is not None else (None, math.nan)
    params_old = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.policy_lr, eps=1e-5, fused=True)  # one kernel, all tensors
    batch_size = len(b.actions)
    for _ in range(args.policy_epochs):
        for mb in torch.randperm(batch_size, generator=shuffle).to(b.obs.device).split(batch_size // args.num_minibatches):
            loss = damped_q_loss(policy_fn(b.obs[mb]), b.values_old[mb], b.actions[mb], b.targets[mb], args.tau)
            loss = loss + proximal_term(list(policy.parameters()), params_old, args.tau, args.cg_damping)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    step = torch.cat([p.detach().flatten() for p in policy.parameters()]) - b.theta_old
    return finish_step(policy, policy_fn, b, step, 1.0, natural, cg_residual, args)


# Networks (the policy and V are separate: see the module docstring) --------------------------------------------------


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class NatureCNN(nn.Module):
    """The Nature CNN with a linear head: uint8 frames (N, 4, 84, 84) -> (N, out_features).
    The policy is NatureCNN(|A|, 0.01) (logits, near-uniform at init), the value NatureCNN(1, 1.0)."""

    def __init__(self, out_features: int, head_std: float):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(3136, 512)),
            nn.ReLU(),
            layer_init(nn.Linear(512, out_features), std=head_std),
        )
        self.to(memory_format=torch.channels_last)  # conv weights NHWC once, not converted at every call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last (NHWC) like the weights: oneDNN's fastest CPU convolutions; converted while still uint8
        return self.net(x.contiguous(memory_format=torch.channels_last).float() / 255.0)


# Environment: DQN-Nature Atari on ale-py's C++ vector env (the same in all four scripts) -----------------------------


def ale_game_name(env_id: str) -> str:
    """`BreakoutNoFrameskip-v4` / `ALE/Breakout-v5` / `breakout` -> ale-py's ROM id `breakout`."""
    from ale_py import roms

    name = re.sub(r"(NoFrameskip)?-v\d+$", "", env_id.split("/")[-1])
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    if name not in roms.get_all_rom_ids():
        raise ValueError(f"--env-id: unknown game {env_id!r} (no ale-py ROM {name!r}); use e.g. BreakoutNoFrameskip-v4")
    return name


def make_env(env_id: str, num_envs: int, life_loss_terminal: bool = True, max_episode_frames: int = 108_000):
    """DQN-Nature Atari: 84x84 grayscale, max-pool over the last 2 of 4 skipped frames, 4-frame stack, up to 30
    no-ops and FIRE at reset, no sticky actions (the paper's NoFrameskip setting). Rewards are raw (clip them for
    training; log real scores). Autoreset is SameStep: every step is a real transition, and an ended game's last
    observation is in info["final_obs"]. With `life_loss_terminal` a lost life sets `terminated` while the game
    goes on (DQN's EpisodicLifeEnv; ale-py's `episodic_life`, off, would restart the game): see `game_restarted`."""
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(
        game=ale_game_name(env_id),
        num_envs=num_envs,
        autoreset_mode="SameStep",
        life_loss_info=life_loss_terminal,
        reward_clipping=False,
        repeat_action_probability=0.0,
        max_num_frames_per_episode=max_episode_frames,
    )


def game_restarted(terminated: np.ndarray, truncated: np.ndarray, info: dict, prev_info: dict) -> np.ndarray:
    """Which envs started a new game in this step. A truncation always does; a `terminated` is a game over, not a
    life loss, when the game's frame counter went back or the lives did not drop (each signal alone has a blind
    spot: a game shorter than the no-op reset, bonus lives)."""
    frame_went_back = info["episode_frame_number"] < prev_info["episode_frame_number"]
    lives_kept = info["lives"] >= prev_info["lives"]
    return truncated | (terminated & (frame_went_back | lives_kept))


# Training: rollouts with pi_old, the policy step of Section 5, then V ------------------------------------------------


def main():
    signal.signal(signal.SIGINT, stop_softly)  # from the start: a signal while the envs are built takes effect after
    signal.signal(signal.SIGTERM, stop_softly)
    args, checkpoint = parse_args()
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    print(f"device: {device} (torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
    run_name, run_dir, writer = start_run(args, checkpoint)
    torch.manual_seed(args.seed)  # the networks' initialization; every other draw has a generator of its own
    torch.backends.cudnn.deterministic = args.torch_deterministic
    generator = torch.Generator().manual_seed(args.seed)  # action sampling, on the host: its state loads on any device
    shuffle = torch.Generator().manual_seed(args.seed)  # minibatches

    envs = make_env(args.env_id, args.num_envs)
    policy = NatureCNN(envs.single_action_space.n, head_std=0.01).to(device)
    value = NatureCNN(1, head_std=1.0).to(device)
    value_optimizer = torch.optim.Adam(value.parameters(), lr=args.value_lr, eps=1e-5, fused=True)
    policy_fn = torch.compile(policy) if args.compile else policy  # fixed-size batches; the time-limit bootstrap stays eager
    value_fn = torch.compile(value) if args.compile else value

    T, N = args.num_steps, args.num_envs
    batch_size, num_iterations = T * N, args.total_timesteps // (T * N)
    fvp_size = math.ceil(args.fvp_fraction * batch_size)
    obs_buf = torch.zeros((T, N) + envs.single_observation_space.shape, dtype=torch.uint8, device=device)
    actions_buf, values_buf = torch.zeros((T, N), dtype=torch.long, device=device), torch.zeros((T, N), device=device)
    logits_buf = torch.zeros((T, N, envs.single_action_space.n), device=device)
    # The rollout's small arrays stay on the host and move to the device once per update.
    rewards_buf, truncation_values_buf = np.zeros((T, N), dtype=np.float32), np.zeros((T, N), dtype=np.float32)
    terminated_buf, truncated_buf = np.zeros((T, N), dtype=bool), np.zeros((T, N), dtype=bool)

    global_step, games_env0, video_frames = 0, 0, []
    if checkpoint:
        policy.load_state_dict(checkpoint["policy"])
        value.load_state_dict(checkpoint["value"])
        value_optimizer.load_state_dict(checkpoint["value_optimizer"])
        generator.set_state(checkpoint["generator"])
        shuffle.set_state(checkpoint["shuffle"])
        global_step, games_env0 = checkpoint["global_step"], checkpoint["games_env0"]
    obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
    game_return, game_length, episodic_returns = np.zeros(N), np.zeros(N, dtype=np.int64), []
    start_time, start_step, last_report = time.time(), global_step, [time.time(), global_step]
    checkpoint_path = f"{run_dir}/checkpoint.pt"
    for iteration in range(global_step // batch_size + 1, num_iterations + 1):
        truncation_values_buf[:] = 0.0  # the rollout, with pi_old: its logits and V_old(s_t) recorded as it goes
        for t in range(T):
            obs_buf[t] = torch.from_numpy(obs).to(device)
            with torch.no_grad():
                logits_buf[t] = policy_fn(obs_buf[t])
                action = sample_actions(logits_buf[t].cpu(), generator)  # on the host, like the env
                values_buf[t] = value_fn(obs_buf[t]).squeeze(-1)
            actions_buf[t] = action
            if args.capture_video and video_schedule(games_env0):
                video_frames.append(obs[0, -1].copy())
            prev_info = info
            obs, reward, terminated, truncated, info = envs.step(action.numpy())
            restarted = game_restarted(terminated, truncated, info, prev_info)
            rewards_buf[t] = np.clip(reward, -1, 1)
            terminated_buf[t], truncated_buf[t] = terminated, truncated
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):  # the time limit: bootstrap from the state the game was cut at
                with torch.no_grad():
                    cut_values = value(torch.from_numpy(info["final_obs"][cut]).to(device)).squeeze(-1)
                truncation_values_buf[t, cut] = cut_values.cpu().numpy()
            game_return += reward
            game_length += 1
            for e in np.flatnonzero(restarted):
                writer.add_scalar("charts/episodic_return", game_return[e], global_step)
                writer.add_scalar("charts/episodic_length", game_length[e], global_step)
                episodic_returns.append(game_return[e])
                if e == 0:
                    if video_frames:
                        save_gif(video_frames + [info["final_obs"][0, -1]], f"videos/{run_name}/train-game-{games_env0}.gif")
                        video_frames = []
                    games_env0 += 1
                game_return[e], game_length[e] = 0.0, 0
            global_step += N

        # Advantages Delta_t and value targets under pi_old and V_old (eqs. 52-54), A_t (eq. 71), Qhat^eps_t (eq. 76).
        b_obs, b_actions, b_values, logits_old = (buf.flatten(0, 1) for buf in (obs_buf, actions_buf, values_buf, logits_buf))
        if args.solver == "npg" or iteration % args.diagnostic_every == 0:  # the CG natural step is computed
            theta_old, _, jv, jtu = policy_jacobian(policy, b_obs)
            # F's sample, drawn from (seed, iteration) alone: damped-q's minibatches do not depend on it.
            sample = np.sort(np.random.default_rng([args.seed, iteration]).permutation(batch_size)[:fvp_size])
            sample = torch.from_numpy(sample).to(device)
            jv_f, jtu_f = policy_jacobian(policy, b_obs[sample])[2:] if fvp_size < batch_size else (jv, jtu)
            jv_f = torch.compile(jv_f) if args.compile else jv_f  # CG's costliest pass (forward mode, ~3x a forward pass)
            fvp = fisher_vector_product(jv_f, jtu_f, logits_old[sample], b_actions[sample], args.fisher, args.cg_damping)
        else:
            theta_old, jv, jtu, fvp = torch.cat([p.detach().flatten() for p in policy.parameters()]), None, None, None
        with torch.no_grad():
            next_value = value_fn(torch.from_numpy(obs).to(device)).squeeze(-1)  # V_old(s_T)
            bonuses = reward_bonus(logits_old.view(T, N, -1), args.tau, args.regularizer)
            rewards, terminated, truncated, cut_values = (
                torch.from_numpy(b).to(device) for b in (rewards_buf, terminated_buf, truncated_buf, truncation_values_buf)
            )
            rollout = (rewards, bonuses, values_buf, next_value, terminated, truncated, cut_values)
            advantages, value_targets = n_step_advantages(*rollout, args.gamma, "proper")
            b_advantages, b_value_targets = advantages.flatten(), value_targets.flatten()
            reg_advantages = regularized_advantages(b_advantages, logits_old, b_actions, args.tau)
            targets = damped_q_target(b_values, logits_old, b_actions, b_advantages, args.tau, args.eps)
            batch = Batch(b_obs, b_actions, b_values, theta_old, logits_old, jv, jtu, fvp, reg_advantages, targets)

        # The policy step with V_old held fixed (Section 5), then the value function: V -> Vhat = V_old + Delta.
        if args.solver == "npg":
            logs = npg_step(policy, policy_fn, batch, args)
        else:
            logs = damped_q_step(policy, policy_fn, batch, args, shuffle)
        for _ in range(args.value_epochs):
            for mb in torch.randperm(batch_size, generator=shuffle).to(device).split(batch_size // args.num_minibatches):
                value_loss = 0.5 * (value_fn(b_obs[mb]).squeeze(-1) - b_value_targets[mb]).pow(2).mean()
                value_optimizer.zero_grad()
                value_loss.backward()
                value_optimizer.step()
        logs["losses/value_loss"] = value_loss.detach()

        bad = [f"{tag} ({v.item()})" for tag, v in logs.items() if not torch.isfinite(v)]
        if bad:
            sys.exit(f"{PROG}: error: non-finite {', '.join(bad)} at global_step {global_step}, update {iteration}")
        for tag, v in logs.items():
            writer.add_scalar(tag, v.item(), global_step)
        writer.add_scalar("losses/explained_variance", explained_variance(b_values, b_value_targets).item(), global_step)
        writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)
        report(global_step, num_iterations * batch_size, episodic_returns, last_report)

        every = args.checkpoint_every
        if STOP or (every > 0 and (iteration == num_iterations or global_step % every < batch_size)):
            state = dict(args=vars(args), global_step=global_step, games_env0=games_env0, shuffle=shuffle.get_state())
            state |= dict(policy=policy.state_dict(), value=value.state_dict(), generator=generator.get_state())
            save_checkpoint(checkpoint_path, state | dict(value_optimizer=value_optimizer.state_dict()))
            if STOP:
                break
            # The envs' state cannot be saved, so a checkpoint ends the games in progress, here and in a run
            # resumed from it (their last rollout bootstrapped from V_old(s_T); not logged as games).
            obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
            game_return[:], game_length[:], video_frames = 0.0, 0, []
    stopped = bool(STOP)  # the loop wrote a checkpoint and broke off
    envs.close()

    if args.save_model and not stopped:
        model_path = f"{run_dir}/{args.exp_name}.cleanrl_model"
        torch.save({"policy": policy.state_dict(), "value": value.state_dict()}, model_path)
        print(f"model saved to {model_path}")
        video_path = f"videos/{run_name}/eval-game-0.gif" if args.capture_video else None
        eval_returns = evaluate(model_path, args.env_id, args.eval_episodes, args.num_envs, device, args.seed + 1, video_path)
        for idx, episodic_return in enumerate(eval_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)
        print(f"eval: mean episodic return {np.mean(eval_returns or [np.nan]):.2f} over {len(eval_returns)} games")
    writer.close()
    if STOP:  # after the checkpoint, or during the evaluation (which a signal cuts short)
        then = f"continue with: python {PROG} --resume {checkpoint_path}" if stopped else "evaluation cut short"
        print(f"{signal.Signals(STOP['signum']).name}: {then}", file=sys.stderr)
        sys.exit(128 + STOP["signum"])


def evaluate(model_path, env_id, eval_episodes, num_envs, device, seed, video_path=None) -> list[float]:
    """Play `eval_episodes` full games (all lives) sampling from the saved policy; return their raw
    scores. Each env plays a fixed quota of games, so short games are not over-represented."""
    envs = make_env(env_id, min(num_envs, eval_episodes), life_loss_terminal=False)
    policy = NatureCNN(envs.single_action_space.n, head_std=0.01).to(device)
    policy.load_state_dict(torch.load(model_path, map_location=device)["policy"])
    generator, n = torch.Generator().manual_seed(seed), envs.num_envs
    quota = [len(games) for games in np.array_split(np.arange(eval_episodes), n)]
    returns, running, frames = [[] for _ in range(n)], np.zeros(n), []
    obs, _ = envs.reset(seed=seed)
    while not STOP and any(len(r) < q for r, q in zip(returns, quota)):  # a signal (STOP) ends it early
        with torch.no_grad():
            actions = sample_actions(policy(torch.from_numpy(obs).to(device)).cpu(), generator).numpy()
        if video_path and not returns[0]:
            frames.append(obs[0, -1].copy())
        obs, reward, terminated, truncated, _ = envs.step(actions)
        running += reward
        for e in np.flatnonzero(terminated | truncated):
            if len(returns[e]) < quota[e]:
                returns[e].append(float(running[e]))
            running[e] = 0.0
    envs.close()
    if video_path and frames:  # none when a signal cut the evaluation short at once
        save_gif(frames, video_path)
    return [r for per_env in returns for r in per_env]


# identical in all four scripts: tests/test_copies.py. Plumbing, not the paper: resume, checkpoints, signals. ---------

MAY_CHANGE = "resume total_timesteps checkpoint_every checkpoint_replay track cuda compile cudagraphs".split()
STOP = {}  # "signum": the first SIGINT or SIGTERM, once it came (`stop_softly`)
PROG = os.path.basename(__file__)


def parse_args(argv: Optional[list[str]] = None) -> tuple[Args, Optional[dict]]:
    """tyro.cli(Args); with --resume, also the checkpoint, whose options become the defaults (but MAY_CHANGE's)."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--resume")
    path = peek.parse_known_args(argv)[0].resume
    if path is None:
        return tyro.cli(Args, args=argv), None
    checkpoint = load_checkpoint(path)
    if checkpoint.get("args", {}).keys() != {f.name for f in fields(Args)}:
        sys.exit(f"{PROG}: error: --resume {path}: not a checkpoint of this script")
    saved = Args.__new__(Args)  # unchecked: tyro checks the options once the command line is applied
    vars(saved).update(checkpoint["args"])
    args = tyro.cli(Args, args=argv, default=saved)
    changed = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k not in MAY_CHANGE and v != vars(saved)[k]]
    if changed:
        sys.exit(f"{PROG}: error: --resume {path}: {', '.join(changed)} cannot change in a resumed run")
    return args, checkpoint


def start_run(args: Args, checkpoint: Optional[dict]) -> tuple[str, str, SummaryWriter]:
    """(run_name, run_dir, TensorBoard writer). A new run gets runs/{run_name} of its own; a resumed one appends
    to its checkpoint's directory (and wandb run), and TensorBoard drops what was logged after the checkpoint."""
    if checkpoint:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
    else:
        run_dir = f"runs/{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        try:
            os.makedirs(run_dir)
        except FileExistsError:  # another run started in the same second
            run_dir += f"-{os.getpid()}"
    run_name = os.path.basename(run_dir)
    if args.track:
        import wandb

        kwargs = dict(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), save_code=True)
        run_id = (checkpoint or {}).get("wandb_id") or f"{run_name}-{zipfile.crc32(os.path.abspath(run_dir).encode()):08x}"
        wandb.init(**kwargs, sync_tensorboard=True, name=run_name, id=run_id, resume="allow")
    writer = SummaryWriter(run_dir, purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    return run_name, run_dir, writer


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save to PATH.tmp, then rename: a crash, a signal or a full disk mid-write leaves the last one intact."""
    try:
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as e:  # a full disk, say
        sys.exit(f"{PROG}: error: cannot write {path} ({e}); the previous checkpoint is intact, {path}.tmp may be partial")


def load_checkpoint(path: str) -> dict:
    """The checkpoint at `path` once zipfile has checked its CRC-32s (torch.load does not); else one line, exit 1."""
    try:
        with zipfile.ZipFile(path) as archive:
            if damaged := archive.testzip():
                raise zipfile.BadZipFile(f"{damaged} fails its CRC-32 check")
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # our own file; tensors not read twice
    except Exception as e:  # missing, truncated, foreign or damaged
        sys.exit(f"{PROG}: error: --resume {path}: not a checkpoint, or damaged ({str(e).strip().splitlines()[0]})")


def restart_seed(seed: int, global_step: int) -> int:
    """The envs' seed at `global_step` (a checkpoint restarts the games): the same in a run and in its resumption."""
    return seed if global_step == 0 else int(np.random.SeedSequence([seed, global_step]).generate_state(1)[0] >> 2)


def stop_softly(signum, frame) -> None:
    """The SIGINT (Ctrl-C) and SIGTERM (preemption) handler, set as main() starts: the first lets the run finish its
    update and write a checkpoint (STOP is then set); a second exits at once, the last checkpoint intact."""
    if STOP:
        sys.exit(128 + signum)
    STOP["signum"] = signum
    print(f"\n{signal.Signals(signum).name}: stopping after this update, with a checkpoint", file=sys.stderr)


def report(step: int, total: int, returns: list, last: list, learning_starts: int = 0) -> None:
    """Every 10 s one line: steps, SPS and ETA over the last 10 s (`last` = [time, step], updated), the mean return
    of the last 20 games. No ETA before learning starts (DQN's warm-up is much faster than its training)."""
    now = time.time()
    if now - last[0] >= 10:
        sps = (step - last[1]) / (now - last[0])
        eta = datetime.timedelta(seconds=round((total - step) / max(sps, 1e-9)))
        eta = f"ETA {eta}" if last[1] >= learning_starts else f"learning from step {learning_starts:,}, then an ETA"
        mean = np.mean(returns[-20:] or [np.nan])
        print(f"{step:,}/{total:,} steps | {sps:,.0f} SPS | return {mean:.1f} (last 20 games) | {eta}", flush=True)
        last[:] = now, step


def video_schedule(game_index: int) -> bool:
    """Record games 0, 1, 8, 27, ..., 729, then every 1000th (gymnasium's capped cubic)."""
    return round(game_index ** (1 / 3)) ** 3 == game_index if game_index < 1000 else game_index % 1000 == 0


def save_gif(frames: list, path: str, fps: int = 15) -> None:
    """What the agent sees (84x84 grayscale), at the agent's 15 decisions per second."""
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


if __name__ == "__main__":
    main()
