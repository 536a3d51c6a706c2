"""softq.rl.parts.optim: TensorFlow 1's RMSProp (baselines' A2C) against hand computations, torch's RMSprop, resume."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from softq.rl.parts.optim import OPTIMIZERS, RMSpropTF, _foreach_update, _loop_update, make_optimizer

ALPHA, EPS = 0.99, 1e-5  # baselines' A2C
P0 = np.array([0.5, -1.0, 2.0, 0.0])
GRADS = np.array([[0.3, -2.0, 1e-3, 5.0], [-0.1, -1.5, 2e-3, -4.0], [0.2, 0.5, -1e-3, 3.0], [0.0, 1.0, 1e-3, 1.0]])
LRS = [7e-4, 5e-4, 3e-4, 1e-4]  # set through param_groups before each step, as A2C's linear decay does


def tf_rmsprop(p0, grads, lrs, alpha=ALPHA, eps=EPS, momentum=0.0, centered=False):
    """TF1's ApplyRMSProp / ApplyCenteredRMSProp, by hand in float64: the parameters after each step."""
    p, ms, mg, mom = p0.copy(), np.ones_like(p0), np.zeros_like(p0), np.zeros_like(p0)
    out = []
    for g, lr in zip(grads, lrs, strict=True):
        ms = alpha * ms + (1 - alpha) * g**2
        mg = alpha * mg + (1 - alpha) * g
        mom = momentum * mom + lr * g / np.sqrt(ms - mg**2 + eps if centered else ms + eps)
        p = p - mom
        out.append(p.copy())
    return out


def run(opt_factory, grads, lrs, p0=P0, as_tensor=False):
    """Drive an optimizer over one float64 parameter with given gradients and learning rates."""
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = opt_factory([p])
    out = []
    for g, lr in zip(grads, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = torch.tensor(lr, dtype=torch.float64) if as_tensor else lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_matches_tf1_by_hand(foreach, as_tensor):
    expected = tf_rmsprop(P0, GRADS, LRS)
    got = run(lambda ps: RMSpropTF(ps, lr=1.0, alpha=ALPHA, eps=EPS, foreach=foreach), GRADS, LRS,
              as_tensor=as_tensor)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-15)
    # the first step by formula: lr g / sqrt(alpha + (1 - alpha) g^2 + eps), since ms starts at 1
    g0 = GRADS[0]
    np.testing.assert_allclose(P0 - got[0], LRS[0] * g0 / np.sqrt(ALPHA + (1 - ALPHA) * g0**2 + EPS), atol=1e-15)


@pytest.mark.parametrize("momentum,centered", [(0.9, False), (0.0, True), (0.5, True)])
def test_momentum_and_centered_match_tf1(momentum, centered):
    expected = tf_rmsprop(P0, GRADS, LRS, momentum=momentum, centered=centered)
    for foreach in (True, False):
        got = run(lambda ps, f=foreach: RMSpropTF(ps, lr=1.0, alpha=ALPHA, eps=EPS, momentum=momentum,
                                                   centered=centered, foreach=f), GRADS, LRS)
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-15)


def test_first_step_against_torch_rmsprop():
    """torch starts its average at 0: the first step is lr g / (sqrt(1 - alpha) |g| + eps), about 10 lr sign(g),
    where TF's is lr g / sqrt(alpha + (1 - alpha) g^2 + eps), about lr g: a factor sqrt(alpha / (1 - alpha)) / |g|
    for small eps and g."""
    lr, g = 7e-4, GRADS[0]
    nonzero, p0 = g != 0, np.zeros_like(g)  # start at 0: the steps themselves, no cancellation
    ours = -run(lambda ps: RMSpropTF(ps, lr=lr, alpha=ALPHA, eps=EPS), g[None], [lr], p0=p0)[0]
    theirs = -run(lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=ALPHA, eps=EPS), g[None], [lr], p0=p0)[0]
    np.testing.assert_allclose(ours, lr * g / np.sqrt(ALPHA + (1 - ALPHA) * g**2 + EPS), rtol=1e-13)
    np.testing.assert_allclose(theirs, lr * g / (math.sqrt(1 - ALPHA) * np.abs(g) + EPS), rtol=1e-13)
    # a sign step of ~10 lr wherever |g| >> eps / sqrt(1 - alpha) = 1e-4
    big = np.abs(g) > 1e-2
    np.testing.assert_allclose(theirs[big], 10 * lr * np.sign(g[big]), rtol=1e-3)
    factor = theirs[nonzero] / ours[nonzero]
    expected = np.sqrt(ALPHA + (1 - ALPHA) * g[nonzero] ** 2 + EPS) / (math.sqrt(1 - ALPHA) * np.abs(g[nonzero]) + EPS)
    np.testing.assert_allclose(factor, expected, rtol=1e-12)
    assert factor.min() > 1.9  # g = 5: 2.2x; g = 0.3: 33x; g = 1e-3: 9,000x
    assert factor.max() > 5000


def test_eps_inside_the_square_root():
    """Tiny gradients: TF moves a weight by lr g / sqrt(ms + eps) -- at most lr g / sqrt(eps) = 316 lr g for
    eps = 1e-5 -- where torch's lr g / (sqrt(ms) + eps) reaches lr g / eps = 1e5 lr g."""
    lr, g = 1e-3, np.array([1e-6, -3e-7, 2e-6])
    p0 = np.zeros(3)
    # alpha = 0: ms = g^2 at once, the root's content is g^2 + eps (~eps)
    ours = run(lambda ps: RMSpropTF(ps, lr=lr, alpha=0.0, eps=EPS), g[None], [lr], p0=p0)[0]
    np.testing.assert_allclose(-ours, lr * g / np.sqrt(g**2 + EPS), rtol=1e-13)
    np.testing.assert_allclose(-ours, lr * g / math.sqrt(EPS), rtol=1e-6)
    theirs = run(lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=0.0, eps=EPS), g[None], [lr], p0=p0)[0]
    np.testing.assert_allclose(-theirs, lr * g / (np.abs(g) + EPS), rtol=1e-13)
    assert np.all(np.abs(theirs) > 100 * np.abs(ours))  # ~280x here
    # alpha = 0.99 after ones-start has decayed (800 zero gradients: ms = 0.99^800 = 3.2e-4), then tiny gradients
    steps = np.concatenate([np.zeros((800, 3)), np.tile(g, (3, 1))])
    ours = run(lambda ps: RMSpropTF(ps, lr=lr, alpha=ALPHA, eps=EPS), steps, [lr] * len(steps), p0=p0)
    ms = ALPHA**800 * np.ones(3)
    expected = p0.copy()
    for _ in range(3):
        ms = ALPHA * ms + (1 - ALPHA) * g**2
        expected -= lr * g / np.sqrt(ms + EPS)
    np.testing.assert_array_equal(ours[799], p0)
    np.testing.assert_allclose(ours[-1], expected, rtol=1e-12)


def _train(net, opt, steps, seed, lr0=7e-4):
    """A few steps of a small regression with a decaying lr set through param_groups; returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for k in range(steps):
        x = torch.randn(16, 4, generator=gen)
        log_pi, v = net(x)
        loss = (v - x.sum(1)).pow(2).mean() - log_pi[:, 0].mean()
        for group in opt.param_groups:
            group["lr"] = lr0 * (1 - k / (2 * steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9, "centered": True}, {"foreach": False}])
def test_state_dict_round_trip_continues_bit_for_bit(kwargs):
    from softq.rl.parts.nets import make_net

    def fresh():
        torch.manual_seed(0)
        net = make_net((4,), 3, hidden=16)
        return net, RMSpropTF(net.parameters(), lr=7e-4, alpha=ALPHA, eps=EPS, **kwargs)

    net, opt = fresh()
    _train(net, opt, 5, seed=1)
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, buf)
    straight = _train(net, opt, 5, seed=2)

    net2, opt2 = fresh()
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    resumed = _train(net2, opt2, 5, seed=2)
    assert resumed == straight
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)
    for s, t in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert s["step"] == t["step"] == 10
        assert all(torch.equal(s[k], t[k]) for k in s if k != "step")


def test_loading_torch_rmsprop_state_raises():
    p = torch.nn.Parameter(torch.zeros(3))
    torch_opt = torch.optim.RMSprop([p], lr=1e-3)
    p.grad = torch.ones(3)
    torch_opt.step()
    with pytest.raises(ValueError, match="not saved by RMSpropTF"):
        RMSpropTF([p]).load_state_dict(torch_opt.state_dict())


def test_tensor_lr_paths_agree_with_float_lr():
    """The tensor-lr arithmetic (used for a learning rate on a GPU) gives the float path's numbers."""
    torch.manual_seed(0)
    shapes = [(5, 3), (7,)]
    for momentum, centered in [(0.0, False), (0.9, True)]:
        for update in (_foreach_update, _loop_update):
            results = []
            for lr in (3e-3, torch.tensor(3e-3)):
                torch.manual_seed(0)
                params = [torch.randn(s) for s in shapes]
                ms = [torch.ones(s) for s in shapes]
                mg = [torch.zeros(s) for s in shapes]
                mom = [torch.zeros(s) for s in shapes]
                for _ in range(3):
                    grads = [torch.randn(s) for s in shapes]
                    update(params, grads, ms, mg if centered else [], mom if momentum else [], lr=lr, alpha=ALPHA,
                           eps=EPS, momentum=momentum, centered=centered)
                results.append(params)
            for a, b in zip(*results, strict=True):
                torch.testing.assert_close(a, b, rtol=2e-7, atol=0)


def test_foreach_and_loop_agree_bit_for_bit():
    from softq.rl.parts.nets import make_net

    out = []
    for foreach in (True, False):
        torch.manual_seed(0)
        net = make_net((4,), 3, hidden=16)
        _train(net, RMSpropTF(net.parameters(), foreach=foreach), 4, seed=3)
        out.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


def test_make_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    tf = make_optimizer("rmsprop_tf", params, lr=7e-4, alpha=0.9, eps=1e-5)
    assert type(tf) is RMSpropTF
    th = make_optimizer("rmsprop_torch", params, lr=7e-4, alpha=0.9, eps=1e-5)
    assert type(th) is torch.optim.RMSprop
    for opt in (tf, th):
        group = opt.param_groups[0]
        assert (group["lr"], group["alpha"], group["eps"]) == (7e-4, 0.9, 1e-5)
    assert {type(make_optimizer(name, params, lr=7e-4, alpha=0.9, eps=1e-5)) for name in OPTIMIZERS} == {
        RMSpropTF, torch.optim.RMSprop}  # every name builds one of the two
    with pytest.raises(ValueError, match=r"optimizer must be one of .*'adam'"):
        make_optimizer("adam", params, lr=7e-4, alpha=0.9, eps=1e-5)


def test_bad_hyperparameters_raise():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for kwargs, name in [({"lr": -1.0}, "lr"), ({"alpha": 1.5}, "alpha"), ({"eps": -1e-5}, "eps"),
                         ({"momentum": -0.1}, "momentum"), ({"lr": torch.ones(2)}, "lr")]:
        with pytest.raises(ValueError, match=name):
            RMSpropTF(p, **kwargs)


def test_gradient_report_finds_silent_weights_and_dead_units():
    """A filter bank whose filter 1 never gets a gradient: the report counts it dead; the step ratio is TF's
    denominator sqrt(ms + eps) over torch's sqrt(ms) + eps, i.e. torch's step over TF's."""
    from softq.rl.parts.optim import gradient_report

    ms = torch.full((3, 2, 2, 2), 1e-6)
    ms[1] = 0.0
    (row,) = gradient_report(["conv.weight"], [ms], eps=1e-5)
    assert row["dead_outputs"] == 1 and row["outputs"] == 3 and row["silent"] == pytest.approx(1 / 3)
    assert row["torch_over_tf_median"] == pytest.approx((1e-6 + 1e-5) ** 0.5 / (1e-3 + 1e-5))
    with pytest.raises(ValueError, match="names"):
        gradient_report(["a", "b"], [ms], eps=1e-5)


@pytest.mark.parametrize("ms, g", [(1e-6, 1e-3), (1e-12, 1e-6), (0.04, -0.2)])
def test_torch_over_tf_is_the_ratio_of_the_two_optimizers_actual_steps(ms, g):
    """One step of a real torch.optim.RMSprop and of RMSpropTF from the same state (mean square ms, a gradient g
    that keeps it there: g**2 = ms, or not): the report's torch_over_tf_median is torch's step over TF's."""
    from softq.rl.parts.optim import gradient_report, torch_over_tf_step

    eps, lr, steps = 1e-5, 7e-4, {}
    for name, cls in (("torch", torch.optim.RMSprop), ("tf", RMSpropTF)):
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = cls([p], lr=lr, alpha=0.99, eps=eps)
        p.grad = torch.zeros_like(p)
        opt.step()  # creates the state; a zero gradient moves nothing
        opt.state[p]["square_avg"].fill_(ms)
        p.grad = torch.full_like(p, g)
        before = p.detach().clone()
        opt.step()
        steps[name] = float((before - p.detach())[0])
        ms_after = float(opt.state[p]["square_avg"][0])
    assert steps["torch"] != 0 and steps["tf"] != 0
    ratio = steps["torch"] / steps["tf"]
    (row,) = gradient_report(["w"], [torch.full((1,), ms_after, dtype=torch.float64)], eps=eps)
    assert row["torch_over_tf_median"] == pytest.approx(ratio, rel=1e-9)
    assert torch_over_tf_step(ms_after ** 0.5, eps) == pytest.approx(ratio, rel=1e-9)


def test_inspect_writes_gradients_json_of_a_run(tmp_path, capsys):
    import json

    from softq.rl.__main__ import main

    run = tmp_path / "run"
    assert main(["train", "--env", "CartPole-v1", "--frames", "400", "--num-envs", "4", "--torch-threads", "1",
                 "--no-progress", "--out", str(run)]) == 0
    assert main(["inspect", str(run)]) == 0
    report = json.loads((run / "gradients.json").read_text())
    assert report["updates"] == 20 and report["optimizer"] == "rmsprop_tf"
    assert [r["name"] for r in report["layers"]][0].endswith("weight") and all(
        len(r["rms_quantiles"]) == 5 for r in report["layers"])
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path / "nothing")])
    assert "no checkpoint.pt" in capsys.readouterr().err
