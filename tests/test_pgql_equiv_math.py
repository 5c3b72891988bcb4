"""pgql_equiv.py's theorem: the soft Q-learning gradient equals the policy gradient (plus the
value gradient) in expectation over actions (Section 4, eqs. 58-65; the bandit case of
Section 2, eq. 23), checked exactly in float64 on random small networks, with negative
controls that show the check has teeth."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pgql_equiv as pq


class TinyActorCritic(nn.Module):
    """A shared tanh layer, a policy head and a value head, float64."""

    def __init__(self, features: int, num_actions: int, hidden: int = 8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, hidden), nn.Tanh()).double()
        self.actor = nn.Linear(hidden, num_actions).double()
        self.critic = nn.Linear(hidden, 1).double()

    def forward(self, x):
        h = self.trunk(x)
        return 2 * self.actor(h), self.critic(h).squeeze(-1)


def random_batch(seed: int, regularizer: str):
    """A random network, tau, gamma, rollout length and episode ends; returns what the update
    sees: flattened logits and values (with graph), advantages and value targets, and tau."""
    g = torch.Generator().manual_seed(seed)
    T = int(torch.randint(1, 7, (1,), generator=g))
    N, features, A = 3, 5, int(torch.randint(2, 7, (1,), generator=g))
    tau = float(10 ** (-3 + 3 * torch.rand(1, generator=g)))  # 1e-3 .. 1
    gamma = float(0.5 + 0.5 * torch.rand(1, generator=g))
    torch.manual_seed(seed)
    net = TinyActorCritic(features, A)
    x = torch.randn(T, N, features, generator=g, dtype=torch.float64)
    logits, values = net(x)
    _, next_value = net(torch.randn(N, features, generator=g, dtype=torch.float64))
    advantages, value_targets = pq.n_step_advantages(
        torch.randint(-1, 2, (T, N), generator=g).double(),
        pq.reward_bonus(logits.detach(), tau, regularizer),
        values.detach(),
        next_value.detach(),
        torch.rand(T, N, generator=g) < 0.3,
        torch.rand(T, N, generator=g) < 0.1,
        torch.randn(T, N, generator=g, dtype=torch.float64),
        gamma,
        "proper",
    )
    actions = torch.randint(0, A, (T * N,), generator=g)
    flat = (logits.flatten(0, 1), values.flatten(), advantages.flatten(), value_targets.flatten())
    return net, flat, actions, tau


def flat_grad(loss, net):
    grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True, materialize_grads=True)
    return torch.cat([g.flatten() for g in grads])


def action_dependent(advantages, num_actions, seed):
    """Delta(s, a): the batch's Delta_t plus noise per action (with Delta_t alone, the policy-gradient
    term E_a[Delta_t grad log pi] = 0 would drop out of both sides)."""
    g = torch.Generator().manual_seed(seed)
    return advantages[:, None] + torch.randn(len(advantages), num_actions, generator=g, dtype=advantages.dtype)


def reference_expected_a2c(logits, values, deltas, tau, regularizer, c):
    """E_a over pi (held constant) of the A2C loss with Delta(s, a), Vhat = V + Delta(s, a), written
    out independently of the script: -E_a[Delta log pi] + tau KL (or -tau H) + c E_a[1/2 (V - Vhat)^2]."""
    pi = torch.softmax(logits, -1).detach()
    entropy, kl = pq.entropy_and_kl(logits)
    policy = -(pi * F.log_softmax(logits, -1) * deltas).sum(-1).mean()
    value = 0.5 * (pi * (values[:, None] - (values.detach()[:, None] + deltas)).pow(2)).sum(-1).mean()
    return policy + (tau * kl.mean() if regularizer == "kl" else -tau * entropy.mean()) + c * value


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
@pytest.mark.parametrize("grad_scaling", [True, False], ids=["scaled", "unscaled"])
def test_expected_soft_q_gradient_equals_the_policy_gradient(seed, regularizer, grad_scaling):
    """Scaled: E_a grad L_QL = grad E_a L_a2c (c = 0.5). Unscaled: = tau * grad E_a L_a2c(c = 1/tau). With
    Delta(s, a) depending on the action, and the PG side equal to an independent formula."""
    net, (logits, values, advantages, _), _, tau = random_batch(seed, regularizer)
    deltas = action_dependent(advantages, logits.shape[-1], seed)
    ql, pg = pq.expected_losses(logits, values, deltas, tau, regularizer, 0.5, grad_scaling)
    reference = reference_expected_a2c(logits, values, deltas, tau, regularizer, 0.5 if grad_scaling else 1 / tau)
    g_ql, g_pg = flat_grad(ql, net), flat_grad(pg, net)
    torch.testing.assert_close(g_pg, (1.0 if grad_scaling else tau) * flat_grad(reference, net), rtol=1e-10, atol=1e-13)
    assert g_pg.norm() > 1e-6
    assert (g_ql - g_pg).norm() / g_pg.norm() <= 1e-8
    cosine, rel_error = pq.gradient_agreement(ql, pg, list(net.parameters()))  # what training logs
    assert rel_error <= 1e-8 and cosine == pytest.approx(1.0, abs=1e-12)


def expected_ql_with(logits, values, deltas, tau, scales, drop=None):
    """E_a 1/2 (Q(s,a) - y(s,a))^2 assembled from the script's parts, optionally without one of them."""
    pi = torch.softmax(logits, -1).detach()
    _, kl = pq.entropy_and_kl(logits)
    q = pq.soft_q_values(logits, torch.zeros_like(values) if drop == "value stream" else values, tau, *scales)
    y = (tau * (0 if drop == "tau*KL_t in y_t" else kl) + values)[:, None].detach() + deltas
    return 0.5 * (pi * (q - y).pow(2)).sum(-1).mean()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("grad_scaling", [True, False], ids=["scaled", "unscaled"])
def test_negative_controls_break_the_identity(seed, grad_scaling):
    net, (logits, values, advantages, _), _, tau = random_batch(seed, "kl")
    deltas = action_dependent(advantages, logits.shape[-1], seed)
    scales = pq.soft_q_scales(tau, 0.5, grad_scaling)
    ql, pg = pq.expected_losses(logits, values, deltas, tau, "kl", 0.5, grad_scaling)
    g_pg = flat_grad(pg, net)
    # the assembly below is the script's QL loss when nothing is dropped ...
    torch.testing.assert_close(flat_grad(expected_ql_with(logits, values, deltas, tau, scales), net), flat_grad(ql, net))
    # ... and each omission moves the gradient off the policy gradient
    for drop in ("value stream", "tau*KL_t in y_t"):
        g_bad = flat_grad(expected_ql_with(logits, values, deltas, tau, scales, drop), net)
        assert (g_bad - g_pg).norm() / g_pg.norm() > 1e-5, drop  # >= 1000x the identity's tolerance


# Plausible bugs in the code that trains. The live check (`equivalence_check`, what a run logs as
# equiv/*) must see each one: cosine_expected below 0.99 or rel_error_expected above 1e-2.
A2C_LOSS, SOFT_Q_SCALES = pq.a2c_loss, pq.soft_q_scales
MUTANTS = {
    "policy term's sign flipped": (
        "a2c_loss",
        lambda lg, v, a, adv, vhat, tau, reg, c: A2C_LOSS(lg, v, a, -adv, vhat, tau, reg, c),
    ),
    "tau * grad KL dropped": ("a2c_loss", lambda lg, v, a, adv, vhat, tau, reg, c: A2C_LOSS(lg, v, a, adv, vhat, 0.0, reg, c)),
    "value coefficient 1, not c": ("soft_q_scales", lambda tau, c, scaled: SOFT_Q_SCALES(tau, 1.0, scaled)),
    "1/gamma, not 1/tau": ("soft_q_scales", lambda tau, c, scaled: (c, 1 / 0.99) if scaled else (1.0, 1.0)),
}


def atari_batch(rollout, tau):
    """A real batch: 5 steps x 3 envs of Breakout play through the script's network, with Delta_t and Vhat_t
    from `n_step_advantages`. The policy head is re-initialized away from uniform: at the script's init
    (logits ~ 0) grad KL is ~0 and a dropped KL term would change nothing."""
    torch.manual_seed(0)
    net = pq.ActorCritic(4)
    nn.init.orthogonal_(net.actor.weight, 1.0)
    obs = torch.from_numpy(np.concatenate(rollout.obs[100:105]))
    logits, values = net(obs)
    _, next_value = net(torch.from_numpy(rollout.obs[105]))
    steps = [torch.from_numpy(np.array(x[100:105])) for x in (rollout.rewards, rollout.terminated, rollout.truncated)]
    advantages, value_targets = pq.n_step_advantages(
        steps[0].float(), pq.reward_bonus(logits.detach().view(5, 3, 4), tau, "entropy"), values.detach().view(5, 3),
        next_value.detach(), steps[1], steps[2], torch.zeros(5, 3), 0.99, "proper",
    )  # fmt: skip
    actions = torch.from_numpy(np.concatenate(rollout.actions[100:105]))
    return net, (logits, values, actions, advantages.flatten(), value_targets.flatten())


def linear_batch(tau):
    """A float64 softmax-linear policy and linear value on random features."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    net = nn.Linear(6, 5 + 1).double()
    logits, values = net(x).split([5, 1], dim=-1)
    values = values.squeeze(-1)
    advantages = torch.randn(32, generator=g, dtype=torch.float64)
    return net, (logits, values, torch.randint(0, 5, (32,), generator=g), advantages, values.detach() + advantages)


@pytest.mark.parametrize("batch", ["atari", "linear"])
@pytest.mark.parametrize("mutant", [None, *MUTANTS])
def test_the_live_check_sees_each_plausible_bug(batch, mutant, rollout, monkeypatch):
    tau = 0.1
    net, inputs = atari_batch(rollout, tau) if batch == "atari" else linear_batch(tau)
    if mutant:
        monkeypatch.setattr(pq, *MUTANTS[mutant])
    cosine, rel_error, _ = pq.equivalence_check(*inputs, tau, "entropy", 0.5, True, list(net.parameters()))
    if mutant is None:  # float32 rounding (atari) or float64 (linear)
        assert rel_error < (1e-5 if batch == "atari" else 1e-12) and cosine == pytest.approx(1.0, abs=1e-9)
    else:
        assert cosine < 0.99 or rel_error > 1e-2, (cosine, rel_error)


@pytest.mark.parametrize("seed", range(4))
def test_per_sample_difference_does_not_depend_on_delta(seed):
    """grad L_QL(s,a) - grad L_a2c(s,a) = tau [(l_a - KL)(grad log pi + c grad V) - grad KL]
    (docs/paper.md): on the sampled actions training uses, changing every Delta_t (and Vhat_t with
    it) must leave the difference of the two gradients where it was."""
    net, (logits, values, advantages, value_targets), actions, tau = random_batch(seed, "entropy")

    def difference(adv):
        vhat = values.detach() + adv
        ql = pq.ql_loss(logits, values, actions, adv, tau, 0.5, True)
        pg, _ = pq.a2c_loss(logits, values, actions, adv, vhat, tau, "entropy", 0.5)
        return flat_grad(ql, net) - flat_grad(pg, net)

    base = difference(advantages)
    shifted = difference(advantages + 3 * torch.randn_like(advantages))
    torch.testing.assert_close(shifted, base, rtol=1e-9, atol=1e-12)
    assert base.norm() > 1e-6  # the samples do differ: only the expectation agrees


@pytest.mark.parametrize("grad_scaling", [True, False], ids=["scaled", "unscaled"])
def test_bandit_case(grad_scaling):
    """Section 2, eq. 23: one state, reward r(a); q(a) = v + tau log(pi(a)/pibar(a)). Then
    E_a grad 1/2 (q(a) - r(a))^2 = -tau grad eta + grad 1/2 (v - (E_pi r - tau KL))^2, with
    grad eta = E_a[grad log pi(a) r(a)] - tau grad KL; with the scaling, the tau on grad eta
    is gone and the value term is weighted by c."""
    torch.manual_seed(0)
    A, tau, c = 5, 0.2, 0.5
    theta = torch.randn(A, dtype=torch.float64, requires_grad=True)  # logits of pi
    v = torch.randn(1, dtype=torch.float64, requires_grad=True)
    r = torch.randn(A, dtype=torch.float64)
    logits = theta[None]
    pi = torch.softmax(logits, -1).detach()
    scales = pq.soft_q_scales(tau, c, grad_scaling)
    q = pq.soft_q_values(logits, v, tau, *scales)
    ql = 0.5 * (pi * (q - r).pow(2)).sum()
    _, kl = pq.entropy_and_kl(logits)
    eta = (pi * F.log_softmax(logits, -1) * r).sum() - tau * kl.sum()  # its gradient is grad eta
    value_fit = 0.5 * (v - ((pi * r).sum() - tau * kl).detach()).pow(2).sum()
    reference = (-eta + c * value_fit) if grad_scaling else (-tau * eta + value_fit)
    for got, want in zip(torch.autograd.grad(ql, [theta, v], retain_graph=True), torch.autograd.grad(reference, [theta, v])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_gscale_scales_the_gradient_only():
    x = torch.tensor([0.3, -1.7, 12.5], requires_grad=True)
    y = pq.gscale(x, 100.0)
    assert torch.equal(y, x)  # exactly: forward values unchanged
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 100.0))


def test_soft_q_values_define_pi_and_v():
    """Q = V + tau log(pi/pibar): its Boltzmann policy softmax(Q/tau) is pi, and its soft value
    tau log E_{pibar} exp(Q/tau) is V (eqs. 27-31, 57)."""
    torch.manual_seed(1)
    logits, values, tau = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64), 0.05
    q = pq.soft_q_values(logits, values, tau)
    torch.testing.assert_close(torch.softmax(q / tau, -1), torch.softmax(logits, -1))
    torch.testing.assert_close(tau * torch.logsumexp(q / tau, -1) - tau * math.log(6), values)
    # and E_pi[Q] - tau KL = V (eq. 31)
    pi = torch.softmax(logits, -1)
    torch.testing.assert_close((pi * q).sum(-1) - tau * pq.entropy_and_kl(logits)[1], values)
