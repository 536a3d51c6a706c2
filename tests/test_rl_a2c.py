"""softq.rl.agents.a2c: the three update rules train with softq's own formulas; masks and targets; configs."""

import math
import os

import pytest
import torch

import softq.losses
import softq.regularized
from softq.rl.agents.a2c import A2C, RULES, Config, a2c_loss, reset_placeholders
from softq.rl.parts.envs import make_env

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
    for name in ("n_step_soft_return", "penalty", "q_from_value_and_policy", "soft_value"):
        spy(softq.regularized, name)
    cfg = Config(env=env, rule=rule, frames=4 * 2 * 5 * 40 if env != "CartPole-v1" else 2 * 5 * 40, **SMALL)
    agent = A2C(cfg)
    before = [p.detach().clone() for p in agent.net.parameters()]
    while agent.updates < agent.total_updates:
        stats = agent.step()
    agent.env.close()
    assert agent.updates == 40 and all(math.isfinite(stats[k]) for k in ("loss", "entropy", "kl", "grad_norm"))
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.net.parameters(), strict=True))
    assert calls["n_step_soft_return"] == 40 and calls["penalty"] == 40
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
                         ("env_backend", "gymnasium"), ("seed", -1), ("max_grad_norm", float("nan")),
                         ("penalty", "kl_uniform"), ("optimizer", "adam"), ("precision", "fp16"),
                         ("schedule_frames", -1), ("policy_init_scale", 0.0)]:
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


def test_the_paper_defaults():
    """Atari A2C as the paper ran it: entropy bonus (Figure 1's EntRL), TensorFlow's RMSProp (baselines), the
    learning rate's horizon at the paper's 320M frames whatever the run's length, the 2017 policy-head gain."""
    from softq.rl.parts.optim import RMSpropTF

    cfg = Config()
    assert (cfg.penalty, cfg.optimizer, cfg.schedule_frames, cfg.policy_init_scale) == ("entropy", "rmsprop_tf",
                                                                                          320_000_000, 1.0)
    agent = A2C(Config(env="CartPole-v1", frames=400, **SMALL))
    assert isinstance(agent.opt, RMSpropTF)
    agent.env.close()


def test_learning_rate_schedule_does_not_depend_on_where_the_run_stops():
    """A 1M-frame run follows the first 1M frames of a 4M-frame run's schedule (the horizon is schedule_frames)."""
    short = A2C(Config(env="CartPole-v1", frames=1000, schedule_frames=4000, **SMALL))
    long = A2C(Config(env="CartPole-v1", frames=4000, schedule_frames=4000, **SMALL))
    rates = []
    while short.updates < short.total_updates:
        rates.append((short.step()["lr"], long.step()["lr"]))
    assert all(a == b for a, b in rates) and rates[-1][0] > 0.7 * short.cfg.lr
    # schedule_frames = 0: the horizon is the run's own length (the rate reaches 0 at its end)
    own = A2C(Config(env="CartPole-v1", frames=1000, schedule_frames=0, **SMALL))
    while own.updates < own.total_updates - 1:
        own.step()
    assert own.step()["lr"] == pytest.approx(own.cfg.lr * own.frames_per_update / 1000)
    for agent in (short, long, own):
        agent.env.close()


def test_penalty_forms_differ_by_tau_log_a_per_step():
    """``entropy`` (-H) and ``kl`` (KL against uniform) penalties: equal gradients, values apart by log|A|; the
    naive rule's update is the same in both forms, the proper rule's returns differ by tau log|A| sum gamma^d."""
    log_pi, v, actions, rewards, terminal, reset = _rollout(seed=7)
    gamma, tau, c = 0.9, 0.1, 0.5
    z = log_pi.detach().clone().requires_grad_()  # logits: the gradients agree on the simplex, through softmax
    k_kl = softq.regularized.penalty(torch.log_softmax(z, -1), "kl")
    k_ent = softq.regularized.penalty(torch.log_softmax(z, -1), "entropy")
    torch.testing.assert_close(k_ent, k_kl - math.log(4))
    (g_kl,) = torch.autograd.grad(k_kl.sum(), z)
    (g_ent,) = torch.autograd.grad(k_ent.sum(), z)
    torch.testing.assert_close(g_kl, g_ent)
    grads = {}
    for rule in RULES:
        for form in ("kl", "entropy"):
            zz, vv = log_pi.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
            loss, _ = a2c_loss(torch.log_softmax(zz, -1), vv, actions, rewards, terminal, reset, rule, gamma, tau,
                               c, form)
            grads[rule, form] = torch.autograd.grad(loss, (zz, vv))
    for a, b in zip(grads["naive", "kl"], grads["naive", "entropy"], strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(grads["proper", "kl"][1], grads["proper", "entropy"][1])
    assert not torch.allclose(grads["soft_q", "kl"][1], grads["soft_q", "entropy"][1])


@pytest.mark.parametrize("form", ["kl", "entropy"])
def test_soft_q_one_step_loss_by_hand(form):
    """T = 1: ``y = r + gamma V(s_1)`` and ``Q = V + tau log pi`` (entropy, Section 6.3) or
    ``V + tau log(pi / uniform)`` (KL), so the loss is 1/2 (Q(s_0, a_0) - y)^2, computed here by hand."""
    g = torch.Generator().manual_seed(11)
    log_pi = torch.log_softmax(torch.randn(2, 1, 3, generator=g, dtype=torch.float64), -1)
    v = torch.randn(2, 1, generator=g, dtype=torch.float64)
    actions, rewards = torch.tensor([[2]]), torch.tensor([[0.7]], dtype=torch.float64)
    no = torch.zeros(1, 1, dtype=torch.bool)
    tau, gamma = 0.2, 0.9
    q = v[0, 0] + tau * log_pi[0, 0, 2] + (tau * math.log(3) if form == "kl" else 0.0)
    y = 0.7 + gamma * v[1, 0]
    loss, _ = a2c_loss(log_pi, v, actions, rewards, no, no, "soft_q", gamma, tau, 0.5, form)
    torch.testing.assert_close(loss, 0.5 * (q - y) ** 2)


@pytest.mark.parametrize("rule", ["naive", "proper"])
def test_an_underflowing_probability_leaves_the_weights_finite(rule):
    """A logit gap of 200 makes a float32 probability exactly 0; ``xlogy(pi, pi)`` then back-propagates NaN into
    the weights while the loss stays finite. The KL from log-probabilities keeps every gradient finite."""
    agent = A2C(Config(env="CartPole-v1", rule=rule, frames=400, penalty="kl", **SMALL))
    with torch.no_grad():
        agent.net.policy.weight.zero_()
        agent.net.policy.bias.copy_(torch.tensor([200.0, 0.0]))
    assert agent.net(torch.zeros(1, 4))[0].exp()[0, 1] == 0  # the probability underflows
    stats = agent.step()
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    agent.assert_finite()
    agent.env.close()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    from softq.rl.agents.base import NonFiniteLoss
    from softq.rl.experiments.loop import train

    agent_cfg = Config(env="CartPole-v1", rule="proper", frames=400, **SMALL)
    agent = A2C(agent_cfg)
    with torch.no_grad():
        agent.net.value.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="non-finite weights"):
        agent.assert_finite()
    agent.env.close()
    # through train(): a NaN gradient norm stops the run; the checkpoint on disk stays the last good one
    cfg = Config(env="CartPole-v1", rule="proper", frames=4000, log_every=5, checkpoint_every=5,
                 **{**SMALL, "num_envs": 2})
    original = A2C.update
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        if calls["n"] == 12:
            with torch.no_grad():
                self.net.value.bias.fill_(float("nan"))
        return original(self)

    import softq.rl.agents.a2c as a2c_mod

    a2c_mod.A2C.update = poisoned
    try:
        with pytest.raises(NonFiniteLoss):
            train(cfg, tmp_path, progress=False)
    finally:
        a2c_mod.A2C.update = original
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["agent"]["updates"] == 10
    assert all(torch.isfinite(t).all() for t in state["agent"]["net"].values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rule", RULES)
def test_the_update_is_the_gradient_of_a2c_loss_on_the_whole_rollout(rule, precision):
    """One update steps along the gradient of :func:`a2c_loss` on the network's outputs for the rollout's
    ``[T+1, B]`` observations, recomputed in one call (``compare.network_outputs``), at the run's precision; the
    actions were sampled from the outputs of the rollout's own calls, which agree with the update's."""
    import copy

    from softq.rl.agents.compare import network_outputs

    cfg = Config(env="PongNoFrameskip-v4", rule=rule, frames=10**6, precision=precision, max_grad_norm=1e9,
                 num_envs=2, num_steps=3, device="cpu", torch_threads=1, env_threads=1)
    agent = A2C(cfg)
    agent.step()
    agent.collect()
    bootstrap = agent._bootstrap
    net = copy.deepcopy(agent.net)
    with agent.autocast():
        log_pi, v = network_outputs(net, agent.buf_obs)
    log_pi, v = log_pi.float(), v.float()
    tol = {"fp32": 1e-4, "bf16": 2e-2}[precision]  # one call of 2 rows against one of 8: rounding only
    assert torch.allclose(log_pi[-1], bootstrap[0], rtol=tol, atol=tol)
    assert torch.allclose(log_pi.exp().sum(-1), torch.ones(()), atol=1e-5), "log pi is normalized in float32"
    loss, _ = a2c_loss(log_pi, v, agent.buf_actions, agent.buf_rewards, agent.buf_terminal, agent.buf_reset,
                       rule, cfg.gamma, cfg.tau, cfg.value_coef, cfg.penalty)
    loss.backward()
    agent.update()
    for (name, p), q in zip(agent.net.named_parameters(), net.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-6), name
    with pytest.raises(RuntimeError, match="collect"):
        agent.update()
    agent.env.close()


def test_softq_rl_bounds_openmp_spinning_before_torch_loads():
    """softq.rl sets GOMP_SPINCOUNT before torch loads libgomp (a user's value is kept); imported after torch, it
    says the spinning is libgomp's default, and an Atari run on CPU then keeps to half the cores."""
    import subprocess
    import sys

    probe = ("import os, {first}, {second}, torch\nfrom softq.rl.agents.base import auto_torch_threads\n"
             "print(os.environ.get('GOMP_SPINCOUNT'), softq.rl.OPENMP_SPIN_BOUNDED, "
             "auto_torch_threads('pong', torch.device('cpu'), cores=4))")

    def run(first, second, **env):
        env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | env
        out = subprocess.run([sys.executable, "-c", probe.format(first=first, second=second)], env=env,
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert run("softq.rl", "torch") == ["3000", "True", "4"]
    assert run("torch", "softq.rl") == ["3000", "False", "2"]  # set, but too late for libgomp
    assert run("torch", "softq.rl", GOMP_SPINCOUNT="10") == ["10", "True", "4"]
