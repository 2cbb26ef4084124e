"""md.optim against torch.optim: N steps on the same parameters with the same
gradients give the same parameters (float64: to rounding; float32: to 1e-6), every
scheduler gives torch's learning rates epoch by epoch, and state_dict resumes."""
import math

import numpy as np
import pytest
import torch

import minidl as md
import minidl.nn as nn
import minidl.optim as optim

SHAPES = [(4, 3), (3,), (2, 2, 2)]


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [nn.Parameter(a.copy()) for a in arrays]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    return ours, theirs


def gradient(step, i, param):
    """A gradient that depends on the parameter (a quadratic bowl) and on the step
    (noise), so momentum and adaptive terms all matter."""
    rng = np.random.default_rng(1000 * step + i)
    return 0.5 * param + rng.standard_normal(param.shape).astype(param.dtype)


def take_steps(optimizer, params, steps):
    """Optimiser steps ``steps`` (a range: the step number seeds each gradient)."""
    for step in steps:
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p.data)
        optimizer.step()


def run(ours_opt, theirs_opt, ours, theirs, steps, check=None):
    for step in range(steps):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            g = gradient(step, i, p.data)
            p.grad = g.copy()
            q.grad = torch.from_numpy(g.copy())
        ours_opt.step()
        theirs_opt.step()
        if check:
            check(step)


CONFIGS = [
    ("sgd", optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    ("sgd_momentum", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd_dampening_wd", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3,
                                                          weight_decay=0.01)),
    ("sgd_nesterov", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                                      weight_decay=1e-3)),
    ("sgd_maximize", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.5, maximize=True)),
    ("adam", optim.Adam, torch.optim.Adam, dict(lr=0.01)),
    ("adam_wd_betas", optim.Adam, torch.optim.Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6,
                                                        weight_decay=0.05)),
    ("adam_amsgrad", optim.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    ("adamw", optim.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    ("adamw_strong_decay_amsgrad", optim.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.3,
                                                                        amsgrad=True)),
]


@pytest.mark.parametrize("name, ours_cls, theirs_cls, kwargs", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)],
                         ids=["float64", "float32"])
def test_steps_equal_torch(name, ours_cls, theirs_cls, kwargs, dtype, rtol):
    ours, theirs = make_params(dtype)
    o, t = ours_cls(ours, **kwargs), theirs_cls(theirs, **kwargs)

    def check(step):
        for p, q in zip(ours, theirs):
            assert p.dtype == dtype
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=rtol,
                                       err_msg=f"{name}, step {step}")

    run(o, t, ours, theirs, steps=12, check=check)
    # The parameters moved (the comparison above is not between two unchanged copies).
    assert not np.allclose(ours[0].data, make_params(dtype)[0][0].data)


def test_param_groups_with_their_own_lr_equal_torch():
    ours, theirs = make_params(np.float64)
    o = optim.SGD([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.5}], lr=0.1, momentum=0.9)
    t = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.5}], lr=0.1,
                        momentum=0.9)
    run(o, t, ours, theirs, steps=5)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12)
    assert [g["lr"] for g in o.param_groups] == [0.1, 0.5]


def test_parameters_without_gradient_are_skipped_and_zero_grad_clears():
    p, q = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))
    opt = optim.Adam([p, q], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    assert not np.allclose(p.data, 1) and np.array_equal(q.data, np.ones(3))
    assert q not in opt.state
    opt.zero_grad()
    assert p.grad is None and q.grad is None
    p.grad = np.ones(3)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad, 0)


def test_step_uses_no_graph_and_works_on_a_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = md.randn(8, 3)
    before = model(x).data.copy()
    model(x).sum().backward()
    opt.step()
    assert all(p.grad_fn is None and p.is_leaf for p in model.parameters())
    assert not np.allclose(model(x).data, before)


@pytest.mark.parametrize("cls, kwargs", [(optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         (optim.Adam, dict(lr=0.01, amsgrad=True)),
                                         (optim.AdamW, dict(lr=0.01))])
def test_state_dict_resumes_exactly(cls, kwargs):
    # 4 + 4 steps with a save and load in between equal 8 steps in one go.
    straight, _ = make_params(np.float64)
    take_steps(cls(straight, **kwargs), straight, range(8))

    first, _ = make_params(np.float64)
    o1 = cls(first, **kwargs)
    take_steps(o1, first, range(4))
    saved = o1.state_dict()
    for entry in saved["state"].values():  # a copy, not the live buffers
        for value in entry.values():
            if isinstance(value, np.ndarray):
                value += 100.0
    saved = o1.state_dict()
    resumed = [nn.Parameter(p.data.copy()) for p in first]
    o2 = cls(resumed, lr=123.0)  # hyperparameters come back from the state dict too
    o2.load_state_dict(saved)
    assert o2.param_groups[0]["lr"] == kwargs["lr"]
    take_steps(o2, resumed, range(4, 8))
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a.data, b.data)


def test_load_state_dict_refuses_a_different_model():
    a, _ = make_params(np.float64)
    o = optim.Adam(a)
    for p in a:
        p.grad = np.ones_like(p.data)
    o.step()
    with pytest.raises(ValueError, match="parameters"):
        optim.Adam(a[:2]).load_state_dict(o.state_dict())
    swapped = [nn.Parameter(np.zeros(s)) for s in [(3,), (4, 3), (2, 2, 2)]]
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(swapped).load_state_dict(o.state_dict())


def test_invalid_settings_are_explained():
    p = [nn.Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="beta"):
        optim.Adam(p, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(p[0], lr=0.1)
    with pytest.raises(ValueError, match="requires_grad"):
        optim.SGD([md.zeros(2)], lr=0.1)


# ------------------------------------------------------------------ schedulers
SCHEDULERS = [
    ("step", lambda o: optim.StepLR(o, step_size=3, gamma=0.5),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    ("exponential", lambda o: optim.ExponentialLR(o, gamma=0.9),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    ("cosine", lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01)),
    ("lambda_per_group", lambda o: optim.LambdaLR(o, [lambda e: 0.95 ** e, lambda e: min(1, (e + 1) / 4)]),
     lambda o: torch.optim.lr_scheduler.LambdaLR(o, [lambda e: 0.95 ** e, lambda e: min(1, (e + 1) / 4)])),
]


@pytest.mark.parametrize("name, ours_sched, theirs_sched", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_scheduler_learning_rates_equal_torch(name, ours_sched, theirs_sched):
    ours, theirs = make_params(np.float64)
    o = optim.SGD([{"params": ours[:1]}, {"params": ours[1:], "lr": 0.3}], lr=0.1, momentum=0.9)
    t = torch.optim.SGD([{"params": theirs[:1]}, {"params": theirs[1:], "lr": 0.3}], lr=0.1,
                        momentum=0.9)
    so, st = ours_sched(o), theirs_sched(t)
    seen = []
    for epoch in range(25):  # past T_max: the cosine climbs back, as torch's does
        ours_lr, theirs_lr = [g["lr"] for g in o.param_groups], [g["lr"] for g in t.param_groups]
        np.testing.assert_allclose(ours_lr, theirs_lr, rtol=1e-14, err_msg=f"epoch {epoch}")
        assert so.get_last_lr() == ours_lr
        seen.append(ours_lr[0])
        run(o, t, ours, theirs, steps=1)
        so.step()
        st.step()
    assert len(set(np.round(seen, 12))) > 3  # the learning rate did change
    for p, q in zip(ours, theirs):  # and the parameters followed the same schedule
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-10)


def stepped(scheduler, steps, **options):
    """A ``scheduler`` of SGD at lr 1 on one parameter, stepped ``steps`` times."""
    sched = scheduler(optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0), **options)
    for _ in range(steps):
        sched.step()
    return sched


def test_cosine_reaches_eta_min_at_t_max():
    assert stepped(optim.CosineAnnealingLR, 8, T_max=8, eta_min=0.1).get_last_lr()[0] == pytest.approx(0.1, abs=1e-12)
    half = stepped(optim.CosineAnnealingLR, 4, T_max=8)
    assert half.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_scheduler_state_dict_resumes():
    sched = stepped(optim.StepLR, 3, step_size=2, gamma=0.5)
    opt = sched.optimizer
    state, opt_state = sched.state_dict(), opt.state_dict()
    opt2 = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched2 = optim.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    for _ in range(3):
        sched.step()
        sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == 0.125
