"""What the scripts do about the device, checked on the CPU: channels-last networks kept so, the
equivalence check's float32 precision, and checkpoints whose random state loads on any device.
(benchmarks/gpu_check.sh runs the CUDA side.)"""

import pytest
import torch

from conftest import SMOKE

import a2c_entropy
import natural_pg_damped
import pgql_equiv
import soft_dqn


def conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


NETWORKS = [
    lambda: soft_dqn.QNetwork(4),
    lambda: a2c_entropy.ActorCritic(4),
    lambda: pgql_equiv.ActorCritic(4),
    lambda: natural_pg_damped.NatureCNN(4, 0.01),
]


@pytest.mark.parametrize("make", NETWORKS)
def test_networks_hold_their_convolutions_channels_last(make):
    """Converted once at construction, and kept through .to(), loading and the optimizer's state."""
    model = make().to("cpu")
    model.load_state_dict(make().state_dict())
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(model))
    optimizer = torch.optim.Adam(model.parameters())
    out = model(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    optimizer.step()
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(model))
    exp_avg = [optimizer.state[w]["exp_avg"] for w in conv_weights(model)]
    assert all(m.is_contiguous(memory_format=torch.channels_last) for m in exp_avg)


def test_set_parameters_keeps_the_layout_and_is_the_inverse_of_flattening():
    policy = natural_pg_damped.NatureCNN(4, 0.01)
    theta = torch.cat([p.detach().flatten() for p in policy.parameters()])
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    before = policy(obs)
    natural_pg_damped.set_parameters(policy, theta + 0.01)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(policy))
    natural_pg_damped.set_parameters(policy, theta)
    assert torch.equal(torch.cat([p.detach().flatten() for p in policy.parameters()]), theta)
    torch.testing.assert_close(policy(obs), before, rtol=0, atol=0)


def test_the_equivalence_check_runs_at_full_float32_precision():
    """TF32 off inside the check (cuDNN convolutions default to TF32 on Ampere and later), restored after."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with pgql_equiv.ieee_float32():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with pytest.raises(RuntimeError), pgql_equiv.ieee_float32():
        raise RuntimeError
    assert (conv.fp32_precision, matmul.fp32_precision) == before


@pytest.mark.parametrize("script", ["a2c_entropy.py", "natural_pg_damped.py"])
def test_checkpoints_hold_the_sampling_generator_as_the_hosts(run_script, tmp_path, script):
    """A CUDA generator's state (16 bytes: seed, offset) cannot be loaded into a CPU generator, nor
    the CPU's (5,056 bytes) into a CUDA one: the A2C family samples on the host, so a checkpoint
    written on either device resumes on the other (benchmarks/gpu_check.sh tries both ways)."""
    assert run_script(script, *SMOKE[script], "--checkpoint-every", "512").returncode == 0
    state = torch.load(next((tmp_path / "runs").rglob("checkpoint.pt")), weights_only=False)["generator"]
    assert state.device.type == "cpu" and state.numel() == torch.Generator().get_state().numel() == 5056
    torch.Generator().set_state(state)
