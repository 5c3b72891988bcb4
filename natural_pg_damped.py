"""Damped soft Q-learning as a natural policy gradient step, on Atari.

Reference implementation of Section 5 of "Equivalence Between Policy Gradients and Soft
Q-Learning" (Schulman, Chen, Abbeel 2017). The section is theory without an experiment; this
script is the algorithm we designed to run it, and it measures the theorem on every batch it
trains on. Each iteration collects a rollout with pi_old (16 envs x `--num-steps`), computes the
entropy-regularized n-step advantages Delta_t with V_old (eqs. 52-54, as a2c_entropy.py's
proper mode), takes one policy step, then refits the value function:

    --solver damped-q: regress Q_theta(s,a) = V_old(s) + tau log(pi_theta(a|s)/pibar(a|s)) (V_old frozen)
                       onto Qhat^eps_t = Q_old(s_t,a_t) + eps (Qhat_t - Q_old(s_t,a_t)),
                       Qhat_t = V_old(s_t) + tau KL_old(s_t) + Delta_t  (eqs. 74-77),
                       with `--policy-epochs` passes of Adam over minibatches (a fresh Adam each
                       iteration: every iteration is a new regression from theta_old)
    --solver npg:      theta <- theta_old + (eps/tau) F^-1 Psi^T A / B by conjugate gradient on
                       Fisher-vector products (eqs. 66-71)

where psi_t = grad log pi(a_t|s_t), B the batch size and
A_t = Delta_t - tau (log(pi_old(a_t|s_t)/pibar(a_t|s_t)) - KL[pi_old || pibar](s_t)). Term by term
Q_theta - Qhat^eps = tau ((log pi_theta - log pi_old)(a_t|s_t) - (eps/tau) A_t) (eq. 78): the
damped regression is the entropy-regularized natural-gradient regression, and its Gauss-Newton
step is (eps/tau) (Psi^T Psi)^-1 Psi^T A, a natural gradient step with the empirical Fisher
Psi^T Psi / B. `--fisher exact` uses the true Fisher (the Hessian of the KL) instead.

The paper leaves implicit that Psi^T Psi is singular when the network has more parameters
than the batch has samples (1.7M against 320 here): the regression then has many solutions.
`--cg-damping` lambda picks one on both sides. npg solves (F + lambda I) x = g, and damped-q
adds tau^2 lambda/2 ||theta - theta_old||^2 to its loss, whose Gauss-Newton step is then
exactly the same (eps/tau) (Psi^T Psi / B + lambda I)^-1 Psi^T A / B. The default lambda = 0.1
(TRPO's) is measured, not inherited: at 1e-3 the system is so ill-conditioned (the Fisher's top
eigenvalue is ~8) that 10 CG iterations do not determine the step (cosine 0.81 with 50
iterations), and a few epochs of Adam reach a Fisher-metric cosine of ~0.4 with it; at 0.1, CG
converges in 10 iterations and the damped-Q fit reaches ~0.94 (benchmarks/npg_damping_sweep.py).

Every iteration logs, on the batch just trained on, how close the step taken is to the CG
natural step: `npg/cosine_step` in parameter space, `npg/cosine_step_fisher` in the Fisher
metric (the cosine between the two steps' first-order changes of the policy, which does not
depend on how the network is parametrized), `npg/step_norm_ratio` their length ratio and
`npg/kl_old_new` the mean KL(pi_old || pi_new). `--max-kl` caps a step by a KL trust region
(scaled back, the direction kept).

The policy and the value function are separate Nature CNNs. The section assumes V fixed
during the policy step, and with a shared trunk the value regression would move the policy
after its step (and the policy step would move V): the KL and the cosine that the run logs
would no longer describe the natural-gradient step alone. The price is a second network to
run while acting. The equations are restated in ../shared/paper/NOTES.md.

Run:
    python natural_pg_damped.py --solver damped-q --eps 0.5     # fit Q to the damped target, V frozen
    python natural_pg_damped.py --solver npg --eps 0.5          # natural gradient by conjugate gradient
    python natural_pg_damped.py --solver npg --fisher exact --max-kl None --eps 0.01   # the true Fisher, no trust region
    tensorboard --logdir runs
"""

import contextlib
import io
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.func import functional_call, jvp, vjp
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
    solver: Literal["damped-q", "npg"] = "damped-q"
    """`damped-q`: Adam on the damped soft-Q regression; `npg`: the natural gradient step by conjugate gradient"""
    eps: float = 0.1
    """the damping eps in (0, 1] of the soft-Q target; the natural-gradient step size is eps/tau"""
    tau: float = 0.01
    """the entropy / KL coefficient (temperature), > 0"""
    regularizer: Literal["entropy", "kl"] = "entropy"
    """`entropy` bonus +tau*H or `kl` penalty -tau*KL[pi || uniform]; they differ by tau*log|A| per step"""
    fisher: Literal["empirical", "exact"] = "empirical"
    """`empirical`: Psi^T Psi / B at the sampled actions (the damped regression's Gauss-Newton matrix); `exact`: the KL Hessian"""
    cg_iters: int = 10
    """conjugate gradient iterations of the natural-gradient solve"""
    cg_damping: float = 0.1
    """lambda: npg solves (F + lambda I) x = g, damped-q adds tau^2 lambda/2 ||theta - theta_old||^2 (Psi^T Psi is singular)"""
    max_kl: Optional[float] = 0.01
    """scale each policy step back until the mean KL(pi_old || pi_new) on the batch is at most this (`None`: no trust region)"""
    policy_epochs: int = 4
    """damped-q: passes of Adam over the batch's minibatches per iteration"""
    policy_lr: float = 1e-3
    """damped-q: the learning rate of the policy's Adam"""
    value_epochs: int = 4
    """passes of Adam over the batch's minibatches fitting V to Vhat = V_old + Delta, after the policy step"""
    value_lr: float = 2.5e-4
    """the learning rate of the value function's Adam"""
    num_minibatches: int = 4
    """the number of minibatches each epoch splits the batch into"""
    num_envs: int = 16
    """the number of parallel game environments"""
    num_steps: int = 20
    """the number of steps to run in each environment per policy rollout (the n of the n-step return)"""
    gamma: float = 0.99
    """the discount factor gamma"""

    # Speed (does not change the math)
    compile: bool = False
    """torch.compile both networks (acting, the minibatch steps) and the Fisher-vector product's forward-mode pass"""

    # Long runs
    checkpoint_every: int = 0
    """write `runs/{run_name}/checkpoint.pt` every this many agent steps (like --total-timesteps) and at the end; 0: only on SIGINT/SIGTERM"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint, with its options (--total-timesteps and --checkpoint-every may change)"""


def parse_args() -> Args:
    """tyro.cli(Args) and check_args; tyro's boxed parse errors are condensed to one line."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        return tyro.cli(Args)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            args = tyro.cli(Args)
    except SystemExit:
        body = []  # the message: the text between the title's rule and the next rule
        for line in captured.getvalue().splitlines()[1:]:
            text = line.strip().strip("\u2502").strip()
            if text and set(text) <= {"-", "\u2500"}:
                if body:
                    break
            elif text:
                body.append(text)
        sys.exit(f"{os.path.basename(__file__)}: error: {' '.join(body) or 'invalid arguments'} (see --help)")
    check_args(args)
    return args



def check_args(args: Args) -> None:
    """Stop with one line on stderr and a non-zero exit if `args` cannot describe a run."""
    if args.resume is not None:  # the options come from the checkpoint; `resumed` checks them
        if not os.path.isfile(args.resume):
            sys.exit(f"{os.path.basename(__file__)}: error: --resume {args.resume}: no such checkpoint file")
        return
    problems = []
    if not 0 <= args.seed < 2**31 - 2**16:  # ale-py seeds env i with seed + i, a C int
        problems.append(f"--seed must be in [0, 2**31 - 2**16), got {args.seed}")
    try:
        ale_game_name(args.env_id)
    except ValueError as e:
        problems.append(str(e))
    if not 0 < args.eps <= 1:
        problems.append(f"--eps must be in (0, 1], got {args.eps}")
    if not (args.tau > 0 and math.isfinite(args.tau)):
        problems.append(f"--tau must be a finite number > 0 (the natural-gradient step is eps/tau), got {args.tau}")
    if args.cg_iters < 1:
        problems.append(f"--cg-iters must be >= 1, got {args.cg_iters}")
    if not (args.cg_damping >= 0 and math.isfinite(args.cg_damping)):
        problems.append(f"--cg-damping must be a finite number >= 0, got {args.cg_damping}")
    if args.max_kl is not None and not (args.max_kl > 0 and math.isfinite(args.max_kl)):
        problems.append(f"--max-kl must be a finite number > 0, got {args.max_kl}")
    if args.policy_epochs < 1:
        problems.append(f"--policy-epochs must be >= 1, got {args.policy_epochs}")
    if args.value_epochs < 1:
        problems.append(f"--value-epochs must be >= 1, got {args.value_epochs}")
    for name in ("policy_lr", "value_lr"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            problems.append(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    if args.num_envs < 1:
        problems.append(f"--num-envs must be >= 1, got {args.num_envs}")
    if args.num_steps < 1:
        problems.append(f"--num-steps must be >= 1, got {args.num_steps}")
    if args.num_envs >= 1 and args.num_steps >= 1:
        batch_size = args.num_envs * args.num_steps
        if not 1 <= args.num_minibatches <= batch_size:
            problems.append(f"--num-minibatches must be in [1, num-envs * num-steps = {batch_size}], got {args.num_minibatches}")
        if args.total_timesteps < batch_size:
            problems.append(
                f"--total-timesteps {args.total_timesteps} is less than one rollout "
                f"(num-envs * num-steps = {batch_size}): no update would run"
            )
    if not 0 <= args.gamma <= 1:
        problems.append(f"--gamma must be in [0, 1], got {args.gamma}")
    if args.eval_episodes < 1:
        problems.append(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    if args.checkpoint_every < 0:
        problems.append(f"--checkpoint-every must be >= 0 (0: only on SIGINT/SIGTERM), got {args.checkpoint_every}")
    if problems:
        sys.exit(f"{os.path.basename(__file__)}: error: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------
# Environment: ale-py's C++ vector env with the DQN-Nature preprocessing built in.
# ----------------------------------------------------------------------------------------------


def ale_game_name(env_id: str) -> str:
    """`BreakoutNoFrameskip-v4` / `ALE/Breakout-v5` / `breakout` -> ale-py's ROM id `breakout`."""
    from ale_py import roms

    name = env_id.split("/")[-1]
    name = re.sub(r"(NoFrameskip)?-v\d+$", "", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    if name not in roms.get_all_rom_ids():
        raise ValueError(
            f"unknown game {env_id!r} (no ale-py ROM {name!r}); "
            "use an id like BreakoutNoFrameskip-v4 or ALE/Pong-v5"
        )
    return name


def make_env(env_id: str, num_envs: int, life_loss_terminal: bool = True, max_episode_frames: int = 108_000):
    """DQN-Nature Atari: 84x84 grayscale, max-pool over the last 2 of 4 skipped frames, 4-frame
    stack, up to 30 no-ops and FIRE at reset, no sticky actions (the paper's NoFrameskip setting).

    Rewards come back raw (unclipped) so real game scores can be logged; clip for training.
    Autoreset is SameStep: each step is a real transition; when a game ends the returned
    observation already starts the next game ([0, 0, 0, first frame]) and the last
    observation of the ended game is in info["final_obs"].

    With `life_loss_terminal`, losing a life sets `terminated` while the game goes on (the
    step after it continues the same game); that is DQN's EpisodicLifeEnv. ale-py's own
    `episodic_life=True` instead restarts the whole game at every life loss, which is not
    what DQN did, so it stays off. `game_restarted` tells the two kinds of `terminated` apart.
    """
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(
        game=ale_game_name(env_id),
        num_envs=num_envs,
        autoreset_mode="SameStep",
        episodic_life=False,
        life_loss_info=life_loss_terminal,
        reward_clipping=False,
        repeat_action_probability=0.0,
        max_num_frames_per_episode=max_episode_frames,
    )


def game_restarted(terminated: np.ndarray, truncated: np.ndarray, info: dict, prev_info: dict) -> np.ndarray:
    """Which envs started a new game in this step (SameStep autoreset; `info` already
    describes the new game there).

    A truncation always restarts. A `terminated` is a game over, not a life loss, when the
    game's frame counter went back (it only grows within a game) or the lives counter did
    not drop (a life loss always drops it; a new game starts with full lives). Each signal
    alone has a blind spot (a game shorter than the no-op reset; a game ending with bonus
    lives); neither ever fires on a life loss.
    """
    frame_went_back = info["episode_frame_number"] < prev_info["episode_frame_number"]
    lives_kept = info["lives"] >= prev_info["lives"]
    return truncated | (terminated & (frame_went_back | lives_kept))



# ----------------------------------------------------------------------------------------------
# Networks: the policy and the value function are separate (see the module docstring)
# ----------------------------------------------------------------------------------------------


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class NatureCNN(nn.Module):
    """The Nature CNN with a linear head: uint8 frames (N, 4, 84, 84) -> (N, out_features).
    The policy is NatureCNN(|A|, 0.01) (logits, near-uniform at init), the value NatureCNN(1, 1.0)."""

    def __init__(self, out_features: int, head_std: float):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(3136, 512)),
            nn.ReLU(),
            layer_init(nn.Linear(512, out_features), std=head_std),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last (NHWC) input: oneDNN's conv backward is ~30% faster on CPU; same math.
        # The layout is changed while the frames are still uint8 (a quarter of the bytes).
        return self.net(x.contiguous(memory_format=torch.channels_last).float() / 255.0)


# ----------------------------------------------------------------------------------------------
# The paper's math (uniform reference policy pibar = 1/|A| throughout)
# ----------------------------------------------------------------------------------------------


def entropy_and_kl(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H(pi(.|s)) and KL[pi || pibar](s) = sum_a pi log(pi / pibar) = log|A| - H (eq. 26 with
    pibar uniform), over the last axis of the policy's logits."""
    log_pi = F.log_softmax(logits, dim=-1)
    entropy = -(log_pi.exp() * log_pi).sum(dim=-1)
    return entropy, math.log(logits.shape[-1]) - entropy


def reward_bonus(logits: torch.Tensor, tau: float, regularizer: str) -> torch.Tensor:
    """The per-step augmentation of the reward in the entropy-regularized return (eq. 36):
    -tau*KL[pi || pibar](s) for `kl`, +tau*H(pi(.|s)) for `entropy` (= the kl form + tau*log|A|)."""
    entropy, kl = entropy_and_kl(logits)
    return -tau * kl if regularizer == "kl" else tau * entropy


def n_step_advantages(
    rewards: torch.Tensor,
    bonuses: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    truncation_values: torch.Tensor,
    gamma: float,
    entropy_mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages Delta_t and value targets Vhat_t = V(s_t) + Delta_t of one rollout (eqs. 52-54).

    Inputs are (T, N) over rollout steps t and envs: reward r_t, bonus(s_t) (-tau*KL_t or
    +tau*H_t, from `reward_bonus`), V(s_t), the transition's end flags and, where it was
    truncated by the time limit, V of the state it was cut at; `next_value` (N,) is V(s_T)
    after the rollout. Step t's return looks ahead to the rollout's end (T - t steps, the
    A2C n-step return):

        naive  (eq. 79): Vhat_t = r_t            + gamma * Vhat_{t+1}
        proper (eq. 80): Vhat_t = r_t + bonus_t  + gamma * Vhat_{t+1}     (Delta_t = sum_d gamma^d delta_{t+d}, eq. 52)

    with Vhat_T = V(s_T). A termination (a lost life or a game over) cuts the sum and drops
    the bootstrap; a truncation bootstraps from V of the state it cut at. The two modes
    differ in the one line marked below and nowhere else.
    """
    step_rewards = rewards + bonuses if entropy_mode == "proper" else rewards  # <- naive vs proper
    returns = torch.empty_like(rewards)
    future = next_value
    for t in reversed(range(rewards.shape[0])):
        future = torch.where(truncated[t] & ~terminated[t], truncation_values[t], future)
        future = step_rewards[t] + torch.where(terminated[t], 0.0, gamma * future)
        returns[t] = future
    return returns - values, returns



def log_ratio(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log(pi(a_t|s_t) / pibar(a_t|s_t)) for each row of `logits` (B, |A|) and its action (B,),
    pibar uniform: the advantage stream of Q = V + tau log(pi/pibar) (eq. 57)."""
    return F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1) + math.log(logits.shape[-1])


def regularized_advantages(advantages: torch.Tensor, logits_old: torch.Tensor, actions: torch.Tensor, tau: float) -> torch.Tensor:
    """A_t = Delta_t - tau (log(pi_old(a_t|s_t)/pibar(a_t|s_t)) - KL[pi_old || pibar](s_t)) (eqs. 71, 78).

    Psi^T A / B is the entropy-regularized policy gradient: the one-step KL term's gradient
    -tau grad KL(s_t) written as its score-function form E_a[-tau (log(pi/pibar) - KL) grad log pi]."""
    return advantages - tau * (log_ratio(logits_old, actions) - entropy_and_kl(logits_old)[1])


def damped_q_target(
    values_old: torch.Tensor, logits_old: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, tau: float, eps: float
) -> torch.Tensor:
    """Qhat^eps_t = Q_old(s_t,a_t) + eps (Qhat_t - Q_old(s_t,a_t)) (eqs. 74-76), where
    Q_old = V_old + tau log(pi_old/pibar) (eq. 57) and Qhat_t = V_old(s_t) + tau KL_old(s_t) + Delta_t
    is the n-step soft Q target of Section 4. eps = 1 is plain soft Q-learning with V held
    fixed (eqs. 72-73), which is not a natural gradient step."""
    q_old = values_old + tau * log_ratio(logits_old, actions)
    q_hat = values_old + tau * entropy_and_kl(logits_old)[1] + advantages
    return (q_old + eps * (q_hat - q_old)).detach()


def damped_q_loss(logits: torch.Tensor, values_old: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """1/2 mean_t (Q_theta(s_t,a_t) - Qhat^eps_t)^2 with Q_theta = V_old + tau log(pi_theta/pibar)
    and V_old held constant (eq. 77): the damped soft Q-learning regression, in the policy only."""
    q = values_old.detach() + tau * log_ratio(logits, actions)
    return 0.5 * (q - targets).pow(2).mean()


def proximal_term(params: list, params_old: list, tau: float, damping: float) -> torch.Tensor:
    """tau^2 damping/2 ||theta - theta_old||^2. Added to the damped-Q loss, it makes the loss's
    Gauss-Newton step (eps/tau) (Psi^T Psi / B + damping I)^-1 Psi^T A / B: the step that npg
    computes by CG with the same `--cg-damping` (eq. 66 with a ridge; the paper's at damping 0)."""
    return 0.5 * tau**2 * damping * sum((p - q).pow(2).sum() for p, q in zip(params, params_old))


def npg_residual(
    logits: torch.Tensor, logits_old: torch.Tensor, actions: torch.Tensor, reg_advantages: torch.Tensor, tau: float, eps: float
) -> torch.Tensor:
    """r_t = (log pi_theta - log pi_old)(a_t|s_t) - (eps/tau) A_t: the residual of the
    entropy-regularized natural-gradient regression (eqs. 68, 71). Term by term
    Q_theta - Qhat^eps = tau r_t (eq. 78), so the damped-Q loss is tau^2/2 mean r_t^2; linearized
    in theta - theta_old = w, r = Psi w - (eps/tau) A is eq. 66's least-squares residual."""
    return log_ratio(logits, actions) - log_ratio(logits_old, actions).detach() - (eps / tau) * reg_advantages


def policy_jacobian(model: nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable, Callable]:
    """The policy's logits at its current parameters theta (flattened) and the two linear maps
    of J = d logits / d theta at theta: v -> J v (forward mode) and u -> J^T u (reverse mode,
    reusing one forward pass). Returns (theta, logits, jv, jtu), everything detached."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def logits_of(flat: torch.Tensor) -> torch.Tensor:
        tensors = torch.split(flat, [math.prod(s) for s in shapes])
        return functional_call(model, {n: t.view(s) for n, t, s in zip(names, tensors, shapes)}, (obs,))

    logits, vjp_fn = vjp(logits_of, theta)
    return theta, logits.detach(), lambda v: jvp(logits_of, (theta,), (v,))[1], lambda u: vjp_fn(u)[0]


def logit_fisher(logits: torch.Tensor, actions: torch.Tensor, fisher: str) -> Callable:
    """d -> M_t d_t for each state t: the Fisher information of the softmax policy in its logits,
    for logit-space vectors d (B, |A|), with p_t = softmax(logits_t) = pi_old(.|s_t):

        empirical: M_t = (e_{a_t} - p_t)(e_{a_t} - p_t)^T, the outer product of the score at the
                   sampled action: J^T M J / B = Psi^T Psi / B, eq. 66's matrix, with
                   psi_t = grad log pi(a_t|s_t) = J_t^T (e_{a_t} - p_t)
        exact:     M_t = diag(p_t) - p_t p_t^T = E_{a ~ pi}[(e_a - p_t)(e_a - p_t)^T]: J^T M J / B is the
                   Fisher information E_a[psi psi^T], the Hessian of KL(pi_old || pi_theta) at theta_old
    """
    p = torch.softmax(logits, dim=-1)
    score = F.one_hot(actions, logits.shape[-1]).to(p.dtype) - p
    if fisher == "empirical":
        return lambda d: score * (score * d).sum(dim=-1, keepdim=True)
    return lambda d: p * d - p * (p * d).sum(dim=-1, keepdim=True)


def fisher_vector_product(jv: Callable, jtu: Callable, logits: torch.Tensor, actions: torch.Tensor, fisher: str, damping: float) -> Callable:
    """v -> (F + damping I) v, matrix-free: F v = J^T M J v / B (`logit_fisher`'s M, J = d logits /
    d theta from `policy_jacobian`), one forward-mode and one reverse-mode pass per product."""
    weigh = logit_fisher(logits, actions, fisher)
    return lambda v: jtu(weigh(jv(v)) / logits.shape[0]) + damping * v


def fisher_cosine(du: torch.Tensor, dv: torch.Tensor, weigh: Callable) -> torch.Tensor:
    """u^T F v / sqrt(u^T F u v^T F v), the cosine of parameter vectors u, v in the Fisher metric,
    from their logit changes du = J u, dv = J v and `logit_fisher`'s M. In the empirical metric
    it is the cosine of the first-order changes of log pi(a_t|s_t) over the batch."""
    uv, uu, vv = (du * weigh(dv)).sum(), (du * weigh(du)).sum(), (dv * weigh(dv)).sum()
    return uv / (uu * vv).sqrt()


def policy_gradient(jtu: Callable, logits: torch.Tensor, actions: torch.Tensor, reg_advantages: torch.Tensor) -> torch.Tensor:
    """g = Psi^T A / B = sum_t psi_t A_t / B (eq. 66's right-hand side; with the entropy-regularized
    A_t of eq. 71 it is the gradient of the entropy-regularized return)."""
    score = F.one_hot(actions, logits.shape[-1]).to(logits.dtype) - torch.softmax(logits, dim=-1)
    return jtu(score * reg_advantages[:, None] / logits.shape[0])


def conjugate_gradient(matvec: Callable, b: torch.Tensor, iters: int, tol: float = 1e-10) -> tuple[torch.Tensor, float]:
    """Approximately solve A x = b for symmetric positive definite A given only x -> A x, from
    x = 0, in at most `iters` iterations (exact in dim(b) in exact arithmetic). Returns x and
    the relative residual ||b - A x|| / ||b||."""
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = r.dot(r)
    b_norm = b.norm()
    if b_norm == 0:
        return x, 0.0
    for _ in range(iters):
        if rr.sqrt() <= tol * b_norm:
            break
        ad = matvec(d)
        alpha = rr / d.dot(ad)
        x += alpha * d
        r -= alpha * ad
        rr, rr_old = r.dot(r), rr
        d = r + (rr / rr_old) * d
    return x, (rr.sqrt() / b_norm).item()


def mean_kl(logits_old: torch.Tensor, logits_new: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(pi_old(.|s_t) || pi_new(.|s_t))."""
    log_old, log_new = F.log_softmax(logits_old, dim=-1), F.log_softmax(logits_new, dim=-1)
    return (log_old.exp() * (log_old - log_new)).sum(dim=-1).mean()


def kl_backtrack(kl_of: Callable, max_kl: float, start: float = 1.0, shrink: float = 0.5, tries: int = 10) -> tuple[float, float]:
    """The largest fraction f = start * shrink^k (k < tries) of a step whose KL, kl_of(f), is at
    most max_kl: the step is scaled back, its direction kept. Returns (f, kl_of(f)), or
    (0, 0) when no fraction qualifies (the policy stays where it was)."""
    fraction = start
    for _ in range(tries):
        kl = kl_of(fraction)
        if kl <= max_kl:
            return fraction, kl
        fraction *= shrink
    return 0.0, 0.0


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """a ~ pi(.|s) = softmax(logits) by the Gumbel-max trick, argmax(logits - log E), E ~ Exp(1).
    Unlike torch.multinomial it does not raise on NaN logits, so a diverged network reaches the
    loss check of the next update, which names the step."""
    return (logits - torch.empty_like(logits).exponential_(generator=generator).log()).argmax(dim=-1)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Var(targets - predictions) / Var(targets): 1 is perfect, 0 no better than a constant."""
    var = targets.var()
    return torch.where(var > 0, 1 - (targets - predictions).var() / var, torch.full_like(var, float("nan")))



# ----------------------------------------------------------------------------------------------
# Long runs: checkpoints, resume, stop signals
# ----------------------------------------------------------------------------------------------


def resumed(args: Args) -> tuple[Args, Optional[dict]]:
    """With --resume PATH: the run's saved options and its checkpoint. Only --total-timesteps
    and --checkpoint-every, when given on the command line, override the saved ones (to extend
    a run). Without --resume: (args, None)."""
    if args.resume is None:
        return args, None
    try:
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)  # our own file: trusted
        saved = Args(**checkpoint["args"])
    except Exception as e:
        sys.exit(f"{os.path.basename(__file__)}: error: --resume {args.resume}: not a checkpoint of this script ({e})")
    given = {a.split("=")[0] for a in sys.argv[1:]}
    for name in ("total_timesteps", "checkpoint_every"):
        if "--" + name.replace("_", "-") in given:
            setattr(saved, name, getattr(args, name))
    check_args(saved)
    saved.resume = args.resume
    return saved, checkpoint


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save `state` to `path` atomically (write, then rename): a crash mid-write leaves
    the previous checkpoint intact."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def restart_seed(seed: int, global_step: int) -> int:
    """The env seed for games (re)started at `global_step`: the run's seed at step 0; when a
    checkpoint restarts the games, a seed derived from it and the step, the same in a run that
    goes on and in one resumed there."""
    return seed if global_step == 0 else int(np.random.SeedSequence([seed, global_step]).generate_state(1)[0] >> 2)  # < 2**30


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) ask the run to stop at the end of
    the current update, where it writes a final checkpoint and closes its logs. A second
    signal stops at once."""

    def __init__(self):
        self.signum = None
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this update (again to stop now)", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Progress, video, evaluation
# ----------------------------------------------------------------------------------------------


class Progress:
    """One status line (steps, SPS, recent game return, ETA): redrawn in place on a terminal,
    printed as a plain line every 30 s when output goes to a file. SPS and ETA use the last
    30 s window, not the run's average (a run's speed changes: DQN's warm-up is ~8x faster
    than its training)."""

    def __init__(self, total: int, start_step: int = 0):
        self.total, self.tty = total, sys.stderr.isatty()
        self.start = self.window_time = time.time()
        self.start_step = self.window_step = start_step  # a resumed run starts at its checkpoint's step
        self.window_sps = None
        self.last_draw, self.returns = 0.0, []

    def update(self, step: int, force: bool = False):
        now = time.time()
        if now - self.window_time >= 30.0:
            self.window_sps = (step - self.window_step) / (now - self.window_time)
            self.window_time, self.window_step = now, step
        if not force and now - self.last_draw < (0.5 if self.tty else 30.0):
            return
        self.last_draw = now
        sps = self.window_sps if self.window_sps is not None else (step - self.start_step) / max(now - self.start, 1e-9)
        eta = int((self.total - step) / max(sps, 1e-9))
        ret = f"{np.mean(self.returns[-20:]):.1f}" if self.returns else "-"
        filled = int(20 * step / self.total)
        line = (
            f"[{'#' * filled}{'.' * (20 - filled)}] {step:,}/{self.total:,} steps | {sps:,.0f} SPS | "
            f"return(last 20) {ret} | ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self, step: int):
        self.update(step, force=True)
        if self.tty:
            print(file=sys.stderr)


def save_gif(frames: list, path: str, fps: int = 15):
    """What the agent sees (84x84 grayscale), at the agent's 15 decisions per second."""
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def video_schedule(game_index: int) -> bool:
    """Record games 0, 1, 8, 27, ..., 729, then every 1000th (gymnasium's capped cubic)."""
    if game_index < 1000:
        return round(game_index ** (1 / 3)) ** 3 == game_index
    return game_index % 1000 == 0


def evaluate(
    model_path: str,
    env_id: str,
    eval_episodes: int,
    num_envs: int,
    device: torch.device,
    seed: int = 0,
    video_path: Optional[str] = None,
) -> list[float]:
    """Play `eval_episodes` full games (all lives) sampling from the policy; return their raw
    scores. Each env plays a fixed quota of games, so short games are not over-represented."""
    num_envs = min(num_envs, eval_episodes)
    envs = make_env(env_id, num_envs, life_loss_terminal=False)
    policy = NatureCNN(envs.single_action_space.n, head_std=0.01).to(device)
    policy.load_state_dict(torch.load(model_path, map_location=device)["policy"])
    policy.eval()
    generator = torch.Generator(device).manual_seed(seed)
    quota = np.array([eval_episodes // num_envs + (e < eval_episodes % num_envs) for e in range(num_envs)])
    returns: list[list[float]] = [[] for _ in range(num_envs)]
    running = np.zeros(num_envs)
    frames = []
    obs, _ = envs.reset(seed=seed)
    while any(len(r) < q for r, q in zip(returns, quota)):
        with torch.inference_mode():
            logits = policy(torch.from_numpy(obs).to(device))
            actions = sample_actions(logits, generator).cpu().numpy()
        if video_path and not returns[0]:
            frames.append(obs[0, -1].copy())
        obs, reward, terminated, truncated, _ = envs.step(actions)
        running += reward
        for e in np.flatnonzero(terminated | truncated):
            if len(returns[e]) < quota[e]:
                returns[e].append(float(running[e]))
            running[e] = 0.0
    envs.close()
    if video_path and frames:
        save_gif(frames, video_path)
    return [r for per_env in returns for r in per_env]




if __name__ == "__main__":
    args, checkpoint = resumed(parse_args())
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = args.total_timesteps // batch_size
    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            save_code=True,
            id=checkpoint["wandb_id"] if checkpoint else None,
            resume="allow",
        )
    stop = StopRequest()  # from here on, Ctrl-C / SIGTERM stop the run after a checkpoint
    # A resumed run appends to its own directory; TensorBoard drops what the stopped run logged
    # after its checkpoint (purge_step), so no step is logged twice.
    writer = SummaryWriter(f"runs/{run_name}", purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
    if not checkpoint:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
        )

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    generator = torch.Generator(device).manual_seed(args.seed)  # action sampling
    shuffle = torch.Generator().manual_seed(args.seed)  # minibatches

    envs = make_env(args.env_id, args.num_envs)
    policy = NatureCNN(envs.single_action_space.n, head_std=0.01).to(device)
    value = NatureCNN(1, head_std=1.0).to(device)
    value_optimizer = torch.optim.Adam(value.parameters(), lr=args.value_lr, eps=1e-5)
    # Every fixed-size batch runs `policy_fn` / `value_fn`, compiled with --compile. The
    # time-limit bootstrap (rare, any batch size) stays eager: compiling it would recompile
    # for every new size.
    policy_fn = torch.compile(policy) if args.compile else policy
    value_fn = torch.compile(value) if args.compile else value

    T, N = args.num_steps, args.num_envs
    obs_buf = torch.zeros((T, N) + envs.single_observation_space.shape, dtype=torch.uint8, device=device)
    actions_buf = torch.zeros((T, N), dtype=torch.long, device=device)
    values_buf = torch.zeros((T, N), device=device)
    rewards_buf = np.zeros((T, N), dtype=np.float32)
    terminated_buf = np.zeros((T, N), dtype=bool)
    truncated_buf = np.zeros((T, N), dtype=bool)
    truncation_values_buf = np.zeros((T, N), dtype=np.float32)

    def set_policy(theta: torch.Tensor) -> None:
        torch.nn.utils.vector_to_parameters(theta, policy.parameters())

    global_step, first_iteration, games_env0, video_frames = 0, 1, 0, []
    if checkpoint:
        policy.load_state_dict(checkpoint["policy"])
        value.load_state_dict(checkpoint["value"])
        value_optimizer.load_state_dict(checkpoint["value_optimizer"])
        generator.set_state(checkpoint["generator"])
        shuffle.set_state(checkpoint["shuffle"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        random.setstate(checkpoint["rng"]["python"])
        global_step, first_iteration, games_env0 = checkpoint["global_step"], checkpoint["iteration"] + 1, checkpoint["games_env0"]
    obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
    game_return = np.zeros(N)
    game_length = np.zeros(N, dtype=np.int64)
    progress = Progress(num_iterations * batch_size, global_step)
    start_time, start_step = time.time(), global_step
    checkpoint_path = f"runs/{run_name}/checkpoint.pt"
    for iteration in range(first_iteration, num_iterations + 1):
        truncation_values_buf[:] = 0.0
        for t in range(T):
            obs_buf[t] = torch.from_numpy(obs).to(device)
            with torch.no_grad():
                action = sample_actions(policy_fn(obs_buf[t]), generator)
                values_buf[t] = value_fn(obs_buf[t]).squeeze(-1)
            actions_buf[t] = action
            if args.capture_video and video_schedule(games_env0):
                video_frames.append(obs[0, -1].copy())
            prev_info = info
            obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            restarted = game_restarted(terminated, truncated, info, prev_info)
            rewards_buf[t] = np.clip(reward, -1, 1)
            terminated_buf[t], truncated_buf[t] = terminated, truncated
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):  # the time limit: bootstrap from the state the game was cut at
                with torch.no_grad():
                    cut_values = value(torch.from_numpy(info["final_obs"][cut]).to(device)).squeeze(-1)
                truncation_values_buf[t, cut] = cut_values.cpu().numpy()
            game_return += reward
            game_length += 1
            for e in np.flatnonzero(restarted):
                writer.add_scalar("charts/episodic_return", game_return[e], global_step)
                writer.add_scalar("charts/episodic_length", game_length[e], global_step)
                progress.returns.append(game_return[e])
                if e == 0:
                    if video_frames:
                        save_gif(video_frames + [info["final_obs"][0, -1]], f"videos/{run_name}/train-game-{games_env0}.gif")
                        video_frames = []
                    games_env0 += 1
                game_return[e], game_length[e] = 0.0, 0
            global_step += N

        # The batch, under pi_old and V_old: logits_old and the Jacobian maps at theta_old.
        b_obs, b_actions, b_values = obs_buf.flatten(0, 1), actions_buf.flatten(), values_buf.flatten()
        theta_old, logits_old, jv, jtu = policy_jacobian(policy, b_obs)
        with torch.no_grad():
            next_value = value_fn(torch.from_numpy(obs).to(device)).squeeze(-1)  # V_old(s_T)
            advantages, value_targets = n_step_advantages(
                torch.from_numpy(rewards_buf).to(device),
                reward_bonus(logits_old.view(T, N, -1), args.tau, args.regularizer),
                values_buf,
                next_value,
                torch.from_numpy(terminated_buf).to(device),
                torch.from_numpy(truncated_buf).to(device),
                torch.from_numpy(truncation_values_buf).to(device),
                args.gamma,
                "proper",
            )
            b_advantages, b_value_targets = advantages.flatten(), value_targets.flatten()
            reg_advantages = regularized_advantages(b_advantages, logits_old, b_actions, args.tau)
            targets = damped_q_target(b_values, logits_old, b_actions, b_advantages, args.tau, args.eps)

        # The natural gradient step on this batch: the update of --solver npg, the reference of damped-q.
        if args.compile:
            jv = torch.compile(jv)  # the costliest pass of CG (forward mode, ~3x a forward pass)
        fvp = fisher_vector_product(jv, jtu, logits_old, b_actions, args.fisher, args.cg_damping)
        direction, cg_residual = conjugate_gradient(fvp, policy_gradient(jtu, logits_old, b_actions, reg_advantages), args.cg_iters)
        natural_step = (args.eps / args.tau) * direction

        if args.solver == "npg":
            step = natural_step
            fraction = 1.0
            if args.max_kl is not None:  # the quadratic model's KL, 1/2 s^T F s (undamped F), sets the first try
                quadratic_kl = 0.5 * step.dot(fisher_vector_product(jv, jtu, logits_old, b_actions, args.fisher, 0.0)(step)).item()
                fraction = min(1.0, math.sqrt(2 * args.max_kl / quadratic_kl)) if quadratic_kl > 0 else 1.0
            set_policy(theta_old + fraction * step)
        else:
            params_old = [p.detach().clone() for p in policy.parameters()]
            policy_optimizer = torch.optim.Adam(policy.parameters(), lr=args.policy_lr, eps=1e-5)
            for epoch in range(args.policy_epochs):
                for mb in torch.randperm(batch_size, generator=shuffle).to(device).split(minibatch_size):
                    loss = damped_q_loss(policy_fn(b_obs[mb]), b_values[mb], b_actions[mb], targets[mb], args.tau)
                    loss = loss + proximal_term(list(policy.parameters()), params_old, args.tau, args.cg_damping)
                    policy_optimizer.zero_grad()
                    loss.backward()
                    policy_optimizer.step()
            step = torch.cat([p.detach().flatten() for p in policy.parameters()]) - theta_old
            fraction = 1.0
        with torch.no_grad():
            if args.max_kl is not None:

                def kl_of(f: float) -> float:
                    set_policy(theta_old + f * step)
                    return mean_kl(logits_old, policy_fn(b_obs)).item()

                fraction, _ = kl_backtrack(kl_of, args.max_kl, start=fraction)
                set_policy(theta_old + fraction * step)
            taken = fraction * step
            logits_new = policy_fn(b_obs)
            kl_old_new = mean_kl(logits_old, logits_new)
            residual = npg_residual(logits_new, logits_old, b_actions, reg_advantages, args.tau, args.eps)
            parts = dict(
                damped_q_loss=damped_q_loss(logits_new, b_values, b_actions, targets, args.tau),
                npg_residual=residual.pow(2).mean().sqrt(),
                entropy=entropy_and_kl(logits_new)[0].mean(),
            )
            npg = dict(
                kl_old_new=kl_old_new,
                # in float64: a float32 dot product over 1.7M entries is off by ~1e-4
                cosine_step=taken.double().dot(natural_step.double()) / (taken.double().norm() * natural_step.double().norm()),
                cosine_step_fisher=fisher_cosine(
                    jv(taken).double(), jv(natural_step).double(), logit_fisher(logits_old.double(), b_actions, args.fisher)
                ),
                step_norm_ratio=taken.double().norm() / natural_step.double().norm(),
                step_fraction=torch.tensor(fraction),
                cg_residual=torch.tensor(cg_residual),
            )

        # The value function, after the policy step: regress V onto Vhat = V_old + Delta.
        for epoch in range(args.value_epochs):
            for mb in torch.randperm(batch_size, generator=shuffle).to(device).split(minibatch_size):
                value_loss = 0.5 * (value_fn(b_obs[mb]).squeeze(-1) - b_value_targets[mb]).pow(2).mean()
                value_optimizer.zero_grad()
                value_loss.backward()
                value_optimizer.step()
        parts["value_loss"] = value_loss.detach()

        bad = [f"losses/{k} ({v.item()})" for k, v in parts.items() if not torch.isfinite(v)]
        bad += [f"npg/{k} ({v.item()})" for k, v in npg.items() if not torch.isfinite(v)]
        if bad:
            progress.close(global_step)
            sys.exit(f"{os.path.basename(__file__)}: error: non-finite {', '.join(bad)} at global_step {global_step}, update {iteration}")
        for key, v in parts.items():
            writer.add_scalar(f"losses/{key}", v.item(), global_step)
        for key, v in npg.items():
            writer.add_scalar(f"npg/{key}", v.item(), global_step)
        writer.add_scalar("losses/explained_variance", explained_variance(b_values, b_value_targets).item(), global_step)
        writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)
        progress.update(global_step)

        due = args.checkpoint_every > 0 and global_step // args.checkpoint_every > (global_step - batch_size) // args.checkpoint_every
        if due or stop.signum or (args.checkpoint_every > 0 and iteration == num_iterations):
            save_checkpoint(checkpoint_path, dict(
                args=vars(args), run_name=run_name, wandb_id=wandb.run.id if args.track else None,
                global_step=global_step, iteration=iteration, games_env0=games_env0,
                policy=policy.state_dict(), value=value.state_dict(), value_optimizer=value_optimizer.state_dict(),
                generator=generator.get_state(), shuffle=shuffle.get_state(),
                rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate()),
            ))  # fmt: skip
            if stop.signum:
                break
            # The envs' state cannot be saved, so a checkpoint ends the games in progress, here
            # and in any run resumed from it (their last rollout bootstrapped from V_old(s_T), as
            # at a time limit; they are not logged as episodes): the two runs stay identical.
            obs, info = envs.reset(seed=restart_seed(args.seed, global_step))
            game_return[:], game_length[:], video_frames = 0.0, 0, []
    progress.close(global_step)
    envs.close()
    del envs  # torch.compile's caches can outlive this module's globals; free the C++ env now
    if stop.signum:
        writer.close()
        if args.track:
            wandb.finish()
        print(
            f"{signal.Signals(stop.signum).name} at global_step {global_step}: checkpoint written to {checkpoint_path}; "
            f"continue with: python {os.path.basename(__file__)} --resume {checkpoint_path}",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
        torch.save({"policy": policy.state_dict(), "value": value.state_dict()}, model_path)
        print(f"model saved to {model_path}")
        episodic_returns = evaluate(
            model_path,
            args.env_id,
            eval_episodes=args.eval_episodes,
            num_envs=args.num_envs,
            device=device,
            seed=args.seed + 1,
            video_path=f"videos/{run_name}/eval-game-0.gif" if args.capture_video else None,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)
        print(f"eval: mean episodic return {np.mean(episodic_returns):.2f} over {len(episodic_returns)} games")

    writer.close()
    if args.track:
        wandb.finish()
