"""Section 5 checked in float64: damped soft Q-learning is a natural policy gradient step.

On a softmax-linear policy with random features (its parameters identifiable, B > P, so
Psi^T Psi is invertible) and on a small MLP policy:
(1) the Gauss-Newton step of the damped-Q regression is (eps/tau) (Psi^T Psi)^-1 Psi^T A, and
    with the proximal term it is the damped CG natural step the npg solver takes;
(2) the damped-Q regression solved to convergence tends to that step as eps -> 0, its error
    shrinking linearly in eps;
(3) negative control: the undamped soft-Q regression (eps = 1, eqs. 72-73) does not match;
(4) the matrix-free Fisher-vector products and CG match dense matrices and a dense solve.
"""

import math

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

import natural_pg_damped as npgd
from natural_pg_damped import (
    Args,
    Batch,
    conjugate_gradient,
    damped_q_loss,
    damped_q_target,
    fisher_cosine,
    fisher_vector_product,
    kl_backtrack,
    log_ratio,
    logit_fisher,
    mean_kl,
    quadratic_kl,
    npg_residual,
    policy_gradient,
    policy_jacobian,
    proximal_term,
    regularized_advantages,
    entropy_and_kl,
)

jacobian = torch.autograd.functional.jacobian


class SoftmaxLinear(nn.Module):
    """logits = [x W^T, 0]: the last action's logit is pinned at 0, so no parameter direction
    leaves the policy unchanged (softmax ignores a shift shared by all logits)."""

    def __init__(self, features: int, actions: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(actions - 1, features, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.weight.T
        return torch.cat([z, torch.zeros_like(z[:, :1])], dim=-1)


def flat_logits(model: nn.Module, obs: torch.Tensor):
    """theta (flat) -> the model's logits on obs: written here, independently of policy_jacobian."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    sizes = [math.prod(s) for s in shapes]
    return lambda theta: functional_call(model, {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}, (obs,))


def problem(model: nn.Module, obs: torch.Tensor, tau: float, seed: int) -> dict:
    """A batch under pi_old = model: sampled actions, V_old, n-step advantages Delta, and the
    dense Psi (rows psi_t = grad log pi(a_t|s_t)) and A (eq. 71)."""
    gen = torch.Generator().manual_seed(seed)
    logits_of = flat_logits(model, obs)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    logits = logits_of(theta).detach()
    actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
    delta = torch.randn(len(obs), generator=gen, dtype=torch.float64)
    values = torch.randn(len(obs), generator=gen, dtype=torch.float64)
    psi = jacobian(lambda th: log_ratio(logits_of(th), actions), theta)  # log pibar is a constant
    return dict(
        obs=obs,
        logits_of=logits_of,
        theta=theta,
        logits=logits,
        actions=actions,
        delta=delta,
        values=values,
        psi=psi,
        A=regularized_advantages(delta, logits, actions, tau),
    )


def linear_problem(tau: float, seed: int, batch: int = 300, features: int = 5, actions: int = 4) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model = SoftmaxLinear(features, actions)
    obs = torch.randn(batch, features, dtype=torch.float64)
    return model, problem(model, obs, tau, seed)


def damped_residual(p: dict, theta: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """Q_theta(s_t,a_t) - Qhat^eps_t with Q_theta = V_old + tau log(pi_theta/pibar) (eq. 77)."""
    q = p["values"] + tau * log_ratio(p["logits_of"](theta), p["actions"])
    return q - damped_q_target(p["values"], p["logits"], p["actions"], p["delta"], tau, eps)


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x - y).norm() / y.norm()).item()


@pytest.mark.parametrize("tau, eps", [(0.01, 0.5), (0.1, 0.05), (1.0, 1e-3)])
def test_damped_q_residual_is_tau_times_the_natural_gradient_residual(tau, eps):
    """eq. 78, term by term, at any theta (not only theta_old)."""
    model, p = linear_problem(tau, seed=0)
    theta = p["theta"] + 0.3 * torch.randn_like(p["theta"])
    logits = p["logits_of"](theta)
    expected = tau * npg_residual(logits, p["logits"], p["actions"], p["A"], tau, eps)
    assert torch.allclose(damped_residual(p, theta, tau, eps), expected, rtol=1e-12, atol=1e-12)
    targets = damped_q_target(p["values"], p["logits"], p["actions"], p["delta"], tau, eps)
    loss = damped_q_loss(logits, p["values"], p["actions"], targets, tau)
    assert torch.allclose(loss, 0.5 * damped_residual(p, theta, tau, eps).pow(2).mean(), rtol=1e-12)


def test_undamped_target_is_the_soft_q_target():
    """eps = 1: Qhat = V_old + tau KL_old + Delta (eqs. 72-73); eps -> 0: Q_old."""
    tau = 0.1
    model, p = linear_problem(tau, seed=1)
    kl = entropy_and_kl(p["logits"])[1]
    q_old = p["values"] + tau * (torch.log_softmax(p["logits"], -1).gather(1, p["actions"][:, None]).squeeze(1) + math.log(4))
    full = damped_q_target(p["values"], p["logits"], p["actions"], p["delta"], tau, 1.0)
    assert torch.allclose(full, p["values"] + tau * kl + p["delta"], rtol=1e-12)
    tiny = damped_q_target(p["values"], p["logits"], p["actions"], p["delta"], tau, 1e-12)
    assert torch.allclose(tiny, q_old, atol=1e-10)


def test_regularized_advantage_scores_the_kl_gradient():
    """With the expectation over actions taken exactly and Delta = 0, Psi^T A / B is
    -tau grad KL[pi || pibar]: A carries the entropy regularizer's gradient (eq. 71)."""
    tau = 0.3
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    obs = torch.randn(10, 3, dtype=torch.float64)
    every = obs.repeat_interleave(4, dim=0)  # each state with each of its 4 actions
    actions = torch.arange(4).repeat(10)
    theta, logits, jv, jtu = policy_jacobian(model, every)
    weights = torch.softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)  # pi(a|s), held constant
    reg = regularized_advantages(torch.zeros(40, dtype=torch.float64), logits, actions, tau)
    g = policy_gradient(jtu, logits, actions, 4 * weights * reg)  # sum_a pi(a|s) psi_a A_a, averaged over s
    logits_of = flat_logits(model, obs)
    kl_grad = jacobian(lambda th: -tau * entropy_and_kl(logits_of(th))[1].mean(), theta)
    assert rel(g, kl_grad) < 1e-10


@pytest.mark.parametrize("tau, eps, damping", [(0.1, 0.5, 0.0), (0.01, 0.02, 0.0), (1.0, 1.0, 0.0), (0.1, 0.5, 1e-2)])
def test_gauss_newton_step_of_damped_q_regression_is_the_natural_step(tau, eps, damping):
    """(1): -(J^T J / B + H_prox)^-1 grad L at theta_old, for L = the damped-Q loss + the
    proximal term, equals (eps/tau) (Psi^T Psi / B + damping I)^-1 Psi^T A / B, and so does the
    npg solver's CG on the empirical Fisher-vector product (damping 0: the paper's step)."""
    model, p = linear_problem(tau, seed=3)
    theta_old, batch = p["theta"], len(p["actions"])
    targets = damped_q_target(p["values"], p["logits"], p["actions"], p["delta"], tau, eps)
    params_old = [theta_old.clone()]

    def loss(theta):
        logits = p["logits_of"](theta)
        return damped_q_loss(logits, p["values"], p["actions"], targets, tau) + proximal_term(
            [theta], params_old, tau, damping
        )

    grad = jacobian(loss, theta_old)
    residual_jacobian = jacobian(lambda th: damped_residual(p, th, tau, eps), theta_old)
    prox_hessian = torch.autograd.functional.hessian(lambda th: proximal_term([th], params_old, tau, damping), theta_old)
    gauss_newton = -torch.linalg.solve(residual_jacobian.T @ residual_jacobian / batch + prox_hessian, grad)

    psi, A = p["psi"], p["A"]
    P = psi.shape[1]
    natural = (eps / tau) * torch.linalg.solve(
        psi.T @ psi / batch + damping * torch.eye(P, dtype=torch.float64), psi.T @ A / batch
    )
    assert rel(gauss_newton, natural) < 1e-8

    _, logits, jv, jtu = policy_jacobian(model, p["obs"])
    fvp = fisher_vector_product(jv, jtu, logits, p["actions"], "empirical", damping)
    cg, residual = conjugate_gradient(fvp, policy_gradient(jtu, logits, p["actions"], A), iters=4 * P)
    assert residual < 1e-9 and rel((eps / tau) * cg, natural) < 1e-8


def solve_damped_regression(p: dict, tau: float, eps: float, iters: int = 200) -> torch.Tensor:
    """The nonlinear damped-Q regression solved to convergence from theta_old by Gauss-Newton
    with step halving; returns theta - theta_old."""
    theta = p["theta"].clone()
    loss = lambda th: 0.5 * damped_residual(p, th, tau, eps).pow(2).mean()  # noqa: E731
    first = None
    for _ in range(iters):
        r = damped_residual(p, theta, tau, eps)
        J = jacobian(lambda th: damped_residual(p, th, tau, eps), theta)
        first = (J.T @ r).norm() if first is None else first
        if (J.T @ r).norm() < 1e-10 * first:  # the loss's gradient, J^T r / B, has vanished
            break
        step = torch.linalg.lstsq(J, -r[:, None]).solution.squeeze(1)
        size = 1.0
        while loss(theta + size * step) > loss(theta) and size > 1e-6:
            size /= 2
        theta = theta + size * step
    grad = jacobian(loss, theta)
    assert grad.norm() < 1e-7 * jacobian(loss, p["theta"]).norm(), grad.norm()  # a stationary point
    return theta - p["theta"]


def test_converged_damped_regression_tends_to_the_natural_step_linearly_in_eps():
    """(2): the error of the exact (nonlinear) solution against (eps/tau) (Psi^T Psi)^-1 Psi^T A
    shrinks ~10x for each 10x smaller eps (first order in eps)."""
    tau = 0.1
    model, p = linear_problem(tau, seed=4)
    psi, A = p["psi"], p["A"]
    direction = torch.linalg.solve(psi.T @ psi, psi.T @ A)
    errors = [rel(solve_damped_regression(p, tau, eps), (eps / tau) * direction) for eps in (1e-1, 1e-2, 1e-3)]
    assert errors[2] < 1e-2, errors
    for bigger, smaller in zip(errors, errors[1:]):
        assert 5 < bigger / smaller < 20, errors


def test_undamped_soft_q_regression_is_not_the_natural_step():
    """(3) negative control: plain soft Q-learning with V fixed (eps = 1, eqs. 72-73) moves far
    from (1/tau) (Psi^T Psi)^-1 Psi^T A, while the damped one (eps = 1e-3, rescaled) matches."""
    tau = 0.1
    model, p = linear_problem(tau, seed=4)
    psi, A = p["psi"], p["A"]
    direction = torch.linalg.solve(psi.T @ psi, psi.T @ A)
    undamped = rel(solve_damped_regression(p, tau, 1.0), direction / tau)
    damped = rel(solve_damped_regression(p, tau, 1e-3) / 1e-3, direction / tau)
    assert undamped > 0.2 and damped < 1e-2, (undamped, damped)


@pytest.fixture(scope="module")
def mlp() -> dict:
    """A small tanh MLP policy (P = 75 parameters) on 64 states, its dense Psi, empirical and
    exact Fisher (the latter as the KL Hessian), and the matrix-free maps at theta_old."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    obs = torch.randn(64, 5, dtype=torch.float64)
    p = problem(model, obs, tau=0.1, seed=5)
    theta_old = p["theta"]
    theta, logits, jv, jtu = policy_jacobian(model, obs)
    assert torch.equal(theta, theta_old) and torch.allclose(logits, p["logits"], rtol=1e-14)
    psi = p["psi"]
    exact = torch.autograd.functional.hessian(lambda th: mean_kl(p["logits"], p["logits_of"](th)), theta_old)
    return dict(p=p, jv=jv, jtu=jtu, logits=logits, empirical=psi.T @ psi / 64, exact=exact)


def test_exact_fisher_is_the_expected_score_outer_product(mlp):
    """The KL Hessian equals E_{a ~ pi} psi psi^T (averaged over states): the true Fisher."""
    p = mlp["p"]
    logits_of, theta = p["logits_of"], p["theta"]
    pi = torch.softmax(p["logits"], -1)
    expected = 0
    for a in range(3):
        psi_a = jacobian(lambda th: log_ratio(logits_of(th), torch.full((64,), a)), theta)  # (64, P): grad log pi(a|s_t)
        expected = expected + torch.einsum("t,tp,tq->pq", pi[:, a], psi_a, psi_a) / 64
    assert rel(mlp["exact"], expected) < 1e-10


@pytest.mark.parametrize("fisher", ["empirical", "exact"])
def test_fisher_vector_product_and_cg_match_dense_matrices(mlp, fisher):
    """(4): F v (matrix-free) == the dense F v; CG == a dense solve of (F + damping I) x = g;
    fisher_cosine == the dense Fisher-metric cosine."""
    p, damping = mlp["p"], 1e-3
    dense = mlp[fisher]
    P = dense.shape[0]
    fvp = fisher_vector_product(mlp["jv"], mlp["jtu"], mlp["logits"], p["actions"], fisher, damping)
    gen = torch.Generator().manual_seed(6)
    u, v = torch.randn(P, generator=gen, dtype=torch.float64), torch.randn(P, generator=gen, dtype=torch.float64)
    assert rel(fvp(v), dense @ v + damping * v) < 1e-12
    g = policy_gradient(mlp["jtu"], mlp["logits"], p["actions"], p["A"])
    assert rel(g, p["psi"].T @ p["A"] / 64) < 1e-12
    x, residual = conjugate_gradient(fvp, g, iters=4 * P)
    assert residual < 1e-9 and rel(x, torch.linalg.solve(dense + damping * torch.eye(P, dtype=torch.float64), g)) < 1e-8
    cosine = fisher_cosine(mlp["jv"](u), mlp["jv"](v), logit_fisher(mlp["logits"], p["actions"], fisher))
    assert abs(cosine - u @ dense @ v / (u @ dense @ u * (v @ dense @ v)).sqrt()) < 1e-12


def test_conjugate_gradient_is_exact_in_n_steps_and_reports_its_residual():
    gen = torch.Generator().manual_seed(7)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a, b = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    x, residual = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert residual < 1e-8 and rel(x, torch.linalg.solve(a, b)) < 1e-8
    x1, residual1 = conjugate_gradient(lambda v: a @ v, b, iters=1)
    assert x1.dot(b) > 0 and residual1 == pytest.approx(((b - a @ x1).norm() / b.norm()).item())
    x0, residual0 = conjugate_gradient(lambda v: a @ v, torch.zeros(6, dtype=torch.float64), iters=3)
    assert torch.equal(x0, torch.zeros(6, dtype=torch.float64)) and residual0 == 0.0


def test_mean_kl():
    gen = torch.Generator().manual_seed(8)
    old, new = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64)
    p, q = torch.softmax(old, -1), torch.softmax(new, -1)
    assert mean_kl(old, new).item() == pytest.approx((p * (p / q).log()).sum(-1).mean().item(), rel=1e-12)
    assert mean_kl(old, old + 3.0).item() == pytest.approx(0.0, abs=1e-15)  # a shared shift is the same policy


def test_kl_backtrack_lands_inside_the_trust_region_near_its_edge():
    quadratic = lambda f: 4.0 * f**2  # noqa: E731
    assert kl_backtrack(quadratic, max_kl=1.0) == (pytest.approx(0.475), pytest.approx(0.9025))  # 0.9 max_kl
    assert kl_backtrack(quadratic, max_kl=1.0, start=0.3) == (0.3, pytest.approx(0.36))
    assert kl_backtrack(quadratic, max_kl=4.0) == (1.0, 4.0)
    cubic = lambda f: 4.0 * f**2 * (1 + f)  # noqa: E731  (not quadratic: halving would end at 0.31)
    fraction, kl = kl_backtrack(cubic, max_kl=1.0)
    assert 0.5 < kl <= 1.0 and kl == pytest.approx(cubic(fraction))
    assert kl_backtrack(lambda f: math.inf, max_kl=0.01) == (0.0, 0.0)
    assert kl_backtrack(lambda f: math.nan, max_kl=0.01) == (0.0, 0.0)


def test_quadratic_kl_is_the_kl_to_second_order(mlp):
    """quadratic_kl = 1/2 s^T F s with the exact Fisher (the dense KL Hessian), and it predicts the measured
    KL of small steps (to ~1e-3 here; the empirical Fisher's quadratic is off by 5-16% on this model)."""
    p = mlp["p"]
    gen = torch.Generator().manual_seed(9)
    for _ in range(5):
        s = 1e-3 * torch.randn(len(p["theta"]), generator=gen, dtype=torch.float64)
        predicted = quadratic_kl(p["logits"], mlp["jv"](s))
        assert predicted == pytest.approx(0.5 * (s @ mlp["exact"] @ s).item(), rel=1e-10)
        measured = mean_kl(p["logits"], p["logits_of"](p["theta"] + s)).item()
        assert predicted == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("fisher", ["empirical", "exact"])
def test_npg_first_try_predicts_the_kl_it_takes(mlp, fisher, monkeypatch):
    """npg's first try is where the quadratic model reaches --max-kl: its measured KL must be within 10% of
    --max-kl, whichever Fisher gives the direction (it was ~2x: the model's 1/2 was applied twice)."""
    p, model = mlp["p"], nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    npgd.set_parameters(model, p["theta"])  # copied: the parameters must not alias theta_old
    args = Args(solver="npg", fisher=fisher, max_kl=1e-4, eps=1.0, tau=0.1, cg_iters=75)
    fvp = fisher_vector_product(mlp["jv"], mlp["jtu"], p["logits"], p["actions"], fisher, args.cg_damping)
    batch = Batch(
        obs=p["obs"], actions=p["actions"], values_old=p["values"], theta_old=p["theta"], logits_old=p["logits"],
        jv=mlp["jv"], jtu=mlp["jtu"], fvp=fvp, reg_advantages=p["A"], targets=p["values"],
    )  # fmt: skip
    first_tries = []

    def recording_backtrack(kl_of, max_kl, start):
        first_tries.append((start, kl_of(start)))
        return kl_backtrack(kl_of, max_kl, start=start)

    monkeypatch.setattr(npgd, "kl_backtrack", recording_backtrack)
    logs = npgd.npg_step(model, model, batch, args)
    [(fraction, measured)] = first_tries
    assert fraction < 1 and measured == pytest.approx(1e-4, rel=0.1)
    assert logs["npg/kl_old_new"].item() <= 1e-4
