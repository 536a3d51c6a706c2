"""softq.rl.a2c: the three update rules train with softq's own formulas; masks and targets; configs."""

import math

import pytest
import torch

import softq.losses
import softq.regularized
from softq.rl.a2c import A2C, RULES, Config, a2c_loss, reset_placeholders
from softq.rl.envs import make_env

SMALL = {"num_envs": 2, "num_steps": 5, "device": "cpu", "torch_threads": 1, "env_threads": 1}


@pytest.mark.parametrize("env", ["PongNoFrameskip-v4", "CartPole-v1"])
@pytest.mark.parametrize("rule", RULES)
def test_each_rule_runs_with_softq_losses(env, rule, monkeypatch):
    """A few hundred steps of each rule on Atari and on CartPole, through the losses and targets of softq."""
    calls = {}

    def spy(module, name):
        fn = getattr(module, name)

        def wrapped(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)

        monkeypatch.setattr(module, name, wrapped)

    for name in ("policy_gradient_loss", "value_loss", "soft_q_loss", "scale_grad"):
        spy(softq.losses, name)
    for name in ("n_step_soft_return", "kl", "q_from_value_and_policy", "soft_value"):
        spy(softq.regularized, name)
    cfg = Config(env=env, rule=rule, frames=4 * 2 * 5 * 40 if env != "CartPole-v1" else 2 * 5 * 40, **SMALL)
    agent = A2C(cfg)
    before = [p.detach().clone() for p in agent.net.parameters()]
    while agent.updates < agent.total_updates:
        stats = agent.step()
    agent.env.close()
    assert agent.updates == 40 and all(math.isfinite(stats[k]) for k in ("loss", "entropy", "kl", "grad_norm"))
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.net.parameters(), strict=True))
    assert calls["n_step_soft_return"] == 40 and calls["kl"] == 40
    if rule == "soft_q":
        assert calls["soft_q_loss"] == 40 and calls["q_from_value_and_policy"] == 40 and calls["scale_grad"] == 80
        assert "policy_gradient_loss" not in calls and "value_loss" not in calls
    else:
        assert calls["policy_gradient_loss"] == 40 and calls["value_loss"] == 40 and "soft_q_loss" not in calls


def _rollout(seed=0, horizon=6, batch=3, n_actions=4, boundaries=True):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.log_softmax(torch.randn(horizon + 1, batch, n_actions, generator=g), -1).requires_grad_()
    v = torch.randn(horizon + 1, batch, generator=g).requires_grad_()
    actions = torch.randint(0, n_actions, (horizon, batch), generator=g)
    rewards = torch.randn(horizon, batch, generator=g)
    terminal = torch.zeros(horizon, batch, dtype=torch.bool)
    reset = torch.zeros(horizon, batch, dtype=torch.bool)
    if not boundaries:
        return log_pi, v, actions, rewards, terminal, reset
    # env 0: terminal at t=1, autoreset at t=2. env 1: time-limit cut at t=3 (not terminal), autoreset at t=4.
    terminal[1, 0] = True
    reset[2, 0] = True
    reset[4, 1] = True
    rewards[2, 0] = rewards[4, 1] = 0.0
    return log_pi, v, actions, rewards, terminal, reset


def test_returns_never_cross_a_game_boundary():
    log_pi, v, _, rewards, terminal, reset = _rollout()
    gamma, tau = 0.9, 0.1
    kls = softq.regularized.kl(log_pi.detach().exp()[:-1])
    r, k, dones = reset_placeholders(rewards, kls, terminal, reset, v.detach())
    g = softq.regularized.n_step_soft_return(r, k, v.detach()[-1], dones, gamma, tau)
    c = rewards - tau * kls
    # env 0: the terminal step's return stops there; the step before adds it; after the reset, a fresh game
    torch.testing.assert_close(g[1, 0], c[1, 0])
    torch.testing.assert_close(g[0, 0], c[0, 0] + gamma * c[1, 0])
    # env 1: the cut at t=3 bootstraps from V(s_final) = v at the autoreset row, not from the next game
    torch.testing.assert_close(g[3, 1], c[3, 1] + gamma * v.detach()[4, 1])
    # env 2: no boundary, plain A2C return bootstrapped from V(s_T)
    want = v.detach()[-1, 2]
    for t in reversed(range(6)):
        want = c[t, 2] + gamma * want
    torch.testing.assert_close(g[0, 2], want)


@pytest.mark.parametrize("rule", RULES)
def test_autoreset_steps_carry_no_gradient(rule):
    log_pi, v, actions, rewards, terminal, reset = _rollout()
    loss, _ = a2c_loss(log_pi, v, actions, rewards, terminal, reset, rule, 0.9, 0.1, 0.5)
    loss.backward()
    assert torch.all(log_pi.grad[2, 0] == 0) and torch.all(log_pi.grad[4, 1] == 0)
    assert v.grad[2, 0] == 0 and v.grad[4, 1] == 0
    assert torch.any(log_pi.grad[1, 0] != 0) and v.grad[1, 0] != 0


def test_soft_q_gradient_scaling_matches_a2c():
    """soft_q: grad wrt V is c (Q - y) and grad wrt log pi(a) is (Q - y) (advantage stream scaled by 1/tau)."""
    tau, c, gamma = 0.1, 0.5, 0.9
    log_pi, v, actions, rewards, terminal, reset = _rollout(seed=3, boundaries=False)
    loss, _ = a2c_loss(log_pi, v, actions, rewards, terminal, reset, "soft_q", gamma, tau, c)
    loss.backward()
    n = actions.numel()
    lp, vv = log_pi.detach(), v.detach()
    kls = softq.regularized.kl(lp.exp()[:-1])
    y = tau * kls + softq.regularized.n_step_soft_return(rewards, kls, vv[-1], terminal, gamma, tau)
    q = softq.regularized.q_from_value_and_policy(vv[:-1], lp[:-1], tau).gather(-1, actions[..., None])[..., 0]
    torch.testing.assert_close(v.grad[:-1], c * (q - y) / n)
    got = log_pi.grad[:-1].gather(-1, actions[..., None])[..., 0]
    torch.testing.assert_close(got, (q - y) / n)


def test_soft_q_and_proper_agree_in_expectation_at_the_value_stream():
    """With the Section 6.3 scaling, soft_q's value-stream gradient equals proper's c * grad L_value plus
    c * tau (log(pi(a)/pi_bar(a)) - KL), whose mean over a ~ pi is 0 (eq 58-65): checked exactly by enumeration."""
    tau, c, gamma = 0.1, 0.5, 0.9
    log_pi, v, actions, rewards, terminal, reset = _rollout(seed=5, horizon=1, batch=1, boundaries=False)
    grads = {}
    for rule in ("proper", "soft_q"):
        total = 0
        for a in range(4):
            lp, vv = log_pi.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
            loss, _ = a2c_loss(lp, vv, torch.tensor([[a]]), rewards, terminal, reset, rule, gamma, tau, c)
            (gv,) = torch.autograd.grad(loss, vv)
            total = total + log_pi.detach()[0, 0, a].exp() * gv
        grads[rule] = total
    torch.testing.assert_close(grads["soft_q"], grads["proper"])


def test_bad_configs_are_rejected_by_name():
    for field, value in [("rule", "hard"), ("algo", "dqn"), ("num_envs", 0), ("tau", 0.0), ("gamma", 1.5),
                         ("lr", -1.0), ("frames", 0), ("lr_schedule", "cosine"), ("device", "tpu"),
                         ("env_backend", "gymnasium"), ("seed", -1), ("max_grad_norm", float("nan"))]:
        with pytest.raises(ValueError, match=field):
            Config(env="CartPole-v1", **{field: value})
    with pytest.raises(ValueError, match="Zork"):
        Config(env="Zork")


def test_env_given_to_agent_and_rollout_masks():
    """A forced CartPole termination inside a rollout shows up as terminal then reset in the agent's buffers."""
    env = make_env("CartPole-v1", 2)
    agent = A2C(Config(env="CartPole-v1", rule="proper", frames=100, **SMALL), env=env)
    env.venv.envs[1].unwrapped.state = torch.tensor([0.0, 0.0, 0.25, 0.0]).numpy()
    agent.collect()
    assert agent.buf_terminal[0].tolist() == [False, True] and agent.buf_reset[1].tolist() == [False, True]
    assert agent.buf_rewards[1, 1] == 0
    env.close()


def test_a_checkpoint_from_another_device_resumes_with_a_fresh_action_generator():
    agent = A2C(Config(env="CartPole-v1", rule="proper", frames=400, **SMALL))
    agent.step()
    state = agent.state_dict()
    assert state["gen_device"] == "cpu"
    resumed = A2C(Config(env="CartPole-v1", rule="proper", frames=400, **SMALL))
    resumed.load_state_dict(state)
    assert resumed.info["action_rng_restored"] is True
    state["gen"], state["gen_device"] = torch.zeros(16, dtype=torch.uint8), "cuda"  # a CUDA generator's state
    resumed.load_state_dict(state)
    assert resumed.info["action_rng_restored"] is False
    resumed.step()
    assert resumed.updates == 2
