"""softq.losses: autograd gradients of the losses are the estimators the paper writes, targets held fixed."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softq.losses import policy_gradient_loss, scale_grad, soft_q_loss, value_loss
from softq.regularized import boltzmann_policy, kl, log_boltzmann_policy


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), tau=st.floats(1e-3, 10.0))
def test_policy_gradient_loss_gradient_is_the_estimator(seed, tau):
    """grad of eq (84) = -(grad log pi(a|s) A - tau grad KL(s)) per sample, for a softmax policy over logits."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, 4, (6,), generator=g)
    # the advantage must be held fixed even if it carries a graph
    adv = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    pi = boltzmann_policy(logits, 1.0)
    log_prob = torch.log_softmax(logits, -1).gather(-1, actions[:, None])[:, 0]
    loss = policy_gradient_loss(log_prob, adv, kl(pi), tau).sum()
    (got,) = torch.autograd.grad(loss, logits)
    # closed form for softmax logits: grad log pi(a) = onehot(a) - pi; grad KL = pi * (log(pi/pi_bar) - KL)
    onehot = torch.nn.functional.one_hot(actions, 4).to(pi)
    log_ratio = log_boltzmann_policy(logits, 1.0) + torch.log(torch.tensor(4.0, dtype=torch.float64))
    grad_kl = pi * (log_ratio - kl(pi)[:, None])
    want = -((onehot - pi) * adv[:, None] - tau * grad_kl)
    torch.testing.assert_close(got, want.detach(), atol=1e-12, rtol=0)
    assert adv.grad is None


def test_value_and_soft_q_losses_hold_the_target_fixed():
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    target = (3 * v).detach().requires_grad_()
    loss = value_loss(v, target * 1.0).sum() + soft_q_loss(v, target * 1.0).sum()
    loss.backward()
    torch.testing.assert_close(v.grad, 2 * (v - target).detach())
    assert target.grad is None
    torch.testing.assert_close(value_loss(v, target), 0.5 * (v - target) ** 2)


def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.tensor([0.1, 3.0, -7.25], dtype=torch.float64, requires_grad=True)
    y = scale_grad(x, 100.0)
    assert torch.equal(y, x)  # bit-exact forward value
    (y**2).sum().backward()
    torch.testing.assert_close(x.grad, 100.0 * 2 * x.detach())


def test_bad_shapes_and_tau_are_named():
    a = torch.zeros(3)
    with pytest.raises(ValueError, match="advantage"):
        policy_gradient_loss(a, torch.zeros(4), a, 0.1)
    with pytest.raises(ValueError, match="tau"):
        policy_gradient_loss(a, a, a, 0.0)
    with pytest.raises(ValueError, match="target"):
        soft_q_loss(a, torch.zeros(3, 1))
