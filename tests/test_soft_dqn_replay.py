"""soft_dqn.py's environment semantics (pinned on the real ale-py AtariVectorEnv) and its
frame-once replay memory: rebuilt stacks and n-step targets against a linear record."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import soft_dqn as sd

NUM_ENVS, STEPS = 3, 1500


@dataclass
class Rollout:
    """What the env returned, step by step: arrays of shape (STEPS, NUM_ENVS, ...)."""

    obs: list = field(default_factory=list)  # observation the action was taken in
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    restarted: list = field(default_factory=list)
    lives: list = field(default_factory=list)
    prev_lives: list = field(default_factory=list)
    episode_frame: list = field(default_factory=list)
    next_obs: list = field(default_factory=list)
    final_obs: list = field(default_factory=list)  # None where no env restarted


@pytest.fixture(scope="module")
def rollout():
    """Random play on Breakout with a 700-frame time limit: life losses, game overs and
    truncations all occur within the rollout."""
    rng = np.random.default_rng(0)
    envs = sd.make_env("BreakoutNoFrameskip-v4", NUM_ENVS, max_episode_frames=700)
    obs, info = envs.reset(seed=0)
    ro = Rollout()
    for _ in range(STEPS):
        actions = rng.integers(0, envs.single_action_space.n, NUM_ENVS)
        prev_info = info
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        ro.obs.append(obs)
        ro.actions.append(actions)
        ro.rewards.append(reward)
        ro.terminated.append(terminated)
        ro.truncated.append(truncated)
        ro.restarted.append(sd.game_restarted(terminated, truncated, info, prev_info))
        ro.lives.append(info["lives"])
        ro.prev_lives.append(prev_info["lives"])
        ro.episode_frame.append((prev_info["episode_frame_number"], info["episode_frame_number"]))
        ro.next_obs.append(next_obs)
        ro.final_obs.append(info["final_obs"].copy() if "final_obs" in info else None)
        obs = next_obs
    envs.close()
    restarted, truncated = np.array(ro.restarted), np.array(ro.truncated)
    life_losses = np.array(ro.terminated) & ~restarted
    assert life_losses.sum() > 10 and (restarted & ~truncated).sum() > 3 and truncated.sum() > 3, "rollout too tame"
    return ro


def test_life_loss_continues_the_game_and_game_over_restarts_it(rollout):
    """Pins ale-py 0.12's SameStep + life_loss_info behaviour that soft_dqn.py relies on."""
    for t in range(STEPS):
        for e in range(NUM_ENVS):
            obs, nxt = rollout.obs[t][e], rollout.next_obs[t][e]
            prev_frame, frame = rollout.episode_frame[t][0][e], rollout.episode_frame[t][1][e]
            if rollout.restarted[t][e]:
                # a new game: fresh stack [0, 0, 0, first frame], frame counter restarted,
                # and the ended game's last observation in final_obs continues the old stack
                assert not nxt[:3].any() and frame < prev_frame
                assert np.array_equal(rollout.final_obs[t][e][:3], obs[1:])
            else:
                # same game, life lost or not: the stack shifts by one frame, 4 frames later
                assert np.array_equal(nxt[:3], obs[1:]) and frame == prev_frame + 4
                if rollout.terminated[t][e]:
                    assert rollout.lives[t][e] == rollout.prev_lives[t][e] - 1


def test_next_step_autoreset_for_contrast():
    """Why soft_dqn.py uses SameStep. Under NextStep (gymnasium's default) a life loss also
    lets the game go on, but the step after a game over is a reset step: its action is
    ignored and it is not a transition, so every loop would have to skip it."""
    from ale_py.vector_env import AtariVectorEnv

    envs = AtariVectorEnv("breakout", 1, autoreset_mode="NextStep", life_loss_info=True, reward_clipping=False)
    obs, info = envs.reset(seed=0)
    rng, seen_life_loss, seen_reset = np.random.default_rng(0), 0, 0
    for _ in range(1500):
        prev_info = info
        obs, reward, terminated, truncated, info = envs.step(rng.integers(0, 4, 1))
        if terminated[0] or truncated[0]:
            game_over = prev_info["lives"][0] == 1 and info["lives"][0] == 0
            after_obs, after_reward, after_term, _, after_info = envs.step(rng.integers(0, 4, 1))
            if game_over:  # reset step: fresh stack, zero reward, frame counter restarted
                seen_reset += 1
                assert not after_obs[0, :3].any() and after_reward[0] == 0 and not after_term[0]
                assert after_info["episode_frame_number"][0] < info["episode_frame_number"][0]
            else:  # the same game goes on, one frame later in the stack
                seen_life_loss += 1
                assert np.array_equal(after_obs[0, :3], obs[0, 1:])
                assert after_info["episode_frame_number"][0] == info["episode_frame_number"][0] + 4
            obs, info = after_obs, after_info
    envs.close()
    assert seen_life_loss > 10 and seen_reset >= 2


def test_game_restarted_covers_each_signals_blind_spot():
    def info(lives, frame):
        return {"lives": np.array(lives), "episode_frame_number": np.array(frame)}

    cases = [  # (terminated, truncated, lives before -> after, frame before -> after, restarted)
        (True, False, (3, 2), (400, 404), False),  # life loss: the game goes on
        (False, False, (3, 3), (400, 404), False),  # an ordinary step
        (True, False, (1, 5), (800, 20), True),  # game over, new game with full lives
        (True, False, (0, 0), (3000, 24), True),  # game over in a game without lives (Pong)
        (True, False, (6, 5), (900, 25), True),  # game over holding bonus lives: frame counter tells
        (True, False, (1, 5), (16, 40), True),  # game shorter than the no-op reset: lives tell
        (False, True, (4, 5), (108_000, 30), True),  # time limit
    ]
    for terminated, truncated, lives, frames, want in cases:
        got = sd.game_restarted(
            np.array(terminated), np.array(truncated), info(lives[1], frames[1]), info(lives[0], frames[0])
        )
        assert got == want, (terminated, truncated, lives, frames)


def test_evaluation_env_ends_episodes_only_at_game_over():
    """`life_loss_terminal=False` (evaluation): a lost life is neither terminated nor a restart."""
    envs = sd.make_env("BreakoutNoFrameskip-v4", 2, life_loss_terminal=False)
    obs, info = envs.reset(seed=0)
    rng, lost, over = np.random.default_rng(0), 0, 0
    for _ in range(800):
        prev_lives = info["lives"]
        obs, _, terminated, truncated, info = envs.step(rng.integers(0, 4, 2))
        life_lost = (info["lives"] < prev_lives) & ~terminated
        lost += life_lost.sum()
        over += terminated.sum()
        assert not (terminated & (info["lives"] < prev_lives)).any()
    envs.close()
    assert lost > 5 and over >= 2


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
