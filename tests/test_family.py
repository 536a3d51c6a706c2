"""softq.family: PGQ (eq 87), path consistency (eqs 88-90), SAC and Munchausen, against softq.tabular."""

import math

import pytest
import torch

import softq.family as fam
import softq.tabular as tb
from softq.config import DTYPE
from softq.regularized import boltzmann_policy, entropy

S, A, GAMMA, TAU = 5, 3, 0.9, 0.4


@pytest.fixture(scope="module")
def det():
    mdp = tb.random_deterministic_mdp(S, A, GAMMA, seed=0)
    pi_bar = tb.random_policy(S, A, seed=1)
    return mdp, pi_bar, tb.soft_value_iteration(mdp, TAU, pi_bar)


def _roll(mdp, seed=2, lanes=7, horizon=9):
    g = torch.Generator().manual_seed(seed)
    return fam.follow_actions(mdp, torch.randint(S, (lanes,), generator=g),
                              torch.randint(A, (horizon, lanes), generator=g), seed=seed)


def test_random_deterministic_mdp_is_one_hot_and_seeded():
    m = tb.random_deterministic_mdp(S, A, GAMMA, seed=3)
    ones = torch.ones(S, A, dtype=DTYPE)
    assert torch.equal(m.P.max(-1).values, ones) and torch.equal(m.P.sum(-1), ones)
    assert torch.equal(m.P, tb.random_deterministic_mdp(S, A, GAMMA, seed=3).P)
    assert not torch.equal(m.P, tb.random_deterministic_mdp(S, A, GAMMA, seed=4).P)
    for kwargs, name in (({"n_states": 0}, "n_states"), ({"seed": -1}, "seed"),
                         ({"reward_scale": -1.0}, "reward_scale"), ({"gamma": 1.0}, "gamma")):
        args = {"n_states": S, "n_actions": A, "gamma": GAMMA, "seed": 0} | kwargs
        with pytest.raises(ValueError, match=name):
            tb.random_deterministic_mdp(**args)


def test_pgq_q_zero_mean_and_at_the_optimum():
    mdp = tb.random_mdp(S, A, GAMMA, seed=5)
    sol = tb.soft_value_iteration(mdp, TAU)
    v_pgq = (sol.pi * sol.q).sum(-1)
    assert torch.allclose(fam.pgq_q(v_pgq, torch.log(sol.pi), TAU), sol.q, atol=1e-10)
    pi = tb.random_policy(S, A, seed=6)
    v = torch.randn(S, dtype=DTYPE)
    q = fam.pgq_q(v, torch.log(pi), TAU)
    assert torch.allclose((pi * q).sum(-1), v, atol=1e-13)
    # the typed form (tau S inside) is off by tau (1 - tau) S: a bug swapping S for tau S is caught
    typed = v[:, None] + TAU * (torch.log(pi) + TAU * entropy(pi)[:, None])
    assert torch.allclose(q - typed, (TAU * (1 - TAU) * entropy(pi))[:, None].expand(S, A), atol=1e-13)
    with pytest.raises(ValueError, match="v must have shape"):
        fam.pgq_q(v[:3], torch.log(pi), TAU)
    with pytest.raises(ValueError, match="tau"):
        fam.pgq_q(v, torch.log(pi), 0.0)


def test_follow_actions_takes_the_given_actions_deterministically(det):
    mdp, _, _ = det
    roll = _roll(mdp)
    nxt = mdp.P.argmax(-1)
    assert torch.equal(roll.next_states, nxt[roll.states, roll.actions])
    assert torch.equal(roll.states[1:], roll.next_states[:-1])
    assert torch.equal(roll.rewards, mdp.R[roll.states, roll.actions]) and not roll.dones.any()


def test_follow_actions_bad_arguments():
    mdp = tb.random_deterministic_mdp(S, A, GAMMA, seed=0)
    with pytest.raises(ValueError, match="start"):
        fam.follow_actions(mdp, torch.tensor([S]), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="actions must have shape"):
        fam.follow_actions(mdp, torch.tensor([0, 1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="actions must lie"):
        fam.follow_actions(mdp, torch.tensor([0]), torch.full((2, 1), A))
    episodic = tb.random_mdp(S, A, 1.0, seed=0, n_terminal=1, p_end=0.2)
    with pytest.raises(ValueError, match="terminal"):
        fam.follow_actions(episodic, torch.tensor([0]), torch.zeros(2, 1))


@pytest.mark.parametrize("n", [1, 3, None])
def test_path_sums_telescope_for_any_policy_and_vanish_only_at_the_optimum(det, n):
    mdp, pi_bar, sol = det
    roll = _roll(mdp)
    q, v = tb.q_pi(mdp, sol.pi, TAU, pi_bar), tb.v_pi(mdp, sol.pi, TAU, pi_bar)
    ps = fam.path_sums(mdp, roll, q, v, torch.log(sol.pi), TAU, pi_bar, n)
    assert torch.allclose(ps.advantage, ps.ret, atol=1e-12) and torch.allclose(ps.td, ps.ret, atol=1e-12)
    assert ps.consistency.abs().max() < 1e-9
    pi = tb.random_policy(S, A, seed=7)
    q, v = tb.q_pi(mdp, pi, TAU, pi_bar), tb.v_pi(mdp, pi, TAU, pi_bar)
    ps = fam.path_sums(mdp, roll, q, v, torch.log(pi), TAU, pi_bar, n)
    assert torch.allclose(ps.advantage, ps.ret, atol=1e-12)          # eq 88 holds for any pi
    assert ps.consistency.abs().max() > 1e-2                         # eq 90 does not
    # a wrong sign on log pi_bar (the other reading of eq 89) breaks the consistency at the optimum
    flipped = fam.path_sums(mdp, roll, q, v, 2 * torch.log(pi_bar) - torch.log(sol.pi), TAU, pi_bar, n)
    assert flipped.consistency.abs().max() > 1e-2


def test_path_sums_window_one_by_hand(det):
    mdp, pi_bar, sol = det
    roll = _roll(mdp, lanes=2, horizon=3)
    v = torch.randn(S, dtype=DTYPE)
    ps = fam.path_sums(mdp, roll, sol.q, v, torch.log(sol.pi), TAU, pi_bar, 1)
    s, a, s1 = roll.states, roll.actions, roll.next_states
    assert torch.allclose(ps.ret, mdp.R[s, a] + GAMMA * v[s1] - v[s], atol=1e-14)
    assert torch.allclose(ps.log_ratio, TAU * (torch.log(sol.pi) - torch.log(pi_bar))[s, a], atol=1e-14)
    with pytest.raises(ValueError, match="v must have shape"):
        fam.path_sums(mdp, roll, sol.q, v[:2], torch.log(sol.pi), TAU, pi_bar)
    with pytest.raises(ValueError, match="tau"):
        fam.path_sums(mdp, roll, sol.q, v, torch.log(sol.pi), -1.0, pi_bar)


def test_sac_policy_step_and_backup():
    mdp = tb.random_mdp(S, A, GAMMA, seed=8)
    q = 2 * torch.randn(S, A, dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(fam.sac_policy_improvement(q, TAU), boltzmann_policy(q, TAU), atol=1e-10)
    for tau in (0.05, 3.0):  # converged to the same accuracy whatever the temperature's conditioning
        assert torch.allclose(fam.sac_policy_improvement(q, tau), boltzmann_policy(q, tau), atol=1e-10)
    with pytest.raises(RuntimeError, match="Newton steps"):
        fam.sac_policy_improvement(q, TAU, max_steps=1)
    pi = tb.random_policy(S, A, seed=10)
    assert torch.allclose(fam.sac_backup(mdp, pi, q, TAU), tb.backup_q(mdp, pi, q, TAU) + GAMMA * TAU * math.log(A),
                          atol=1e-13)
    c = fam.entropy_bonus_offset(mdp, TAU)
    assert c == pytest.approx(GAMMA * TAU * math.log(A) / (1 - GAMMA))
    qpi = tb.q_pi(mdp, pi, TAU)
    assert torch.allclose(fam.sac_backup(mdp, pi, qpi + c, TAU), qpi + c, atol=1e-12)
    with pytest.raises(ValueError, match="features"):
        fam.sac_policy_improvement(q, TAU, features=torch.zeros(S, A + 1, 2))
    with pytest.raises(ValueError, match="pi must have shape"):
        fam.sac_backup(mdp, pi[:2], q, TAU)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_munchausen_step_is_the_kl_regularized_backup(alpha):
    mdp = tb.random_mdp(S, A, GAMMA, seed=11)
    g = torch.Generator().manual_seed(12)
    q, pi_prev = torch.randn(S, A, dtype=DTYPE, generator=g), tb.random_policy(S, A, seed=13)
    q_next = fam.munchausen_backup(mdp, q, TAU, alpha)
    pi_next = boltzmann_policy(q, TAU)
    qp_next, pi_md = fam.mirror_descent_backup(mdp, q - alpha * TAU * torch.log(pi_prev), pi_prev, TAU, alpha)
    assert torch.allclose(qp_next, q_next - alpha * TAU * torch.log(pi_next), atol=1e-12)
    assert torch.allclose(pi_md, pi_next, atol=1e-12)
    if alpha == 1.0:
        qp = q - TAU * torch.log(pi_prev)
        assert torch.allclose(qp_next, tb.boltzmann_backup(mdp, qp, TAU, pi_prev), atol=1e-12)
    pi_bar, log_z = fam.geometric_reference(pi_prev, alpha)
    assert torch.allclose(pi_bar.sum(-1), torch.ones(S, dtype=DTYPE), atol=1e-14)
    assert torch.allclose(log_z.exp(), (pi_prev**alpha).sum(-1), atol=1e-14)


def test_munchausen_bad_alpha():
    mdp = tb.random_mdp(S, A, GAMMA, seed=11)
    with pytest.raises(ValueError, match="alpha"):
        fam.munchausen_backup(mdp, torch.zeros(S, A), TAU, 1.5)
    with pytest.raises(ValueError, match="alpha"):
        fam.geometric_reference(tb.random_policy(S, A, seed=0), -0.1)


def test_sac_policy_step_does_not_stop_in_a_saturated_softmax():
    """S=4, A=5, tau=0.16, Q = 2 randn (seed 419): a full Newton step from uniform logits landed in a saturated
    softmax whose gradient passed the 1e-12 test 0.996 away from pi^B_Q; the trust region on the logits reaches
    pi^B_Q itself."""
    import softq.family as fam
    from softq.regularized import boltzmann_policy

    q = 2 * torch.randn(4, 5, generator=torch.Generator().manual_seed(419), dtype=torch.float64)
    pi = fam.sac_policy_improvement(q, 0.16)
    assert (pi - boltzmann_policy(q, 0.16)).abs().max() < 1e-9
