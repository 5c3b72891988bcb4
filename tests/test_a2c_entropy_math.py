"""a2c_entropy.py's math: n-step advantages in both modes against hand-worked rollouts, the
policy-gradient loss against the eq. 79/80 estimators written out by hand, the optimizer."""

import math

import numpy as np
import pytest
import torch

import a2c_entropy as a2c


def advantages(
    rewards, bonuses, values, next_value, terminated, truncated=None, truncation_values=None, gamma=0.5, mode="proper"
):
    """n_step_advantages on (T, N) lists, float64; truncation defaults to never."""
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    terminated = torch.tensor(terminated)
    truncated = torch.zeros_like(terminated) if truncated is None else torch.tensor(truncated)
    cut_values = torch.zeros(terminated.shape, dtype=torch.float64) if truncation_values is None else f(truncation_values)
    return a2c.n_step_advantages(
        f(rewards), f(bonuses), f(values), f(next_value), terminated, truncated, cut_values, gamma, mode
    )


# One rollout, T = 4 steps of 4 envs (columns), gamma = 0.5:
#   env 0: a termination in the middle (after step 1): steps 0-1 and 2-3 are separate episodes;
#   env 1: a termination at the last step: V(s_T) = 100 must not be used;
#   env 2: a truncation after step 1 (time limit, V of the cut state = 8), then a new game;
#   env 3: terminated and truncated in the same step (a game over at the time limit): no bootstrap.
REWARDS = [[1, 0, 0, 1], [0, 1, 1, 1], [2, 0, 0, 1], [1, 1, 1, 1]]
BONUSES = [[0.1, -0.1, 0.5, 0], [0.2, -0.2, 0.5, 0], [0.3, -0.3, 0.5, 0], [0.4, -0.4, 0.5, 0]]
VALUES = [[0.5, 1, 1, 0], [1, 1, 1, 0], [1.5, 1, 1, 0], [2, 1, 1, 0]]
NEXT_VALUE = [4, 100, 2, 2]
TERMINATED = [
    [False, False, False, False],
    [True, False, False, True],
    [False, False, False, False],
    [False, True, False, False],
]
TRUNCATED = [
    [False, False, False, False],
    [False, False, True, True],
    [False, False, False, False],
    [False, False, False, False],
]
TRUNCATION_VALUES = [[0, 0, 0, 0], [0, 0, 8, 50], [0, 0, 0, 0], [0, 0, 0, 0]]

# Worked backwards from t = 3 (Vhat_t = r_t [+ bonus_t] + gamma * Vhat_{t+1}, cut at terminations):
PROPER_RETURNS = [
    # env 0: 3.4 = 1+.4+.5*4; 4.0 = 2+.3+.5*3.4; 0.2 = 0+.2 (terminated); 1.2 = 1+.1+.5*.2
    # env 1: 0.6 = 1-.4 (terminated, no bootstrap); 0.0 = 0-.3+.5*.6; 0.8 = 1-.2+0; -0.1+.5*.8 = 0.3
    # env 2: 2.5 = 1+.5+.5*2; 1.75 = 0+.5+.5*2.5; 5.5 = 1+.5+.5*8 (truncated: V(cut state)); 0+.5+.5*5.5 = 3.25
    # env 3: 2 = 1+.5*2; 2 = 1+.5*2; 1 (terminated: the 50 is not used); 1.5 = 1+.5*1
    [1.2, 0.3, 3.25, 1.5],
    [0.2, 0.8, 5.5, 1.0],
    [4.0, 0.0, 1.75, 2.0],
    [3.4, 0.6, 2.5, 2.0],
]
NAIVE_RETURNS = [
    # env 0: 3 = 1+.5*4; 3.5 = 2+.5*3; 0 (terminated); 1 = 1+.5*0.  env 1: 1; .5; 1.25; .625.
    # env 2: 2 = 1+.5*2; 1 = 0+.5*2; 5 = 1+.5*8 (truncated); 2.5 = 0+.5*5.  env 3: no bonuses, as proper
    [1.0, 0.625, 2.5, 1.5],
    [0.0, 1.25, 5.0, 1.0],
    [3.5, 0.5, 1.0, 2.0],
    [3.0, 1.0, 2.0, 2.0],
]


@pytest.mark.parametrize("mode, expected", [("proper", PROPER_RETURNS), ("naive", NAIVE_RETURNS)])
def test_n_step_advantages_hand_worked(mode, expected):
    adv, returns = advantages(REWARDS, BONUSES, VALUES, NEXT_VALUE, TERMINATED, TRUNCATED, TRUNCATION_VALUES, mode=mode)
    torch.testing.assert_close(returns, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv, returns - torch.tensor(VALUES, dtype=torch.float64), rtol=0, atol=0)


def test_advantage_is_the_discounted_sum_of_td_errors():
    """Delta_t = sum_d gamma^d delta_{t+d}, delta_t = r_t + bonus_t + gamma V(s_{t+1}) - V(s_t) (eqs. 36, 52)."""
    rng = np.random.default_rng(0)
    T, gamma = 6, 0.9
    r, b, v = rng.normal(size=(3, T, 1))
    v_next = rng.normal(size=1)
    adv, _ = advantages(r, b, v, v_next, np.zeros((T, 1), dtype=bool), gamma=gamma)
    v_ext = np.concatenate([v[:, 0], v_next])
    delta = r[:, 0] + b[:, 0] + gamma * v_ext[1:] - v_ext[:-1]
    expected = [sum(gamma**d * delta[t + d] for d in range(T - t)) for t in range(T)]
    np.testing.assert_allclose(adv[:, 0].numpy(), expected, rtol=1e-12)


def random_rollout(seed, T=5, N=4, num_actions=6):
    g = torch.Generator().manual_seed(seed)
    return dict(
        rewards=torch.randint(-1, 2, (T, N), generator=g).double(),
        logits=3 * torch.randn(T, N, num_actions, generator=g, dtype=torch.float64),
        values=torch.randn(T, N, generator=g, dtype=torch.float64),
        next_value=torch.randn(N, generator=g, dtype=torch.float64),
        terminated=torch.rand(T, N, generator=g) < 0.2,
        truncated=torch.rand(T, N, generator=g) < 0.1,
        truncation_values=torch.randn(T, N, generator=g, dtype=torch.float64),
    )


def run_n_step(ro, bonuses, mode, rewards=None, gamma=0.97):
    return a2c.n_step_advantages(
        ro["rewards"] if rewards is None else rewards, bonuses, ro["values"], ro["next_value"], ro["terminated"],
        ro["truncated"], ro["truncation_values"], gamma, mode,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
def test_proper_with_tau_zero_is_naive(seed, regularizer):
    ro = random_rollout(seed)
    naive = run_n_step(ro, a2c.reward_bonus(ro["logits"], 0.01, regularizer), "naive")
    proper = run_n_step(ro, a2c.reward_bonus(ro["logits"], 0.0, regularizer), "proper")
    for got, want in zip(proper, naive):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # and with tau > 0 the modes really differ
    assert not torch.allclose(run_n_step(ro, a2c.reward_bonus(ro["logits"], 0.01, regularizer), "proper")[0], naive[0])


@pytest.mark.parametrize("seed", range(5))
def test_entropy_and_kl_forms_differ_by_the_reward_constant_tau_log_A(seed):
    ro, tau = random_rollout(seed), 0.05
    log_a = math.log(ro["logits"].shape[-1])
    entropy_bonus = a2c.reward_bonus(ro["logits"], tau, "entropy")
    kl_bonus = a2c.reward_bonus(ro["logits"], tau, "kl")
    torch.testing.assert_close(entropy_bonus - kl_bonus, torch.full_like(kl_bonus, tau * log_a), rtol=0, atol=1e-12)
    with_entropy = run_n_step(ro, entropy_bonus, "proper")
    with_kl_plus_constant = run_n_step(ro, kl_bonus, "proper", rewards=ro["rewards"] + tau * log_a)
    for got, want in zip(with_entropy, with_kl_plus_constant):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_entropy_and_kl_of_the_policy():
    entropy, kl = a2c.entropy_and_kl(torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(entropy, torch.full((2,), math.log(5), dtype=torch.float64))
    torch.testing.assert_close(kl, torch.zeros(2, dtype=torch.float64))
    logits = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64)  # pi = (1/4, 3/4)
    entropy, kl = a2c.entropy_and_kl(logits)
    torch.testing.assert_close(entropy, torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))], dtype=torch.float64))
    torch.testing.assert_close(kl, torch.tensor([0.25 * math.log(0.5) + 0.75 * math.log(1.5)], dtype=torch.float64))
    entropy, kl = a2c.entropy_and_kl(torch.tensor([[0.0, -1e4, -1e4]]))  # a deterministic policy: finite
    assert torch.isfinite(entropy).all() and torch.isfinite(kl).all() and abs(kl.item() - math.log(3)) < 1e-5


@pytest.mark.parametrize("mode", ["proper", "naive"])
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
def test_loss_gradient_is_the_paper_estimator_by_hand(mode, regularizer):
    """Autograd of a2c_loss on a softmax-linear policy pi = softmax(x W) and a linear value
    V = x u equals, in float64, eq. 80 (proper) or eq. 79 (naive) written out term by term:

        g_W = mean_t [ x_t (onehot(a_t) - pi_t)^T Delta_t  -  tau * x_t (pi_t * (log pi_t + H_t))^T ]
        Delta_t = sum_{d=0}^{m} gamma^d (r_{t+d} [- tau KL_{t+d} | + tau H_{t+d}]) + gamma^{m+1} V(s_{t+m+1}) - V(s_t)

    (grad_z KL = pi * (log pi + H) for logits z), with the sum running to the rollout's end or
    to the first termination (then no bootstrap); and g_u = -c * mean_t (V(s_t) - Vhat_t) x_t.
    The gradient is that of the loss, i.e. minus the ascent direction, hence the signs below.
    """
    torch.manual_seed(0)
    T, N, F_, A, tau, gamma, c = 5, 3, 4, 3, 0.3, 0.9, 0.5
    x = torch.randn(T, N, F_, dtype=torch.float64)
    x_next = torch.randn(N, F_, dtype=torch.float64)
    W = torch.randn(F_, A, dtype=torch.float64, requires_grad=True)
    u = torch.randn(F_, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, A, (T, N))
    rewards = torch.randn(T, N, dtype=torch.float64)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    terminated[1, 0] = terminated[4, 1] = True
    no = torch.zeros(T, N, dtype=torch.bool)

    logits, values = x @ W, x @ u
    next_value = (x_next @ u).detach()
    bonus = a2c.reward_bonus(logits.detach(), tau, regularizer)
    adv, vhat = a2c.n_step_advantages(
        rewards, bonus, values.detach(), next_value, terminated, no, torch.zeros(T, N, dtype=torch.float64), gamma, mode
    )
    loss, _ = a2c.a2c_loss(
        logits.flatten(0, 1), values.flatten(), actions.flatten(), adv.flatten(), vhat.flatten(), tau, regularizer, c
    )
    g_W, g_u = torch.autograd.grad(loss, [W, u])

    with torch.no_grad():
        pi = torch.softmax(logits, -1)
        log_pi = torch.log(pi)
        H = -(pi * log_pi).sum(-1)
        KL = math.log(A) - H
        V = values
        hand_W = torch.zeros(F_, A, dtype=torch.float64)
        hand_u = torch.zeros(F_, dtype=torch.float64)
        for n in range(N):
            for t in range(T):
                delta, d = 0.0, 0
                while True:  # eq. 79 / 80: the n-step sum, cut at a termination
                    step_reward = rewards[t + d, n]
                    if mode == "proper":  # eq. 80: -tau KL (kl form) or +tau H (entropy form)
                        step_reward = step_reward + (-tau * KL[t + d, n] if regularizer == "kl" else tau * H[t + d, n])
                    delta += gamma**d * step_reward
                    if terminated[t + d, n]:
                        break
                    if t + d == T - 1:
                        delta += gamma ** (d + 1) * next_value[n]
                        break
                    d += 1
                vhat_t, delta = delta, delta - V[t, n]
                onehot = torch.nn.functional.one_hot(actions[t, n], A).double()
                grad_log_pi = torch.outer(x[t, n], onehot - pi[t, n])
                grad_kl = torch.outer(x[t, n], pi[t, n] * (log_pi[t, n] + H[t, n]))
                hand_W += -(grad_log_pi * delta - tau * grad_kl)
                hand_u += c * (V[t, n] - vhat_t) * x[t, n]
        hand_W /= T * N
        hand_u /= T * N
    torch.testing.assert_close(g_W, hand_W, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_u, hand_u, rtol=1e-10, atol=1e-12)


def test_loss_parts():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]])
    values = torch.tensor([1.0, 2.0])
    loss, parts = a2c.a2c_loss(
        logits, values, torch.tensor([0, 1]), torch.tensor([2.0, -1.0]), torch.tensor([0.0, 4.0]), 0.1, "kl", 0.5
    )
    policy_loss = -(math.log(0.5) * 2.0 + math.log(0.75) * -1.0) / 2
    kl = (0.0 + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    value_loss = 0.5 * (1.0 + 4.0) / 2
    assert parts["policy_loss"].item() == pytest.approx(policy_loss)
    assert parts["value_loss"].item() == pytest.approx(value_loss)
    assert parts["kl"].item() == pytest.approx(kl)
    assert loss.item() == pytest.approx(policy_loss + 0.1 * kl + 0.5 * value_loss)


def test_rmsprop_is_tensorflows():
    """ms starts at 1 and eps goes inside the root: p1 = p0 - lr g / sqrt(alpha + (1-alpha) g^2 + eps)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = a2c.RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-5)
    expected = p.detach().clone()
    ms = torch.ones(3, dtype=torch.float64)
    for grad in ([0.5, -1.0, 0.0], [2.0, 0.1, -3.0]):
        g = torch.tensor(grad, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        ms = 0.9 * ms + 0.1 * g**2
        expected = expected - 0.1 * g / torch.sqrt(ms + 1e-5)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=1e-14)
    opt.param_groups[0]["lr"] = 0.0  # the annealed learning rate is read at each step
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0)


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert a2c.explained_variance(y, y).item() == 1.0
    assert a2c.explained_variance(torch.full_like(y, 2.5), y).item() == pytest.approx(0.0)
    assert a2c.explained_variance(-y, y).item() < 0
    assert math.isnan(a2c.explained_variance(y, torch.ones(4)).item())


def test_sample_actions_follow_the_policy():
    probs = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    actions = a2c.sample_actions(probs.log().expand(200_000, 3), torch.Generator().manual_seed(0))
    freq = torch.bincount(actions, minlength=3).double() / len(actions)
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.005)  # 7 standard errors
    again = a2c.sample_actions(probs.log().expand(200_000, 3), torch.Generator().manual_seed(0))
    assert torch.equal(actions, again)
    nan = a2c.sample_actions(torch.full((4, 3), float("nan")), torch.Generator().manual_seed(0))
    assert ((nan >= 0) & (nan < 3)).all()  # a diverged policy still yields valid actions
