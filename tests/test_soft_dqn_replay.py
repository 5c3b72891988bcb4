"""soft_dqn.py's frame-once replay memory: rebuilt stacks and n-step targets against a linear
record of real play (the `rollout` fixture of conftest.py)."""

import numpy as np
import pytest
import torch

from conftest import NUM_ENVS, STEPS

import soft_dqn as sd


def fill_buffer(rollout, buffer_size, n_step, bonuses):
    rb = sd.FrameReplayBuffer(buffer_size, NUM_ENVS, n_step)
    for t in range(STEPS):
        rb.add(
            rollout.obs[t],
            rollout.actions[t],
            np.clip(rollout.rewards[t], -1, 1),
            bonuses[t],
            rollout.terminated[t],
            rollout.truncated[t],
            rollout.restarted[t],
            rollout.final_obs[t],
        )
    return rb


def linear_record(rollout, e, bonuses):
    """Env e's slots in order, as dicts: every observation acted in, plus the last
    observation of every game that ended (no action)."""
    slots = []
    for t in range(STEPS):
        slots.append(
            dict(
                obs=rollout.obs[t][e],
                action=rollout.actions[t][e],
                reward=float(np.clip(rollout.rewards[t][e], -1, 1)),
                bonus=float(bonuses[t][e]),
                terminated=bool(rollout.terminated[t][e]),
                truncated=bool(rollout.truncated[t][e]),
                acted=True,
            )
        )
        if rollout.restarted[t][e]:
            slots.append(dict(obs=rollout.final_obs[t][e], acted=False))
    return slots


@pytest.mark.parametrize("buffer_size", [NUM_ENVS * 5000, NUM_ENVS * 700], ids=["no-wrap", "wrapped"])
def test_rebuilt_stacks_equal_env_stacks(rollout, buffer_size):
    bonuses = np.zeros((STEPS, NUM_ENVS), dtype=np.float32)
    rb = fill_buffer(rollout, buffer_size, n_step=1, bonuses=bonuses)
    lo, hi = rb.sampleable()
    for e in range(NUM_ENVS):
        record = linear_record(rollout, e, bonuses)
        assert rb.count[e] == len(record)
        # every stored slot whose stack is complete, final-observation slots included
        first = max(0, len(record) - rb.capacity + 3)
        slots = torch.arange(first, len(record))
        got = rb.stacks(torch.full_like(slots, e), slots).numpy()
        want = np.stack([record[k]["obs"] for k in slots.tolist()])
        assert np.array_equal(got, want)
        assert lo[e] == first and hi[e] == len(record) - 2
    if buffer_size < STEPS * NUM_ENVS:
        assert (rb.count > rb.capacity).all()


@pytest.mark.parametrize("n_step", [1, 3, 5])
def test_sampled_n_step_targets_match_linear_record(rollout, n_step):
    """Sample from a wrapped buffer; rebuild G_t, the bootstrap discount and the bootstrap
    stack by walking the linear record forward (eq. 46, written out independently)."""
    gamma = 0.9
    bonuses = np.random.default_rng(1).normal(size=(STEPS, NUM_ENVS)).astype(np.float32)
    rb = fill_buffer(rollout, NUM_ENVS * 700, n_step, bonuses)
    records = [linear_record(rollout, e, bonuses) for e in range(NUM_ENVS)]
    batch = rb.sample(4096, np.random.default_rng(2))
    returns, discount, offset = sd.n_step_returns(batch.rewards, batch.bonuses, batch.terminated, batch.truncated, gamma)
    next_obs = rb.stacks(batch.env, batch.slot + offset)
    kinds = set()
    for i in range(len(batch.env)):
        record, k = records[batch.env[i]], int(batch.slot[i])
        assert record[k]["acted"]
        assert np.array_equal(batch.obs[i].numpy(), record[k]["obs"]) and batch.actions[i] == record[k]["action"]
        g, d = record[k]["reward"], 0
        while True:
            step = record[k + d]
            if step["terminated"]:
                want_discount, kind = 0.0, "terminated"
                break
            if step["truncated"]:
                want_discount, kind = gamma ** (d + 1), "truncated"
                break
            if d == n_step - 1:
                want_discount, kind = gamma**n_step, "full"
                break
            d += 1
            g += gamma**d * (record[k + d]["reward"] + record[k + d]["bonus"])
        kinds.add(kind)
        assert returns[i].item() == pytest.approx(g, rel=1e-5, abs=1e-5)
        assert discount[i].item() == pytest.approx(want_discount, rel=1e-6)
        if kind != "terminated":
            assert offset[i] == d + 1
            assert np.array_equal(next_obs[i].numpy(), record[k + d + 1]["obs"])
    assert kinds == {"terminated", "truncated", "full"}


def test_one_million_slot_layout_fits_in_7_5_gb():
    """Bytes per slot of every tensor the buffer actually allocates, scaled to 1M slots (the
    resident size of a real 1M buffer is measured by benchmarks/bench.py)."""
    rb = sd.FrameReplayBuffer(1000, 2, n_step=5)
    arrays = [v for v in vars(rb).values() if isinstance(v, (torch.Tensor, np.ndarray))]
    nbytes = sum(a.nbytes if isinstance(a, np.ndarray) else a.element_size() * a.numel() for a in arrays)
    bytes_per_slot = nbytes / (rb.num_envs * rb.capacity)
    assert bytes_per_slot >= 84 * 84  # the frame itself is there...
    assert 1_000_000 * bytes_per_slot <= 7.5e9  # ...and little else
