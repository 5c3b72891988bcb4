"""soft_dqn.py's backups (eqs. 39, 81-83, 31) and n-step targets (eq. 46), against independent
float64 references and hand-worked sequences."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import soft_dqn as sd

q_arrays = st.integers(2, 18).flatmap(
    lambda num_actions: arrays(
        np.float64, (3, num_actions), elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    )
)
taus = st.floats(1e-3, 10.0)


def reference_soft_value(q: np.ndarray, tau: float, regularizer: str) -> np.ndarray:
    """tau * log E_{a~uniform}[exp(Q/tau)] written from eq. 39 with plain float64 numpy."""
    m = q.max(axis=-1, keepdims=True)
    kl_form = m[..., 0] + tau * np.log(np.mean(np.exp((q - m) / tau), axis=-1))
    return kl_form + (tau * math.log(q.shape[-1]) if regularizer == "entropy" else 0.0)


@settings(max_examples=200, deadline=None)
@given(q=q_arrays, tau=taus, regularizer=st.sampled_from(["entropy", "kl"]))
def test_soft_value_matches_float64_reference(q, tau, regularizer):
    got = sd.soft_value(torch.from_numpy(q), tau, regularizer).numpy()
    np.testing.assert_allclose(got, reference_soft_value(q, tau, regularizer), rtol=1e-12, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(q=q_arrays, tau=taus)
def test_entropy_form_minus_kl_form_is_tau_log_num_actions(q, tau):
    q = torch.from_numpy(q)
    diff = sd.soft_value(q, tau, "entropy") - sd.soft_value(q, tau, "kl")
    np.testing.assert_allclose(diff.numpy(), tau * math.log(q.shape[-1]), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(q=q_arrays, tau=taus)
def test_soft_value_brackets_max(q, tau):
    """Entropy form >= max (a bonus); KL form <= max (a penalty); both within tau*log|A| of it."""
    q = torch.from_numpy(q)
    hard = q.max(dim=-1).values
    slack = tau * math.log(q.shape[-1]) + 1e-9
    assert (sd.soft_value(q, tau, "entropy") >= hard - 1e-9).all()
    assert (sd.soft_value(q, tau, "entropy") <= hard + slack).all()
    assert (sd.soft_value(q, tau, "kl") <= hard + 1e-9).all()
    assert (sd.soft_value(q, tau, "kl") >= hard - slack).all()


@settings(max_examples=100, deadline=None)
@given(q=q_arrays, tau=taus, regularizer=st.sampled_from(["entropy", "kl"]))
def test_soft_value_is_expected_q_plus_bonus(q, tau, regularizer):
    """Eq. 31: V_Q(s) = E_{a~pi_Q}[Q(s,a)] - tau*KL (or + tau*H), pi_Q = softmax(Q/tau)."""
    q = torch.from_numpy(q)
    pi = torch.softmax(q / tau, dim=-1)
    expected = (pi * q).sum(-1) + sd.soft_bonus(q, tau, regularizer)
    np.testing.assert_allclose(sd.soft_value(q, tau, regularizer).numpy(), expected.numpy(), rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
def test_tau_to_zero_limit_is_max(regularizer):
    q = torch.tensor([[1.0, 3.0, -2.0, 2.5], [0.0, 0.0, 0.0, 1e-3]], dtype=torch.float64)
    assert torch.equal(sd.soft_value(q, 0.0, regularizer), q.max(dim=-1).values)
    errors = [(sd.soft_value(q, tau, regularizer) - q.max(-1).values).abs().max().item() for tau in (1e-1, 1e-3, 1e-6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-6 * math.log(4)
    assert torch.equal(sd.soft_bonus(q, 0.0, regularizer), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("regularizer", ["entropy", "kl"])
@pytest.mark.parametrize("tau", [1e-39, 1e-6, 1e-3, 0.1, 10.0])
def test_extreme_magnitudes_stay_finite(dtype, regularizer, tau):
    q = torch.tensor([[1e6, -1e6, 0.0, 1e6 - 1], [-1e6, -1e6, -1e6, -1e6], [1e6, 1e6, 1e6, 1e6]], dtype=dtype)
    v = sd.soft_value(q, tau, regularizer)
    bonus = sd.soft_bonus(q, tau, regularizer)
    assert torch.isfinite(v).all() and torch.isfinite(bonus).all()
    ref = reference_soft_value(q.double().numpy(), tau, regularizer)
    np.testing.assert_allclose(v.double().numpy(), ref, rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_boltzmann_entropy_known_values():
    q = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    h = sd.boltzmann_entropy(q, 1.0)
    assert h[0].item() == pytest.approx(math.log(4))
    assert h[1].item() == pytest.approx(0.0, abs=1e-40)
    assert torch.equal(sd.boltzmann_entropy(q, 0.0), torch.zeros(2, dtype=torch.float64))


def n_step(rows):
    """Call n_step_returns on rows of (rewards, bonuses, terminated, truncated)."""
    r, b, te, tr = (torch.tensor([row[i] for row in rows]) for i in range(4))
    return sd.n_step_returns(r.double(), b.double(), te.bool(), tr.bool(), gamma=0.5)


def test_n_step_returns_hand_worked():
    F_, T_ = False, True
    rows = [
        # rewards,     bonuses (d=0 ignored),  terminated,     truncated
        ([1, 2, 3], [9, 0.1, 0.2], [F_, F_, F_], [F_, F_, F_]),  # no end: bootstrap s_{t+3}
        ([1, 2, 3], [9, 0.1, 0.2], [F_, T_, F_], [F_, F_, F_]),  # terminated after step 1: no bootstrap
        ([1, 2, 3], [9, 0.1, 0.2], [T_, F_, F_], [F_, F_, F_]),  # terminated at once
        ([1, 2, 3], [9, 0.1, 0.2], [F_, F_, F_], [T_, F_, F_]),  # truncated at once: bootstrap s_{t+1}
        ([1, 2, 3], [9, 0.1, 0.2], [F_, F_, F_], [F_, T_, F_]),  # truncated after step 1: bootstrap s_{t+2}
        ([1, 2, 3], [9, 0.1, 0.2], [F_, F_, T_], [F_, T_, F_]),  # truncation comes first
        ([1, 2, 3], [9, 0.1, 0.2], [F_, F_, T_], [F_, F_, F_]),  # terminated at the last step
        ([1, 2, 3], [9, -0.1, -0.2], [F_, F_, F_], [F_, F_, F_]),  # KL form: negative bonuses
    ]
    returns, discount, offset = n_step(rows)
    full = 1 + 0.5 * (2 + 0.1) + 0.25 * (3 + 0.2)
    np.testing.assert_allclose(returns.numpy(), [full, 1 + 0.5 * 2.1, 1, 1, 2.05, 2.05, full, 1 + 0.5 * 1.9 + 0.25 * 2.8])
    np.testing.assert_allclose(discount.numpy(), [0.125, 0, 0, 0.5, 0.25, 0.25, 0, 0.125])
    assert offset.tolist() == [3, 2, 1, 1, 2, 2, 3, 3]


def test_one_step_is_the_plain_backup():
    returns, discount, offset = n_step([([2.0], [5.0], [False], [False]), ([2.0], [5.0], [True], [False])])
    assert returns.tolist() == [2.0, 2.0] and discount.tolist() == [0.5, 0.0] and offset.tolist() == [1, 1]


def reference_munchausen(q: np.ndarray, actions: np.ndarray, tau: float, l0: float) -> np.ndarray:
    """clip(tau * log softmax(Q/tau)[a], l0, 0), written with plain float64 numpy."""
    z = (q - q.max(axis=-1, keepdims=True)) / tau
    log_pi = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return np.clip(tau * log_pi[np.arange(len(q)), actions], l0, 0.0)


@settings(max_examples=300, deadline=None)
@given(
    q=st.integers(2, 18).flatmap(
        lambda n: arrays(np.float64, (4, n), elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
    ),
    tau=st.floats(1e-6, 10.0),
    l0=st.floats(-10.0, 0.0),
    seed=st.integers(0, 2**16),
)
def test_munchausen_term_matches_float64_reference(q, tau, l0, seed):
    """float32, as training computes it, against float64: finite and within float32 rounding of the
    clipped range, for |Q| up to 1e6 and tau down to 1e-6."""
    actions = np.random.default_rng(seed).integers(0, q.shape[1], len(q))
    q32 = q.astype(np.float32)
    got = sd.munchausen_term(torch.from_numpy(q32), torch.from_numpy(actions), tau, l0).numpy()
    assert np.isfinite(got).all() and (got <= 0).all() and (got >= l0).all()
    np.testing.assert_allclose(got, reference_munchausen(q32.astype(np.float64), actions, tau, l0), rtol=0, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(q=q_arrays, tau=taus)
def test_munchausen_bootstrap_is_the_entropy_soft_value(q, tau):
    """sum_a pibar(a|s) [Q(s,a) - tau log pibar(a|s)] = tau logsumexp(Q/tau) = soft_value(entropy form): the
    soft backup the script already computes is Munchausen's bootstrap term (l0 = -inf: no clipping)."""
    q = torch.from_numpy(q)
    pi = torch.softmax((q - q.max(-1, keepdim=True).values) / tau, -1)
    tau_log_pi = torch.stack([sd.munchausen_term(q, torch.full((len(q),), a), tau, -math.inf) for a in range(q.shape[1])], -1)
    torch.testing.assert_close((pi * (q - tau_log_pi)).sum(-1), sd.soft_value(q, tau, "entropy"), rtol=1e-12, atol=1e-9)
