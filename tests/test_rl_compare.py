"""softq.rl.agents.compare: gradients of the agents' own losses, per transition and in exact expectation over
actions."""

import dataclasses
import itertools

import pytest
import torch

from softq.rl.agents import compare as cmp
from softq.rl.agents.a2c import A2C, RULES, Config, a2c_loss
from softq.rl.experiments.folder import computed_rows

GAMMA, TAU, C = 0.9, 0.1, 0.5
CFG = {"env": "CartPole-v1", "num_envs": 4, "num_steps": 5, "device": "cpu", "torch_threads": 1, "lr": 2e-3}


@pytest.fixture(scope="module")
def agent_batch():
    agent = A2C(Config(rule="proper", frames=10**6, seed=3, **CFG))
    for _ in range(30):
        agent.step()
    agent.collect()
    agent.env.close()
    return agent, cmp.Batch.from_agent(agent)


def _synthetic(seed=0, horizon=2, batch=1, n_actions=2):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.log_softmax(torch.randn(horizon + 1, batch, n_actions, generator=g, dtype=torch.float64), -1)
    v = torch.randn(horizon + 1, batch, generator=g, dtype=torch.float64)
    b = cmp.Batch(torch.zeros(horizon + 1, batch, 1), torch.randint(0, n_actions, (horizon, batch), generator=g),
                  torch.randn(horizon, batch, generator=g, dtype=torch.float64),
                  torch.zeros(horizon, batch, dtype=torch.bool), torch.zeros(horizon, batch, dtype=torch.bool))
    return log_pi, v, b


@pytest.mark.parametrize("rule", RULES)
def test_parameter_and_transition_gradients_are_autograd_of_a2c_loss(agent_batch, rule):
    agent, b = agent_batch
    log_pi, v = cmp.network_outputs(agent.net, b.obs)
    loss, _ = a2c_loss(log_pi, v, b.actions, b.rewards, b.terminal, b.reset, rule, GAMMA, TAU, C)
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(agent.net.parameters()))])
    heads = cmp.head_gradients(log_pi, v, b, cmp.rule_loss(rule, GAMMA, TAU, C))
    got = cmp.parameter_gradient(agent.net, b.obs, *heads)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    per = cmp.transition_gradients(agent.net, b, *heads)
    torch.testing.assert_close(per.sum((0, 1)) / b.n_real, want, atol=2e-6, rtol=1e-5)
    assert torch.all(per[b.reset] == 0)
    assert torch.allclose(heads[0].sum(-1), torch.zeros(()).double(), atol=1e-12)  # logits gradients sum to 0


@pytest.mark.parametrize("rule", RULES)
def test_expected_gradient_is_the_average_over_all_joint_actions(rule):
    """Brute force: every joint action of a 3-step, 2-env rollout (64 configurations), weighted by its probability."""
    log_pi, v, b = _synthetic(seed=1, horizon=3, batch=2)
    b.terminal[1, 0] = True  # an episode end inside the rollout
    loss = cmp.rule_loss(rule, GAMMA, TAU, C)
    want_l, want_v = torch.zeros_like(log_pi), torch.zeros_like(v)
    for joint in itertools.product(range(2), repeat=6):
        acts = torch.tensor(joint).reshape(3, 2)
        p = log_pi[:3].gather(-1, acts[..., None]).exp().prod()
        gl, gv = cmp.head_gradients(log_pi, v, b.with_actions(acts), loss)
        want_l += p * gl
        want_v += p * gv
    got_l, got_v = cmp.head_gradients(log_pi, v, b, loss, expected=True)
    torch.testing.assert_close(got_l, want_l, atol=1e-14, rtol=0)
    torch.testing.assert_close(got_v, want_v, atol=1e-14, rtol=0)


def test_proper_and_soft_q_agree_in_expectation_but_not_per_sample():
    log_pi, v, b = _synthetic(seed=2, horizon=5, batch=3, n_actions=4)
    e = {r: cmp.head_gradients(log_pi, v, b, cmp.rule_loss(r, GAMMA, TAU, C), expected=True) for r in RULES}
    s = {r: cmp.head_gradients(log_pi, v, b, cmp.rule_loss(r, GAMMA, TAU, C)) for r in RULES}
    for i in range(2):
        torch.testing.assert_close(e["soft_q"][i], e["proper"][i], atol=1e-14, rtol=0)
        assert (s["soft_q"][i] - s["proper"][i]).abs().max() > 1e-4
    # naive vs proper: with the rollout held fixed, the KL correction to the return does not depend on a_t, so the
    # policy gradients agree in this average; the value targets differ (the naive one has no KL terms)
    torch.testing.assert_close(e["naive"][0], e["proper"][0], atol=1e-14, rtol=0)
    assert (e["naive"][1] - e["proper"][1]).abs().max() > 1e-4


def test_scaled_soft_q_loss_with_the_paper_scales_is_rule_soft_q():
    log_pi, v, b = _synthetic(seed=4, horizon=4, batch=2, n_actions=3)
    a = cmp.head_gradients(log_pi, v, b, cmp.scaled_soft_q_loss(GAMMA, TAU, C, 1 / TAU))
    r = cmp.head_gradients(log_pi, v, b, cmp.rule_loss("soft_q", GAMMA, TAU, C))
    for x, y in zip(a, r, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    plain = cmp.head_gradients(log_pi, v, b, cmp.scaled_soft_q_loss(GAMMA, TAU, 1.0, 1.0))
    torch.testing.assert_close(plain[1], r[1] / C)  # the value stream carries c (Q - y) / N under rule soft_q


def test_score_gradients_match_autograd(agent_batch):
    agent, b = agent_batch
    parts = cmp.score_gradients(agent.net, b)
    t, k = 2, 1
    params = list(agent.net.parameters())
    log_pi, v = agent.net(b.obs[t, k][None])

    def flat_grad(y):
        gs = torch.autograd.grad(y, params, retain_graph=True, allow_unused=True)
        gs = [g if g is not None else torch.zeros_like(q) for g, q in zip(gs, params, strict=True)]
        return torch.cat([g.reshape(-1) for g in gs])

    torch.testing.assert_close(parts["score"][t, k], flat_grad(log_pi[0, b.actions[t, k]]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts["grad_v"][t, k], flat_grad(v[0]), atol=1e-6, rtol=1e-5)
    kl = (log_pi[0].exp() * (log_pi[0] + torch.log(torch.tensor(2.0)))).sum()
    torch.testing.assert_close(parts["grad_kl"][t, k], flat_grad(kl), atol=1e-6, rtol=1e-5)


def test_training_with_agreement_every_measures_without_changing_the_run(tmp_path):
    """``agreement_every`` in :func:`softq.rl.experiments.loop.train` writes a row of agreement.csv before every k-th
    update, leaves the run unchanged (log and weights, against an unmeasured run and a hand-stepped agent), and a paused
    +
    resumed run writes the same file."""
    from softq.rl.experiments.loop import _train, train

    cfg = Config(rule="soft_q", frames=4 * 5 * 30, seed=5, log_every=5, **CFG)
    plain = A2C(cfg)
    while plain.updates < plain.total_updates:
        plain.step()
    plain.env.close()
    train(cfg, tmp_path / "plain", progress=False)
    measured = tmp_path / "measured"
    train(dataclasses.replace(cfg, agreement_every=7), measured, progress=False)
    assert computed_rows(measured / "progress.csv") == computed_rows(tmp_path / "plain" / "progress.csv")
    weights = torch.load(measured / "checkpoint.pt", weights_only=False)["agent"]["net"]
    assert all(torch.equal(weights[k], w) for k, w in plain.net.state_dict().items())
    back = cmp.read_agreement(measured)
    assert set(back) == set(cmp.AGREEMENT_COLUMNS) and back["updates"].tolist() == [0, 7, 14, 21, 28]
    assert back["expected_rel_residual"].max() <= 1e-6 and back["expected_head_residual"].max() <= 1e-10
    assert (back["cosine"] <= 1 + 1e-12).all() and (back["cosine"] > 0).all()
    cut = tmp_path / "cut"
    paused = dataclasses.replace(cfg, agreement_every=7, checkpoint_every=10, time_limit_minutes=1e-9)
    _train(paused, cut, resume=False, progress=False)  # stops after its first update, checkpointed
    (cut / "agreement.csv").open("a").write("0,0,0,0,0,0,0,0,0,0\n")  # a row after the checkpoint: dropped
    train(dataclasses.replace(cfg, agreement_every=7), cut, resume=True, progress=False)
    assert (cut / "agreement.csv").read_text() == (measured / "agreement.csv").read_text()




def test_bad_arguments_are_rejected():
    _, _, b = _synthetic()
    with pytest.raises(ValueError, match="rewards"):
        cmp.Batch(b.obs, b.actions, b.rewards[:1], b.terminal, b.reset)
    with pytest.raises(ValueError, match="obs"):
        cmp.Batch(b.obs[:1], b.actions, b.rewards, b.terminal, b.reset)
    with pytest.raises(ValueError, match="rule"):
        cmp.rule_loss("hard", GAMMA, TAU, C)
    with pytest.raises(ValueError, match="agreement_every"):
        Config(rule="soft_q", frames=100, agreement_every=-1, **CFG)
