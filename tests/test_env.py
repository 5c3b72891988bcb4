"""The environment semantics every script relies on, pinned on the real ale-py AtariVectorEnv
(`make_env`, `game_restarted`, `ale_game_name`: identical in all four scripts): a lost life
lets the game go on, a game over restarts it, and SameStep autoreset makes every step a real
transition. An ale-py upgrade that changes any of it fails here."""

import numpy as np
import pytest

from conftest import NUM_ENVS, STEPS

import soft_dqn as sd


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


@pytest.mark.parametrize(
    "env_id, game",
    [
        ("BreakoutNoFrameskip-v4", "breakout"),
        ("ALE/Breakout-v5", "breakout"),
        ("PongNoFrameskip-v4", "pong"),
        ("MsPacmanNoFrameskip-v4", "ms_pacman"),
        ("ALE/SpaceInvaders-v5", "space_invaders"),
        ("BeamRiderNoFrameskip-v4", "beam_rider"),
        ("Qbert", "qbert"),
    ],
)
def test_env_id_forms(env_id, game):
    assert sd.ale_game_name(env_id) == game
