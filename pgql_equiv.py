"""One A2C loop on Atari, trained by policy gradient or by soft Q-learning, and the equivalence of the two checked
live on the gradients that train it.

Section 4 and the experiment of Section 6.3 (Figure 3) of "Equivalence Between Policy Gradients and Soft Q-Learning"
(Schulman, Chen, Abbeel 2017). Everything (envs, network, rollouts, RMSprop, schedule, clipping, logging) is
a2c_entropy.py in its proper mode; only the loss differs:

    --update pg:  entropy-regularized A2C, L = -log pi(a_t|s_t) Delta_t + tau KL(s_t) + c/2 (V(s_t) - Vhat_t)^2 (eq. 80, 84-86)
    --update ql:  soft Q-learning on the same heads, Q(s,a) = V(s) + tau log(pi(a|s)/pibar(a|s)) (eq. 57),
                  L = 1/2 (Q(s_t,a_t) - y_t)^2,  y_t = tau KL_t + V(s_t) + Delta_t  (n-step soft target, no gradient)

Actions come from pi itself (no epsilon), and there is no target network. In expectation over a_t ~ pi(.|s_t), the
soft Q-learning gradient is tau x the policy gradient plus the gradient of 1/2 (V - Vhat)^2 (eqs. 58-65): A2C with
value coefficient c = 1/tau. Section 6.3 scales the gradient into the advantage stream tau log(pi/pibar) by 1/tau and
into the value stream by c = 0.5 (`--grad-scaling`, default; forward values unchanged), which makes the two updates
equal in expectation; the paper prints "1/gamma" for 1/tau (docs/paper.md). Every `--equiv-check-every` updates the
run logs, on its current batch, how close the two gradients are with the expectation over actions taken exactly, for
returns that depend on the action so that every term of the identity is compared (`equiv/*`).

Run:
    python pgql_equiv.py --update pg          # entropy-regularized ("proper") A2C
    python pgql_equiv.py --update ql          # soft Q-learning on Q = V + tau*log pi, same hyperparameters
    python pgql_equiv.py --update ql --no-grad-scaling   # raw soft-Q: value weight 1/tau (the paper's c = 100 instability)
    python pgql_equiv.py --resume runs/<run>/checkpoint.pt --total-timesteps 20000000   # go on, or further
"""

import argparse
import contextlib
import datetime
import math
import os
import re
import signal
import sys
import time
import zipfile
from dataclasses import dataclass, fields
from typing import Literal, Optional

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
    """number of full games played with the stochastic policy after `--save-model`"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """the id of the environment (`BreakoutNoFrameskip-v4` or `ALE/Breakout-v5`: both name the game)"""
    total_timesteps: int = 10_000_000
    """total timesteps of the experiments (agent steps summed over envs; 4 frames each)"""
    update: Literal["pg", "ql"] = "pg"
    """`pg`: entropy-regularized policy gradient (A2C, proper); `ql`: soft Q-learning on Q = V + tau log(pi/pibar)"""
    grad_scaling: bool = True
    """ql: scale the gradient into the advantage stream by 1/tau and into the value stream by --vf-coef (Section 6.3)"""
    equiv_check_every: int = 100
    """every this many updates, log the exact-expectation QL vs PG gradient comparison (`equiv/*`); 0 disables"""
    tau: float = 0.01
    """the entropy / KL coefficient (temperature); > 0 for `--update ql`"""
    regularizer: Literal["entropy", "kl"] = "entropy"
    """`entropy` bonus +tau*H or `kl` penalty -tau*KL[pi || uniform]; they differ by tau*log|A| per step"""
    learning_rate: float = 7e-4
    """the learning rate of the optimizer (RMSprop)"""
    anneal_lr: bool = True
    """toggle linear decay of the learning rate to 0 over the run"""
    num_envs: int = 16
    """the number of parallel game environments"""
    num_steps: int = 5
    """the number of steps to run in each environment per policy rollout (the n of the n-step return)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    vf_coef: float = 0.5
    """coefficient c of the value loss 1/2 (V - Vhat)^2 (eq. 86)"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    rmsprop_alpha: float = 0.99
    """RMSprop's decay of the mean square"""
    rmsprop_eps: float = 1e-5
    """RMSprop's epsilon (added inside the square root, as in TensorFlow)"""
    log_interval: int = 100
    """log the losses every this many updates"""
    compile: bool = False
    """torch.compile the network: acting, V(s_T), and the update's backward pass through those graphs"""
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
            f"--tau must be a finite number >= 0, got {self.tau}": 0 <= self.tau < math.inf,
            "--num-envs and --num-steps must be >= 1": min(self.num_envs, self.num_steps) >= 1,
            f"--total-timesteps must be >= --num-envs * --num-steps = {rollout}": self.total_timesteps >= rollout,
            f"--gamma must be in [0, 1], got {self.gamma}": 0 <= self.gamma <= 1,
            "--learning-rate must be a finite number > 0": 0 < self.learning_rate < math.inf,
            "--vf-coef must be >= 0 and --max-grad-norm > 0": self.vf_coef >= 0 and self.max_grad_norm > 0,
            "--rmsprop-alpha must be in [0, 1) and --rmsprop-eps > 0": 0 <= self.rmsprop_alpha < 1 and self.rmsprop_eps > 0,
            "--log-interval must be >= 1": self.log_interval >= 1,
            "--eval-episodes must be >= 1": self.eval_episodes >= 1,
            "--tau 0 has no soft Q-function: --update ql and the equivalence check need --tau > 0 (plain A2C: "
            "--equiv-check-every 0)": self.tau > 0 or (self.update == "pg" and self.equiv_check_every == 0),
            "--equiv-check-every must be >= 0 (0 disables)": self.equiv_check_every >= 0,
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


def a2c_loss(logits, values, actions, advantages, value_targets, tau, regularizer, vf_coef):
    """L = L_policy + c * L_value, averaged over the batch (eqs. 84-86):

        L_policy = -log pi(a_t|s_t) * Delta_t + tau * KL[pi || pibar](s_t)    (or - tau * H(s_t): same gradient)
        L_value  = 1/2 (V(s_t) - Vhat_t)^2

    Delta_t and Vhat_t are constants (no gradient flows through the targets). Its gradient in the policy parameters
    is minus the estimator of eq. 79 or 80 (whichever built Delta). Returns the loss and its parts (detached).
    """
    log_pi = F.log_softmax(logits, dim=-1)
    entropy, kl = entropy_and_kl(logits)
    policy_loss = -(log_pi.gather(1, actions[:, None]).squeeze(1) * advantages.detach()).mean()
    regularizer_loss = tau * kl.mean() if regularizer == "kl" else -tau * entropy.mean()
    value_loss = 0.5 * (values - value_targets.detach()).pow(2).mean()
    loss = policy_loss + regularizer_loss + vf_coef * value_loss
    parts = dict(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy.mean(), kl=kl.mean())
    return loss, {k: v.detach() for k, v in parts.items()}


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """a ~ pi(.|s) = softmax(logits) by the Gumbel-max trick, argmax(logits - log E), E ~ Exp(1). Unlike torch.multinomial
    it does not raise on NaN logits: a diverged network reaches the next update's loss check, which names the step."""
    return (logits - torch.empty_like(logits).exponential_(generator=generator).log()).argmax(dim=-1)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Var(targets - predictions) / Var(targets): 1 is perfect, 0 no better than a constant."""
    var = targets.var()
    return torch.where(var > 0, 1 - (targets - predictions).var() / var, torch.full_like(var, float("nan")))


# Section 4: soft Q-learning on the policy and value heads, and its equivalence to the policy gradient ----------------


def gscale(x: torch.Tensor, k: float) -> torch.Tensor:
    """x in the forward pass, k * (its gradient) in the backward pass (Section 6.3's scaling)."""
    return x.detach() + k * (x - x.detach())


def soft_q_values(logits, values, tau, value_scale=1.0, advantage_scale=1.0) -> torch.Tensor:
    """Q(s,a) = V(s) + tau * log(pi(a|s) / pibar(a|s)) for every action, shape (N, |A|) (eq. 57 with pi = pi_Q: the
    policy and value heads define a soft Q-function, a dueling network whose advantage stream is tau log(pi/pibar)).
    The gradient into the value stream is scaled by `value_scale`, into the advantage stream by `advantage_scale`."""
    log_ratio = F.log_softmax(logits, dim=-1) + math.log(logits.shape[-1])  # log(pi / pibar), pibar uniform
    return gscale(values, value_scale)[:, None] + tau * gscale(log_ratio, advantage_scale)


def soft_q_target(values: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor, tau: float) -> torch.Tensor:
    """The n-step soft Q target y_t = tau*KL_t + V(s_t) + Delta_t (Section 4; Delta_t the proper mode's n-step advantage
    of eq. 52), held constant (no gradient, no target network)."""
    return (tau * kl + values + advantages).detach()


def soft_q_scales(tau: float, vf_coef: float, grad_scaling: bool) -> tuple[float, float]:
    """(value-stream, advantage-stream) gradient scales: (c, 1/tau) with Section 6.3's scaling, which turns E_a[grad L_QL]
    into the A2C gradient with value coefficient c; (1, 1) without, where E_a[grad L_QL] = tau * (A2C's with c = 1/tau)
    (eq. 65)."""
    return (vf_coef, 1.0 / tau) if grad_scaling else (1.0, 1.0)


def ql_loss(logits, values, actions, advantages, tau, vf_coef, grad_scaling) -> torch.Tensor:
    """1/2 (Q(s_t, a_t) - y_t)^2 averaged over the batch: the soft Q-learning loss on the sampled actions, with Q from
    `soft_q_values` (gradients scaled by `soft_q_scales`) and y_t from `soft_q_target`."""
    q_values = soft_q_values(logits, values, tau, *soft_q_scales(tau, vf_coef, grad_scaling))
    targets = soft_q_target(values, advantages, entropy_and_kl(logits)[1], tau)
    return 0.5 * (q_values.gather(1, actions[:, None]).squeeze(1) - targets).pow(2).mean()


def a2c_loss_like_ql(logits, values, actions, advantages, value_targets, tau, regularizer, vf_coef, grad_scaling):
    """The A2C loss whose gradient `ql_loss`'s equals in expectation (eqs. 58-65): `a2c_loss` with c = vf_coef under
    Section 6.3's scaling, tau * `a2c_loss` with c = 1/tau without it."""
    scale, c = (1.0, vf_coef) if grad_scaling else (tau, 1.0 / tau)
    return scale * a2c_loss(logits, values, actions, advantages, value_targets, tau, regularizer, c)[0]


def expected_losses(logits, values, deltas, tau, regularizer, vf_coef, grad_scaling) -> tuple[torch.Tensor, torch.Tensor]:
    """(QL, PG): `ql_loss` and `a2c_loss_like_ql` with the expectation over a ~ pi(.|s_t) taken exactly, for n-step
    advantages Delta(s_t, a) (B, |A|) that may depend on the action (the identity holds for any). Each loss that trains
    is evaluated on every pair (s_t, a) alone (`torch.vmap`), with Delta(s_t, a) and Vhat = V(s_t) + Delta(s_t, a), and
    summed with weights pi(a|s_t) held constant. Their gradients agree to rounding."""
    num_actions = logits.shape[-1]
    logits_sa, values_sa = logits.repeat_interleave(num_actions, 0), values.repeat_interleave(num_actions, 0)
    actions = torch.arange(num_actions, device=logits.device).repeat(len(logits))
    deltas = deltas.detach().flatten()
    value_targets = values_sa.detach() + deltas
    weights = torch.softmax(logits, dim=-1).detach().flatten() / len(logits)

    def ql(*pair):  # one pair (s_t, a) as a batch of one
        lg, v, a, d, _ = (x[None] for x in pair)
        return ql_loss(lg, v, a, d, tau, vf_coef, grad_scaling)

    def pg(*pair):
        lg, v, a, d, vhat = (x[None] for x in pair)
        return a2c_loss_like_ql(lg, v, a, d, vhat, tau, regularizer, vf_coef, grad_scaling)

    return tuple((weights * torch.vmap(f)(logits_sa, values_sa, actions, deltas, value_targets)).sum() for f in (ql, pg))


def gradient_agreement(loss_a: torch.Tensor, loss_b: torch.Tensor, params: list) -> tuple[float, float]:
    """(cosine, ||g_a - g_b|| / ||g_b||) of the two losses' gradients in `params` (graphs kept),
    reduced in float64: a float32 dot product over millions of entries is off by ~1e-4."""
    g_a = torch.cat([g.flatten() for g in torch.autograd.grad(loss_a, params, retain_graph=True)]).double()
    g_b = torch.cat([g.flatten() for g in torch.autograd.grad(loss_b, params, retain_graph=True)]).double()
    cosine = torch.dot(g_a, g_b) / (g_a.norm() * g_b.norm())
    rel_error = (g_a - g_b).norm() / g_b.norm()
    return cosine.item(), rel_error.item()


def equivalence_check(logits, values, actions, advantages, value_targets, tau, regularizer, vf_coef, grad_scaling, params):
    """How close the QL and PG gradients are on one batch: (cosine, relative error) of the `expected_losses` gradients,
    which the theorem says agree to rounding, and the cosine of the gradients of the losses that training uses
    (sampled actions; they agree only in expectation). Gradients are taken in `params`.

    It backpropagates four times through `logits` and `values`, so the caller gives it a forward pass of its own
    (eager): the training update's graph is then backpropagated once, and with --compile no compiled graph is run
    backward twice (torch 2.13's compiled backward returns wrong gradients the second time, even with retain_graph).
    """
    # With one Delta_t per state, E_a[Delta_t grad log pi] = Delta_t sum_a grad pi = 0 on both sides and
    # the policy-gradient term would never be compared: Delta(s_t, a) adds fixed noise per action.
    noise = torch.randn(logits.shape, generator=torch.Generator(logits.device).manual_seed(0), device=logits.device)
    deltas = advantages[:, None] + advantages.std(correction=0).clamp(min=1e-3) * noise.to(advantages.dtype)
    ql_expected, pg_expected = expected_losses(logits, values, deltas, tau, regularizer, vf_coef, grad_scaling)
    ql_sampled = ql_loss(logits, values, actions, advantages, tau, vf_coef, grad_scaling)
    pg_sampled = a2c_loss_like_ql(logits, values, actions, advantages, value_targets, tau, regularizer, vf_coef, grad_scaling)
    cosine, rel_error = gradient_agreement(ql_expected, pg_expected, params)
    return cosine, rel_error, gradient_agreement(ql_sampled, pg_sampled, params)[0]


@contextlib.contextmanager
def ieee_float32():
    """Float32 convolutions and matmuls at full precision inside the block. cuDNN convolutions default to TF32 on
    Ampere and later GPUs (10-bit mantissa), whose rounding would lift the check's relative error from float32's ~1e-7
    to ~1e-4: the check's figures are float32's on every device. (Training keeps torch's defaults.)"""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


# Network and optimizer (TensorFlow's RMSprop) ------------------------------------------------------------------------


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class ActorCritic(nn.Module):
    """Nature CNN trunk shared by a policy head (logits, init scale 0.01) and a value head:
    uint8 frames (N, 4, 84, 84) -> (logits (N, |A|), V(s) (N,))."""

    def __init__(self, num_actions: int):
        super().__init__()
        self.trunk = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(3136, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1.0)
        self.to(memory_format=torch.channels_last)  # conv weights NHWC once, not converted at every call

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last (NHWC) like the weights: oneDNN's fastest CPU convolutions; converted while still uint8
        hidden = self.trunk(x.contiguous(memory_format=torch.channels_last).float() / 255.0)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as TensorFlow 1 computes it, which is what OpenAI Baselines' A2C used:

        ms <- alpha * ms + (1 - alpha) * g^2      (ms starts at 1, not 0)
        p  <- p - lr * g / sqrt(ms + eps)         (eps inside the square root)

    torch.optim.RMSprop starts ms at 0 and adds eps outside the root: its first step is about 10 * lr
    for any gradient, where TensorFlow's is about lr * g. A2C is known to train worse with it on Atari."""

    def __init__(self, params, lr: float, alpha: float, eps: float):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            for p in params:
                if "square_avg" not in self.state[p]:
                    self.state[p]["square_avg"] = torch.ones_like(p)
            mean_sq = [self.state[p]["square_avg"] for p in params]
            torch._foreach_mul_(mean_sq, group["alpha"])
            torch._foreach_addcmul_(mean_sq, grads, grads, value=1 - group["alpha"])
            denom = torch._foreach_add(mean_sq, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])


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


# Training: 16 envs x 5 steps per update, by the A2C loss or the soft Q-learning loss ---------------------------------


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

    envs = make_env(args.env_id, args.num_envs)
    agent = ActorCritic(envs.single_action_space.n).to(device)
    # The update backpropagates through acting's passes: with --compile its backward is compiled too. The
    # time-limit bootstrap (rare, any batch size) stays eager: compiled, it would recompile for every size.
    policy_value = torch.compile(agent) if args.compile else agent
    optimizer = RMSpropTF(agent.parameters(), lr=args.learning_rate, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps)

    # The rollout's small arrays stay on the host and move to the device once per update.
    T, N = args.num_steps, args.num_envs
    batch_size, num_iterations = T * N, args.total_timesteps // (T * N)
    rewards_buf, truncation_values_buf = np.zeros((T, N), dtype=np.float32), np.zeros((T, N), dtype=np.float32)
    terminated_buf, truncated_buf = np.zeros((T, N), dtype=bool), np.zeros((T, N), dtype=bool)

    global_step, games_env0, video_frames = 0, 0, []
    if checkpoint:
        agent.load_state_dict(checkpoint["agent"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        global_step, games_env0 = checkpoint["global_step"], checkpoint["games_env0"]
    obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
    game_return, game_length, episodic_returns = np.zeros(N), np.zeros(N, dtype=np.int64), []
    start_time, start_step, last_report = time.time(), global_step, [time.time(), global_step]
    checkpoint_path = f"{run_dir}/checkpoint.pt"
    for iteration in range(global_step // batch_size + 1, num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate
        truncation_values_buf[:] = 0.0

        # Acting keeps its autograd graph: the parameters do not change during a rollout, so backpropagating
        # through acting's forward passes gives the gradient a second pass over the rollout would, without it.
        rollout_logits, rollout_values, rollout_actions, rollout_obs = [], [], [], []
        for t in range(T):
            rollout_obs.append(torch.from_numpy(obs).to(device))
            logits, value = policy_value(rollout_obs[-1])
            with torch.no_grad():
                action = sample_actions(logits.cpu(), generator)  # on the host, like the env
            rollout_logits.append(logits)
            rollout_values.append(value)
            rollout_actions.append(action)
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
                    _, cut_values = agent(torch.from_numpy(info["final_obs"][cut]).to(device))
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

        with torch.no_grad():
            _, next_value = policy_value(torch.from_numpy(obs).to(device))  # V(s_T), with the rollout's parameters
        logits, values = torch.stack(rollout_logits), torch.stack(rollout_values)  # (T, N, |A|), (T, N)
        rewards, terminated, truncated, cut_values = (
            torch.from_numpy(b).to(device) for b in (rewards_buf, terminated_buf, truncated_buf, truncation_values_buf)
        )
        bonuses = reward_bonus(logits.detach(), args.tau, args.regularizer)
        advantages, value_targets = n_step_advantages(
            rewards, bonuses, values.detach(), next_value, terminated, truncated, cut_values, args.gamma, "proper"
        )
        logits, values, actions = logits.flatten(0, 1), values.flatten(), torch.cat(rollout_actions).to(device)
        advantages, value_targets = advantages.flatten(), value_targets.flatten()
        pg_loss, parts = a2c_loss(logits, values, actions, advantages, value_targets, args.tau, args.regularizer, args.vf_coef)
        if args.tau > 0:  # the soft Q-learning loss on this batch (logged for both updates)
            q_loss = ql_loss(logits, values, actions, advantages, args.tau, args.vf_coef, args.grad_scaling)
            parts["q_loss"] = q_loss.detach()
        loss = q_loss if args.update == "ql" else pg_loss
        if not torch.isfinite(loss):  # stop before the step that would spread it to the parameters
            bad = [f"losses/{k} ({v.item()})" for k, v in parts.items() if not torch.isfinite(v)] or [f"loss ({loss.item()})"]
            sys.exit(f"{PROG}: error: non-finite {', '.join(bad)} at global_step {global_step}, update {iteration}")
        if args.equiv_check_every > 0 and iteration % args.equiv_check_every == 0:  # on this batch, before the update,
            with ieee_float32():  # through a forward pass of its own (see equivalence_check), without TF32
                check_logits, check_values = agent(torch.cat(rollout_obs))
                batch = (check_logits, check_values, actions, advantages, value_targets)
                hyper = (args.tau, args.regularizer, args.vf_coef, args.grad_scaling)
                cosine, rel_error, cosine_sampled = equivalence_check(*batch, *hyper, list(agent.parameters()))
            writer.add_scalar("equiv/cosine_expected", cosine, global_step)
            writer.add_scalar("equiv/rel_error_expected", rel_error, global_step)
            writer.add_scalar("equiv/cosine_sampled", cosine_sampled, global_step)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()

        if iteration % args.log_interval == 0 or iteration == num_iterations:
            parts["explained_variance"] = explained_variance(values.detach(), value_targets)
            for key, value in parts.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)
        report(global_step, num_iterations * batch_size, episodic_returns, last_report)

        every = args.checkpoint_every
        if STOP or (every > 0 and (iteration == num_iterations or global_step % every < batch_size)):
            state = dict(args=vars(args), global_step=global_step, games_env0=games_env0)
            state |= dict(agent=agent.state_dict(), optimizer=optimizer.state_dict(), generator=generator.get_state())
            save_checkpoint(checkpoint_path, state)
            if STOP:
                break
            # The envs' state cannot be saved, so a checkpoint ends the games in progress, here and in a run
            # resumed from it (their last rollout bootstrapped from V(s_T), as at a time limit; not logged).
            obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
            game_return[:], game_length[:], video_frames = 0.0, 0, []
    stopped = bool(STOP)  # the loop wrote a checkpoint and broke off
    envs.close()

    if args.save_model and not stopped:
        model_path = f"{run_dir}/{args.exp_name}.cleanrl_model"
        torch.save(agent.state_dict(), model_path)
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
    """Play `eval_episodes` full games (all lives) sampling from the saved policy; return their
    raw scores. Each env plays a fixed quota of games, so short games are not over-represented."""
    envs = make_env(env_id, min(num_envs, eval_episodes), life_loss_terminal=False)
    agent = ActorCritic(envs.single_action_space.n).to(device)
    agent.load_state_dict(torch.load(model_path, map_location=device))
    generator, n = torch.Generator().manual_seed(seed), envs.num_envs
    quota = [len(games) for games in np.array_split(np.arange(eval_episodes), n)]
    returns, running, frames = [[] for _ in range(n)], np.zeros(n), []
    obs, _ = envs.reset(seed=seed)
    while not STOP and any(len(r) < q for r, q in zip(returns, quota)):  # a signal (STOP) ends it early
        with torch.no_grad():
            actions = sample_actions(agent(torch.from_numpy(obs).to(device))[0].cpu(), generator).numpy()
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
