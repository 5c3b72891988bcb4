"""natural_pg_damped.py run as a user runs it: both solvers and both Fisher forms on a tiny
budget, the logged npg/* diagnostics, the trust region, determinism (bad input, non-finite
losses, --save-model and the time-limit bootstrap: test_cli_common.py)."""

import math

import pytest
import torch

from conftest import ROOT, SMOKE, only_run_dir, read_scalars, run_in, scalars_of_runs, without_sps

# 2 envs x 16 steps = 32 agent steps per iteration, 20 iterations (320 steps an env: random games end).
TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "losses/damped_q_loss",
    "losses/npg_residual",
    "losses/value_loss",
    "losses/entropy",
    "losses/explained_variance",
    "npg/kl_old_new",
    "npg/cosine_step",
    "npg/cosine_step_fisher",
    "npg/step_norm_ratio",
    "npg/step_fraction",
    "npg/cg_residual",
}
RUNS = {
    "damped-q": ["--solver", "damped-q", "--diagnostic-every", "10"],
    "damped-q-every-iteration": ["--solver", "damped-q", "--diagnostic-every", "1"],
    "damped-q-exact": ["--solver", "damped-q", "--fisher", "exact", "--diagnostic-every", "10"],
    "npg": ["--solver", "npg"],
    "npg-exact": ["--solver", "npg", "--fisher", "exact"],
    "npg-no-trust-region": ["--solver", "npg", "--max-kl", "None", "--eps", "0.001"],
    "npg-fvp-half": ["--solver", "npg", "--fvp-fraction", "0.5"],
    "damped-q-fvp-half": ["--solver", "damped-q", "--fvp-fraction", "0.5", "--diagnostic-every", "1"],
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, dict]:
    """The scalars each run of RUNS logged (same seed)."""
    return scalars_of_runs(tmp_path_factory, "natural_pg_damped.py", SMOKE["natural_pg_damped.py"], RUNS)


def values(scalars: dict, tag: str) -> list[float]:
    return [v for _, v in scalars[tag]]


@pytest.mark.parametrize("name", RUNS)
def test_smoke_run_logs_every_iteration(smoke, name):
    scalars = smoke[name]
    assert TAGS <= set(scalars), TAGS - set(scalars)
    assert [step for step, _ in scalars["npg/kl_old_new"]] == list(range(32, 641, 32))
    for tag in TAGS - {"charts/episodic_return", "charts/episodic_length"}:
        assert all(math.isfinite(v) for v in values(scalars, tag)), tag
    assert all(
        -1 - 1e-6 <= c <= 1 + 1e-6 for c in values(scalars, "npg/cosine_step") + values(scalars, "npg/cosine_step_fisher")
    )
    assert all(k >= 0 for k in values(scalars, "npg/kl_old_new"))


@pytest.mark.parametrize("name", ["damped-q", "damped-q-exact", "npg", "npg-exact"])
def test_trust_region_holds_the_kl(smoke, name):
    """--max-kl 0.01 (the default): every step's KL on its batch is within it."""
    assert all(k <= 0.01 * (1 + 1e-4) for k in values(smoke[name], "npg/kl_old_new")), values(smoke[name], "npg/kl_old_new")


@pytest.mark.parametrize("name", ["npg", "npg-exact", "npg-no-trust-region", "npg-fvp-half"])
def test_npg_takes_the_cg_step_scaled_by_the_trust_region(smoke, name):
    """npg's step is the CG natural step times the trust region's fraction: cosine 1 in both
    metrics, length ratio = the fraction (1 without a trust region)."""
    scalars = smoke[name]
    assert all(c == pytest.approx(1.0, abs=1e-3) for c in values(scalars, "npg/cosine_step"))
    assert all(c == pytest.approx(1.0, abs=1e-3) for c in values(scalars, "npg/cosine_step_fisher"))
    ratios, fractions = values(scalars, "npg/step_norm_ratio"), values(scalars, "npg/step_fraction")
    assert ratios == pytest.approx(fractions, rel=1e-4)
    if name == "npg-no-trust-region":
        assert set(fractions) == {1.0}
    else:
        assert min(fractions) < 1.0  # eps = 0.1 steps past the trust region on some batch


def test_the_diagnostic_changes_what_is_compared_not_the_step(smoke):
    """damped-q computes the CG step only to compare with: every --diagnostic-every (10 here) iterations
    it logs the comparison, and every value both runs log is bit-identical to the run that
    compares at every iteration."""
    every, tenth = smoke["damped-q-every-iteration"], smoke["damped-q"]
    for tag in ("npg/cosine_step", "npg/cosine_step_fisher", "npg/step_norm_ratio", "npg/cg_residual"):
        assert [s for s, _ in tenth[tag]] == [320, 640] and len(every[tag]) == 20
    for tag, logged in without_sps(tenth).items():
        assert set(logged) <= set(every[tag]), tag


def test_damped_q_moves_along_the_natural_step(smoke):
    """Two epochs of Adam on the damped target from theta_old point along the CG natural step
    in the Fisher metric (the theorem's claim, up to an unconverged fit; median ~0.9 here)."""
    for name in ("damped-q-every-iteration", "damped-q-exact"):
        cosines = values(smoke[name], "npg/cosine_step_fisher")
        assert sum(cosines) / len(cosines) > 0.5, cosines


def test_fvp_fraction_changes_the_cg_step_not_damped_qs(smoke):
    """--fvp-fraction 0.5: CG's Fisher comes from half the batch, so npg's step and damped-q's reference
    change; damped-q's own step stays bit-identical (the sample has a generator of its own, not the
    minibatches')."""
    assert values(smoke["npg-fvp-half"], "npg/kl_old_new") != values(smoke["npg"], "npg/kl_old_new")
    half, full = smoke["damped-q-fvp-half"], smoke["damped-q-every-iteration"]
    assert values(half, "npg/kl_old_new") == values(full, "npg/kl_old_new")
    assert values(half, "losses/value_loss") == values(full, "losses/value_loss")
    assert values(half, "npg/cosine_step") != values(full, "npg/cosine_step")


def test_the_options_reach_the_update(smoke):
    """Same seed, different solver or Fisher: the runs part ways."""
    assert values(smoke["damped-q"], "npg/kl_old_new") != values(smoke["npg"], "npg/kl_old_new")
    assert values(smoke["npg"], "npg/kl_old_new") != values(smoke["npg-exact"], "npg/kl_old_new")
    # damped-q's step does not depend on --fisher, only the reference it is compared with
    assert values(smoke["damped-q"], "npg/kl_old_new") == values(smoke["damped-q-exact"], "npg/kl_old_new")
    assert values(smoke["damped-q"], "npg/cosine_step") != values(smoke["damped-q-exact"], "npg/cosine_step")


# Plausible bugs in recording pi_old's logits while acting: (old text, new text) in the script.
MISRECORDED = {
    "logits flattened env-major, the other buffers time-major": ("logits_buf))", "logits_buf.transpose(0, 1)))"),
    "the logits of the previous state": ("policy_fn(obs_buf[t])", "policy_fn(obs_buf[t - 1])"),
}


@pytest.mark.parametrize("bug", [None, *MISRECORDED])
def test_the_logits_recorded_while_acting_are_pi_olds_on_the_batch(tmp_path, monkeypatch, bug):
    """pi_old's logits on the batch are the ones the rollout acted with, not a second forward pass. With
    --max-kl 1e-30 no step fits the trust region, the policy stays at theta_old, and the logged
    KL(pi_old || pi) compares the recorded logits with a forward pass over the batch: 0 up to float
    rounding, and not 0 for a misrecorded buffer. The policy head starts at gain 1, not 0.01: near-uniform
    logits barely differ between states, and a misrecorded buffer would go unseen (KL ~1e-8, like rounding;
    at gain 1, ~1e-5)."""
    init = torch.nn.init.orthogonal_
    monkeypatch.setattr(torch.nn.init, "orthogonal_", lambda w, gain=1.0, **kw: init(w, 1.0 if gain == 0.01 else gain, **kw))
    script = ROOT / "natural_pg_damped.py"
    if bug:
        (old, new), source = MISRECORDED[bug], script.read_text()
        assert source.count(old) == 1
        script = tmp_path / "misrecorded.py"
        script.write_text(source.replace(old, new))
    proc = run_in(tmp_path, str(script), *SMOKE["natural_pg_damped.py"], "--solver", "npg", "--max-kl", "1e-30")
    assert proc.returncode == 0, proc.stderr  # no step taken: no cosine logged, not a NaN one
    kls = values(read_scalars(only_run_dir(tmp_path)), "npg/kl_old_new")
    if bug is None:  # seen: at most 3e-8
        assert max(map(abs, kls)) < 1e-6, kls
    else:  # seen: at least 1e-5
        assert min(kls) > 1e-6, kls


def test_same_seed_gives_identical_logs(smoke, tmp_path):
    proc = run_in(tmp_path, "natural_pg_damped.py", *SMOKE["natural_pg_damped.py"], *RUNS["damped-q"], fresh=True)
    assert proc.returncode == 0, proc.stderr
    assert without_sps(read_scalars(only_run_dir(tmp_path))) == without_sps(smoke["damped-q"])
