"""Soft DQN on Atari: standard, soft-KL and soft-entropy backups, 1- or n-step.

Section 3.5 and the DQN experiment of Section 6.2 of "Equivalence Between Policy Gradients and Soft Q-Learning"
(Schulman, Chen, Abbeel 2017). Nature DQN (CleanRL's dqn_atari hyperparameters, epsilon-greedy exploration in every
condition) except for the value the target bootstraps from:

    standard (--tau 0):                  y = r + gamma * max_a' Qtarget(s', a')                          (eq. 81)
    soft, KL penalty (--regularizer kl): y = r + gamma * tau*(logsumexp_a' Qtarget(s',a')/tau - log|A|)  (eq. 82)
    soft, entropy bonus (default):       y = r + gamma * tau* logsumexp_a' Qtarget(s',a')/tau            (eq. 83)

i.e. V_Q of eq. 39 with a uniform reference policy (the paper prints eqs. 82-83 without the leading tau). With
--n-step N the target is eq. 46: the rewards of s_{t+1..t+N-1} are augmented with the Boltzmann policy's -tau*KL (or
+tau*H), taken when the transition was collected. The equations and the paper's typos: docs/paper.md.
Munchausen DQN (Vieillard et al. 2020), the soft backup's best-known successor, is one option on top of the entropy
form: --munchausen-alpha adds alpha * clip(tau * log softmax(Qtarget(s_t)/tau)[a_t], l0, 0) to the reward.

Run:
    python soft_dqn.py --tau 0.1                        # soft (entropy-bonus) DQN on Breakout; --tau 0: standard
    python soft_dqn.py --munchausen-alpha 0.9 --tau 0.03          # Munchausen DQN (their alpha, tau, l0 = -1)
    python soft_dqn.py --resume runs/<run>/checkpoint.pt --total-timesteps 20000000   # go on, or further
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
from typing import Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
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
    """number of full games played at epsilon 0.05 after `--save-model`"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """the id of the environment (`BreakoutNoFrameskip-v4` or `ALE/Breakout-v5`: both name the game)"""
    total_timesteps: int = 10_000_000
    """total timesteps of the experiments (agent steps summed over envs; 4 frames each)"""
    num_envs: int = 1
    """the number of parallel game environments"""
    learning_rate: float = 1e-4
    """the learning rate of the optimizer"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size (transitions; each 84x84 frame is stored once)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.1
    """the temperature of the soft backup (entropy or KL coefficient); 0 is the standard max backup"""
    regularizer: Literal["entropy", "kl"] = "entropy"
    """soft backup form: `entropy` bonus (eq. 83) or `kl` penalty against uniform (eq. 82)"""
    n_step: int = 1
    """the number of steps in the target (eq. 46)"""
    munchausen_alpha: float = 0.0
    """Munchausen DQN's alpha: scale of the log-policy bonus in the reward (0: off; needs tau > 0, entropy, 1-step)"""
    munchausen_l0: float = -1.0
    """Munchausen DQN's l0: the bonus tau*log pi(a|s) is clipped to [l0, 0]"""
    target_network_frequency: int = 1000
    """the timesteps it takes to copy the Q-network into the target network"""
    batch_size: int = 32
    """the batch size of sample from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.01
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.10
    """the fraction of `total-timesteps` it takes from start-e to go end-e"""
    learning_starts: int = 80000
    """timestep to start learning"""
    train_frequency: int = 4
    """the frequency of training (timesteps per gradient step, whatever num-envs is)"""
    compile: bool = False
    """torch.compile the update (forward, loss and backward; not the Adam step) and the acting forward pass"""
    cudagraphs: bool = False
    """with --compile on CUDA: also capture both as CUDA graphs (torch.compile mode `reduce-overhead`)"""
    checkpoint_every: int = 0
    """write `runs/{run_name}/checkpoint.pt` every this many agent steps and at the end; 0: only on SIGINT/SIGTERM"""
    checkpoint_replay: bool = False
    """save the replay in checkpoints (1M: 7.1 GB); a resume without it stops learning to refill it (Breakout 2M: -16%)"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint with its options; only --total-timesteps, --checkpoint-every,
    --checkpoint-replay, --track, --cuda, --compile and --cudagraphs may be given"""

    def __post_init__(self):
        """Reject what would crash the envs, fail late or train silently wrong (tyro shows it and exits 2)."""
        ale_game_name(self.env_id)
        slots = self.buffer_size // max(self.num_envs, 1)
        replay_gb, free_gb = self.buffer_size * FrameReplayBuffer.BYTES_PER_SLOT / 1e9, available_memory() / 1e9
        munchausen_ok = self.munchausen_alpha == 0 or (self.tau > 0 and self.regularizer == "entropy" and self.n_step == 1)
        checks = {
            "--seed must be in [0, 2**31 - 2**16) (ale-py seeds env i with seed + i)": 0 <= self.seed < 2**31 - 2**16,
            f"--tau must be a finite number >= 0 (0: max backup), got {self.tau}": 0 <= self.tau < math.inf,
            "--n-step and --num-envs must be >= 1": min(self.n_step, self.num_envs) >= 1,
            f"--munchausen-alpha must be finite, >= 0: {self.munchausen_alpha}": 0 <= self.munchausen_alpha < math.inf,
            "--munchausen-alpha > 0 needs --tau > 0, --regularizer entropy and --n-step 1": munchausen_ok,
            f"--munchausen-l0 must be finite, <= 0: {self.munchausen_l0}": -math.inf < self.munchausen_l0 <= 0,
            f"--buffer-size {self.buffer_size:,} needs {replay_gb:,.1f} GB of memory, {free_gb:,.1f} GB available": replay_gb
            < free_gb,
            f"--buffer-size leaves {slots} slots per env; each needs more than --n-step + 8": slots > self.n_step + 8,
            "--learning-starts must be below --total-timesteps": self.learning_starts < self.total_timesteps,
            f"--gamma must be in [0, 1], got {self.gamma}": 0 <= self.gamma <= 1,
            "--*-frequency must be >= 1": min(self.train_frequency, self.target_network_frequency) >= 1,
            "need 0 <= --end-e <= --start-e <= 1": 0 <= self.end_e <= self.start_e <= 1,
            "--eval-episodes must be >= 1": self.eval_episodes >= 1,
            "--cudagraphs needs --compile and CUDA": not self.cudagraphs or (self.compile and torch.cuda.is_available()),
        }
        if not all(checks.values()):
            raise ValueError("; ".join(message for message, ok in checks.items() if not ok))


# The paper's math (uniform reference policy pibar = 1/|A| throughout) ------------------------------------------------


def soft_value(q: torch.Tensor, tau: float, regularizer: str) -> torch.Tensor:
    """V_Q(s) over the last axis of `q` (eq. 39; the backups of eqs. 81-83).

    kl:      V = tau * log E_{a~uniform} exp(Q(s,a)/tau) = tau*logsumexp(Q/tau) - tau*log|A|
    entropy: V = tau * logsumexp(Q/tau)  (= the kl form + tau*log|A|)
    tau = 0: V = max_a Q(s,a), the limit of both forms (the standard DQN backup).
    Q - max Q is divided by tau, never Q itself: finite for any |Q| < 1e38 and any tau > 0."""
    q_max = q.max(dim=-1, keepdim=True).values
    if tau == 0:
        return q_max.squeeze(-1)
    v = q_max.squeeze(-1) + tau * torch.logsumexp((q - q_max) / tau, dim=-1)
    return v - tau * math.log(q.shape[-1]) if regularizer == "kl" else v


def boltzmann_entropy(q: torch.Tensor, tau: float) -> torch.Tensor:
    """H(pi_Q(.|s)) of the Boltzmann policy pi_Q = softmax(Q/tau) (eq. 56); 0 for tau = 0 (greedy)."""
    if tau == 0:
        return torch.zeros(q.shape[:-1], dtype=q.dtype, device=q.device)
    pi = torch.softmax((q - q.max(dim=-1, keepdim=True).values) / tau, dim=-1)
    return -torch.special.xlogy(pi, pi).sum(dim=-1)


def soft_bonus(q: torch.Tensor, tau: float, regularizer: str) -> torch.Tensor:
    """The per-step reward augmentation of the entropy-regularized return (eqs. 31, 46): -tau*KL[pi_Q || uniform](s)
    for `kl`, +tau*H(pi_Q)(s) for `entropy`; 0 for tau = 0. With it, V_Q(s) = E_{a~pi_Q}[Q(s,a)] + soft_bonus(s)
    (eq. 31). KL = log|A| - H, so the two forms differ by the constant tau*log|A| per step."""
    entropy = boltzmann_entropy(q, tau)
    return -tau * (math.log(q.shape[-1]) - entropy) if regularizer == "kl" else tau * entropy


def n_step_returns(rewards, bonuses, terminated, truncated, gamma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bootstrap-free part of the n-step soft target (eq. 46) and where to bootstrap.

    Row b holds steps d = 0..n-1 from time t: reward r_{t+d}, the soft bonus of state s_{t+d} (-tau*KL or +tau*H; its
    d = 0 entry cancels in eq. 46 and is ignored), and whether the transition from s_{t+d} ended the episode
    (`terminated`) or hit the time limit (`truncated`). With m the first such d (n-1 if none):

        G_t   = r_t + sum_{d=1}^{m} gamma^d (r_{t+d} + bonus_{t+d})
        y_t   = G_t + gamma^{m+1} * V_Q(s_{t+m+1}) * (0 if terminated at m else 1)

    Returns (G_t, bootstrap discount gamma^{m+1} or 0, bootstrap offset m+1), all shape (B,). A truncation
    bootstraps from the state it cut at."""
    n = rewards.shape[1]
    stop = terminated | truncated
    # alive[:, d]: no episode end strictly before step d
    alive = torch.cumprod(torch.cat([torch.ones_like(stop[:, :1]), ~stop[:, :-1]], dim=1).to(rewards.dtype), dim=1)
    step_reward = rewards + torch.cat([torch.zeros_like(bonuses[:, :1]), bonuses[:, 1:]], dim=1)
    discounts = gamma ** torch.arange(n, dtype=rewards.dtype, device=rewards.device)
    returns = (alive * discounts * step_reward).sum(dim=1)
    last = torch.where(stop.any(dim=1), stop.to(torch.uint8).argmax(dim=1), n - 1)  # argmax: first True
    offset = last + 1
    terminal = terminated.gather(1, last[:, None]).squeeze(1)
    bootstrap_discount = (gamma ** offset.to(rewards.dtype)) * (~terminal).to(rewards.dtype)
    return returns, bootstrap_discount, offset


def munchausen_term(q_target: torch.Tensor, actions: torch.Tensor, tau: float, l0: float) -> torch.Tensor:
    """clip(tau * log pibar(a_t|s_t), l0, 0), pibar = softmax(Qtarget(s_t, .)/tau) the target network's Boltzmann
    policy: Munchausen DQN's reward bonus (Vieillard, Pietquin, Geist 2020). With it,

        y = r + alpha clip(tau log pibar(a_t|s_t), l0, 0) + gamma sum_a' pibar(a'|s') [Qtarget(s',a') - tau log pibar(a'|s')]

    and the last sum is the entropy form's V_Q(s') = tau*logsumexp(Qtarget(s')/tau) (eq. 83, `soft_value`).
    tau*log pibar = (Q - max Q) - tau*logsumexp((Q - max Q)/tau) through log_softmax, never the log of a softmax:
    finite for |Q| up to 1e6 and tau down to 1e-6."""
    z = q_target - q_target.max(dim=-1, keepdim=True).values
    tau_log_pi = tau * F.log_softmax(z / tau, dim=-1).gather(1, actions[:, None]).squeeze(1)
    return tau_log_pi.clamp(min=l0, max=0.0)


# Network, replay memory (each 84x84 frame stored once; stacks rebuilt at sample time) --------------------------------


class QNetwork(nn.Module):
    """Nature DQN: uint8 frames (N, 4, 84, 84) -> Q(s, .) (N, |A|)."""

    def __init__(self, num_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, num_actions),
        )
        self.to(memory_format=torch.channels_last)  # conv weights NHWC once, not converted at every call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last (NHWC) like the weights: oneDNN's fastest CPU convolutions; converted while still uint8
        return self.network(x.contiguous(memory_format=torch.channels_last).float() / 255.0)


def available_memory() -> float:
    """Bytes this process can have now: Linux's MemAvailable within a cgroup v2 limit (a Slurm job's, a container's)."""
    available, limit, used = math.inf, "max", 0  # what cannot be read (not Linux, no cgroup v2) does not limit
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit, used = f.read().strip(), int(g.read())  # "max" when unlimited
    except (OSError, StopIteration):
        pass
    return min(available, int(limit) - used) if limit.isdigit() else available


class ReplaySample(NamedTuple):
    env: torch.Tensor  # (B,) which env's ring
    slot: torch.Tensor  # (B,) absolute slot index of s_t in that ring
    obs: torch.Tensor  # (B, 4, 84, 84) uint8 stack of s_t
    actions: torch.Tensor  # (B,)
    rewards: torch.Tensor  # (B, n) clipped rewards r_{t..t+n-1}
    bonuses: torch.Tensor  # (B, n) soft bonus of s_{t..t+n-1}
    terminated: torch.Tensor  # (B, n)
    truncated: torch.Tensor  # (B, n)


class FrameReplayBuffer:
    """Replay memory that stores each frame once: one ring of slots per env. Slot k of env e holds the newest frame of
    observation s_k, the action taken in it, the clipped reward, the soft bonus of s_k, and whether that transition
    terminated (life loss or game over) or was truncated. A stack is the frames of slots k-3..k, those before the game's
    first slot zeroed (as ale-py does after a reset). A game's end adds a slot with its last observation (no action) for
    a truncation to bootstrap from; the next slot starts the new game. 1M slots take 7.07 GB."""

    BYTES_PER_SLOT = 84 * 84 + 13  # a frame; action, reward, bonus (4 + 4), four flags

    def __init__(self, buffer_size: int, num_envs: int, n_step: int, frame_shape=(84, 84), stack: int = 4):
        self.num_envs, self.n_step, self.stack = num_envs, n_step, stack
        self.capacity = buffer_size // num_envs  # slots per env
        n = num_envs * self.capacity  # slot k of env e is row e * capacity + k of each array: one index_select gathers a batch
        self.frames = torch.zeros((n, *frame_shape), dtype=torch.uint8)
        self.actions = torch.zeros(n, dtype=torch.uint8)  # Atari has at most 18 actions
        self.rewards, self.bonuses = torch.zeros(n), torch.zeros(n)
        self.terminated, self.truncated = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        self.first = torch.zeros(n, dtype=torch.bool)  # slot opens a game
        self.acted = np.zeros(n, dtype=bool)  # False for a game's final-observation slot (no action)
        self.count = np.zeros(num_envs, dtype=np.int64)  # slots written per env, ever
        self._next_first = np.ones(num_envs, dtype=bool)

    def _rows(self, env: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """Flat rows of absolute slots `slot` in rings `env` (any matching shapes)."""
        return env * self.capacity + slot % self.capacity

    def _write(self, envs: np.ndarray, frames, actions, rewards, bonuses, terminated, truncated, first, acted):
        rows = self._rows(envs, self.count[envs])
        fields = (self.frames, self.actions, self.rewards, self.bonuses, self.terminated, self.truncated, self.first)
        for field, value in zip(fields, (frames, actions, rewards, bonuses, terminated, truncated, first)):
            field[rows] = torch.as_tensor(np.asarray(value)).to(field.dtype)
        self.acted[rows] = acted
        self.count[envs] += 1

    def add(self, obs, actions, rewards, bonuses, terminated, truncated, restarted, final_obs=None):
        """Store one vector step (s_t, a_t, r_t, bonus(s_t), end flags) and, where a game restarted, its last observation."""
        every = np.arange(self.num_envs)
        self._write(every, obs[:, -1], actions, rewards, bonuses, terminated, truncated, self._next_first, True)
        ended = np.flatnonzero(restarted)
        if len(ended):
            self._write(ended, final_obs[ended, -1], 0, 0, 0, False, False, False, False)  # no action, reward or flags
        self._next_first = np.asarray(restarted, dtype=bool).copy()

    def stacks(self, env: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Observation stacks (B, 4, 84, 84) of absolute slots `slot` in rings `env`."""
        slots = slot[:, None] + torch.arange(-self.stack + 1, 1)
        rows = env[:, None] * self.capacity + slots % self.capacity
        frames = self.frames.index_select(0, rows.flatten()).view(*rows.shape, *self.frames.shape[1:])
        # frame k-j belongs to the stack iff none of slots k-j+1..k opens a game
        opens = self.first[rows[:, 1:]]
        keep = torch.ones(rows.shape, dtype=torch.bool)
        keep[:, :-1] = (~opens).flip(1).to(torch.uint8).cumprod(1).flip(1).bool()
        return frames.mul_(keep[:, :, None, None])

    def end_games(self, obs: np.ndarray) -> None:
        """End every game at `obs` (a checkpoint restarts the envs): its last transition is truncated, bootstrapping there."""
        going = np.flatnonzero(~self._next_first)  # envs whose current game has a stored transition
        if len(going):
            self.truncated[self._rows(going, self.count[going] - 1)] = True
            self._write(going, obs[going, -1], 0, 0, 0, False, False, False, False)
        self._next_first[:] = True

    def state_dict(self) -> dict:
        return {name: value for name, value in vars(self).items() if isinstance(value, (torch.Tensor, np.ndarray))}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name)[...] = value

    def sampleable(self) -> tuple[np.ndarray, np.ndarray]:
        """Per env, the inclusive range [lo, hi] of slots whose stack and n-step window are stored."""
        wrapped = self.count > self.capacity
        lo = np.where(wrapped, self.count - self.capacity + self.stack - 1, 0)
        hi = self.count - 1 - self.n_step
        return lo, hi

    def sample(self, batch_size: int, rng: np.random.Generator) -> ReplaySample:
        lo, hi = self.sampleable()
        sizes = np.maximum(hi - lo + 1, 0)
        if sizes.sum() == 0:
            raise RuntimeError("replay buffer holds no complete transition yet")
        cum = np.cumsum(sizes)
        env, slot = np.empty(batch_size, dtype=np.int64), np.empty(batch_size, dtype=np.int64)
        todo = np.arange(batch_size)
        while len(todo):  # resample the rare final-observation slots (no action taken there)
            u = rng.integers(0, cum[-1], size=len(todo))
            e = np.searchsorted(cum, u, side="right")
            env[todo] = e
            slot[todo] = lo[e] + u - (cum[e] - sizes[e])
            todo = todo[~self.acted[self._rows(env[todo], slot[todo])]]
        window = torch.from_numpy(self._rows(env[:, None], slot[:, None] + np.arange(self.n_step)))
        env, slot = torch.from_numpy(env), torch.from_numpy(slot)
        obs, actions = self.stacks(env, slot), self.actions[window[:, 0]].long()
        ends = self.rewards[window], self.bonuses[window], self.terminated[window], self.truncated[window]
        return ReplaySample(env, slot, obs, actions, *ends)


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


# Training: epsilon-greedy acting, one TD step on the soft target per --train-frequency env steps ---------------------


def main():
    signal.signal(signal.SIGINT, stop_softly)  # from the start: a signal while the envs are built takes effect after
    signal.signal(signal.SIGTERM, stop_softly)
    args, checkpoint = parse_args()
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    print(f"device: {device} (torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
    run_name, run_dir, writer = start_run(args, checkpoint)
    torch.manual_seed(args.seed)  # the networks' initialization; every other draw has a generator of its own
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)

    envs = make_env(args.env_id, args.num_envs)
    num_actions = envs.single_action_space.n
    q_network = QNetwork(num_actions).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)  # one kernel, not one per tensor
    target_network = QNetwork(num_actions).to(device)
    target_network.load_state_dict(q_network.state_dict())
    rb = FrameReplayBuffer(args.buffer_size, args.num_envs, args.n_step)
    bonus_needed = args.tau > 0 and args.n_step > 1  # n-step targets use every stored state's bonus (eq. 46)

    @torch.no_grad()
    def q_values(obs: torch.Tensor) -> torch.Tensor:  # Q(s, .) for acting (and the soft bonus of eq. 46)
        return q_network(obs)

    def update(obs, next_obs, actions, returns, bootstrap_discount) -> tuple[torch.Tensor, ...]:
        """The TD loss of the target (eqs. 81-83, 46; Munchausen's bonus with --munchausen-alpha) and its
        gradient; returns the loss, Q(s, .) and the Munchausen terms (None without), detached."""
        with torch.no_grad():
            td_target = returns + bootstrap_discount * soft_value(target_network(next_obs), args.tau, args.regularizer)
            bonus = None
            if args.munchausen_alpha > 0:
                bonus = munchausen_term(target_network(obs), actions, args.tau, args.munchausen_l0)
                td_target = td_target + args.munchausen_alpha * bonus
        q_all = q_network(obs)
        loss = F.mse_loss(q_all.gather(1, actions[:, None]).squeeze(1), td_target)
        optimizer.zero_grad()
        loss.backward()
        return loss.detach(), q_all.detach(), bonus

    if args.compile:
        q_values = torch.compile(q_values, mode="reduce-overhead" if args.cudagraphs else None)
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    # Updates run from step `train_from` on, one per `train_frequency` steps, counted from `updates_before`.
    global_step, num_updates, games_env0, video_frames = 0, 0, 0, []
    train_from, updates_before = args.learning_starts, 0
    if checkpoint:
        q_network.load_state_dict(checkpoint["q_network"])
        target_network.load_state_dict(checkpoint["target_network"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng.bit_generator.state = checkpoint["rng"]
        global_step, num_updates, games_env0 = checkpoint["global_step"], checkpoint["num_updates"], checkpoint["games_env0"]
        if checkpoint["replay"]:
            rb.load_state_dict(checkpoint["replay"])
        else:  # the replay was not saved: collect --learning-starts new steps before updating again
            train_from, updates_before = global_step + args.learning_starts, num_updates
            print(f"no replay memory in the checkpoint: collecting {args.learning_starts:,} steps before updating again")
    obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
    game_return, game_length, episodic_returns = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=np.int64), []
    start_time, start_step, last_report = time.time(), global_step, [time.time(), global_step]
    checkpoint_path = f"{run_dir}/checkpoint.pt"
    exploration_steps = max(1, int(args.exploration_fraction * args.total_timesteps))
    while global_step < args.total_timesteps:
        epsilon = max((args.end_e - args.start_e) / exploration_steps * global_step + args.start_e, args.end_e)
        explore = rng.random(args.num_envs) < epsilon
        actions = rng.integers(0, num_actions, args.num_envs)
        bonus = np.zeros(args.num_envs, dtype=np.float32)
        if bonus_needed or not explore.all():
            q = q_values(torch.from_numpy(obs).to(device)).cpu()  # one device->host copy per step
            actions = np.where(explore, actions, q.argmax(dim=1).numpy())
            if bonus_needed:
                bonus = soft_bonus(q, args.tau, args.regularizer).numpy()

        prev_info = info
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        restarted = game_restarted(terminated, truncated, info, prev_info)
        rb.add(obs, actions, np.clip(reward, -1, 1), bonus, terminated, truncated, restarted, info.get("final_obs"))
        if args.capture_video and video_schedule(games_env0):
            video_frames.append(obs[0, -1].copy())
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
        obs = next_obs
        global_step += args.num_envs

        # Training: one gradient step per `train_frequency` env steps, whatever num_envs is.
        while global_step > train_from and num_updates < updates_before + (global_step - train_from) // args.train_frequency:
            batch = rb.sample(args.batch_size, rng)
            returns, discount, offset = n_step_returns(*batch[4:], args.gamma)  # rewards, bonuses, terminated, truncated
            next_obs_batch = rb.stacks(batch.env, batch.slot + offset)
            inputs = (batch.obs, next_obs_batch, batch.actions, returns, discount)
            if device.type == "cuda":  # staged in pinned memory, copied asynchronously: the host does not wait for the GPU
                inputs = [t.pin_memory().to(device, non_blocking=True) for t in inputs]
            loss, q_all, munchausen = update(*inputs)
            optimizer.step()
            num_updates += 1
            if not torch.isfinite(loss):  # a NaN/inf step was taken: stop before the next one
                where = f"at global_step {global_step}, update {num_updates}"
                sys.exit(f"{PROG}: error: non-finite losses/td_loss ({loss.item()}) {where}")
            if num_updates % 100 == 0:
                writer.add_scalar("losses/td_loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_all.gather(1, inputs[2][:, None]).mean().item(), global_step)
                writer.add_scalar("charts/policy_entropy", boltzmann_entropy(q_all, args.tau).mean().item(), global_step)
                if munchausen is not None:
                    writer.add_scalar("losses/munchausen_term", munchausen.mean().item(), global_step)
                writer.add_scalar("charts/epsilon", epsilon, global_step)
                writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)

        if global_step > args.learning_starts and global_step % args.target_network_frequency < args.num_envs:
            target_network.load_state_dict(q_network.state_dict())
        report(global_step, args.total_timesteps, episodic_returns, last_report, learning_starts=train_from)

        every, last = args.checkpoint_every, global_step >= args.total_timesteps
        if STOP or (every > 0 and (last or global_step % every < args.num_envs)):
            # The envs' state cannot be saved, so a checkpoint ends the games in progress, here and in a
            # run resumed from it (truncated, bootstrapping from this observation, not logged as games).
            rb.end_games(obs)
            state = dict(args=vars(args), global_step=global_step, num_updates=num_updates, games_env0=games_env0)
            state |= dict(q_network=q_network.state_dict(), target_network=target_network.state_dict())
            state |= dict(optimizer=optimizer.state_dict(), rng=rng.bit_generator.state)
            save_checkpoint(checkpoint_path, state | dict(replay=rb.state_dict() if args.checkpoint_replay else None))
            if STOP:
                break
            obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
            game_return[:], game_length[:], video_frames = 0.0, 0, []
    stopped = bool(STOP)  # the loop wrote a checkpoint and broke off
    envs.close()

    if args.save_model and not stopped:
        model_path = f"{run_dir}/{args.exp_name}.cleanrl_model"
        torch.save(q_network.state_dict(), model_path)
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


def evaluate(model_path, env_id, eval_episodes, num_envs, device, seed, video_path=None, epsilon=0.05) -> list[float]:
    """Play `eval_episodes` full games (all lives) epsilon-greedily with the saved model; return their raw scores.
    Each env plays a fixed quota of games, so short games are not over-represented."""
    envs = make_env(env_id, min(num_envs, eval_episodes), life_loss_terminal=False)
    model = QNetwork(envs.single_action_space.n).to(device)
    model.load_state_dict(torch.load(model_path, map_location=device))
    rng, n = np.random.default_rng(seed), envs.num_envs
    quota = [len(games) for games in np.array_split(np.arange(eval_episodes), n)]
    returns, running, frames = [[] for _ in range(n)], np.zeros(n), []
    obs, _ = envs.reset(seed=seed)
    while not STOP and any(len(r) < q for r, q in zip(returns, quota)):  # a signal (STOP) ends it early
        with torch.no_grad():
            greedy = model(torch.from_numpy(obs).to(device)).argmax(dim=1).cpu().numpy()
        actions = np.where(rng.random(n) < epsilon, rng.integers(0, envs.single_action_space.n, n), greedy)
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
