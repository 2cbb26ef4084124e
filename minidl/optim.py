"""Optimisers and learning-rate schedulers with torch.optim's names and update rules.

An optimiser updates ``p.data`` in place with plain NumPy (no graph is recorded), so
models and optimisers can be mixed freely with ``no_grad`` code. The formulas follow
torch's single-tensor implementations step for step, so N steps here equal N steps
of torch on the same parameters and gradients::

    opt = md.optim.Adam(model.parameters(), lr=1e-3)
    sched = md.optim.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        sched.step()
"""
from __future__ import annotations

import copy
import math

import numpy as np
from numba import njit

from .autograd import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW",
           "LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR"]


# ================================================================ optimisers
class Optimizer:
    """Base class: keeps ``param_groups`` (a list of dicts holding 'params' and the
    hyperparameters, e.g. 'lr') and per-parameter ``state``.

    ``params`` is an iterable of tensors, or of dicts for groups with their own
    settings: ``SGD([{'params': body.parameters()}, {'params': head.parameters(),
    'lr': 0.1}], lr=0.01)``.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}  # parameter -> dict of ndarrays / numbers
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors (e.g. model.parameters()), "
                            "got a single Tensor; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("the optimiser got an empty parameter list; did the model define any "
                             "Parameters (and was model.parameters() already consumed?)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"parameter {i} of the group is a {type(p).__name__}, not a Tensor")
            if not p.requires_grad:
                raise ValueError(f"parameter {i} (shape {p.shape}) does not require grad; an "
                                 "optimiser can only update tensors with requires_grad=True")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("a parameter appears in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        """Forget every gradient, before the next backward()."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = np.zeros_like(p.data)

    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional)
        re-evaluates the model and returns the loss, which step returns."""
        loss = closure() if closure is not None else None
        states = self.state
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.shape != p.data.shape:
                    raise RuntimeError(f"gradient of shape {grad.shape} for a parameter of "
                                       f"shape {p.data.shape}")
                state = states.get(p)
                if state is None:
                    state = states[p] = {}
                self._update(p, grad, state, group)
                # p._bump(), written out (this runs for every parameter): graphs that
                # saved p before the update must not be reused.
                p._versions[0] += 1
        return loss

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    # --------------------------------------------------------- save and resume
    def state_dict(self):
        """{'state': {index: {name: value}}, 'param_groups': [{..., 'params': [index]}]},
        with parameters numbered in group order, as torch does. Arrays are copies."""
        index, groups = {}, []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                for k, v in s.items()}
                 for group in self.param_groups for p in group["params"]
                 if (s := self.state.get(p))}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the saved optimiser has {len(groups)} parameter groups, this one "
                             f"{len(self.param_groups)}")
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"parameter group {i}: the saved optimiser has "
                                 f"{len(saved['params'])} parameters, this one {len(own['params'])}")
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        new_state = {}
        for saved, own in zip(groups, self.param_groups):
            for index, p in zip(saved["params"], own["params"]):
                if index not in saved_state:
                    continue
                entry = {}
                for key, value in saved_state[index].items():
                    if isinstance(value, np.ndarray) and value.ndim:
                        if value.shape != p.shape:
                            raise ValueError(f"saved state {key!r} has shape {value.shape} but the "
                                             f"parameter has shape {p.shape}")
                        value = value.astype(p.dtype, copy=True)
                    elif isinstance(value, np.ndarray):
                        value = value.item()
                    entry[key] = value
                new_state[p] = entry
        self.state = new_state
        for saved, own in zip(groups, self.param_groups):
            for key, value in saved.items():
                if key != "params":
                    own[key] = copy.deepcopy(value)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


def _check(name, value, low=0.0, high=None):
    if value < low or (high is not None and not value < high):
        span = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"invalid {name}: {value} (must be {span})")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (torch's form):

        g = grad + weight_decay * p
        buf = g                                  at the first step
        buf = momentum * buf + (1 - dampening) * g   afterwards
        g = g + momentum * buf   (nesterov)   or   g = buf
        p = p - lr * g
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False):
        _check("lr", lr)
        _check("momentum", momentum)
        _check("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, dtype=p.data.dtype, copy=True)
            elif not group["dampening"] and not group["nesterov"] and _fusable(p.data, buf, grad):
                # The common case (plain momentum) in one pass: see _momentum_step.
                scalar = p.data.dtype.type
                _momentum_step(p.data, buf, grad, scalar(momentum), scalar(group["lr"]))
                return
            else:
                buf *= momentum
                dampening = group["dampening"]
                buf += (1 - dampening) * grad if dampening else grad  # no temporary when 0
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad


def _fusable(p, buf, grad):
    """Whether _momentum_step can update these arrays: all three of one shape (the
    kernel does not check bounds) with at least one dimension (numba takes a 0-d
    array for a scalar), in C order (so that it can walk them as flat vectors), of
    one floating dtype, the parameter writable (else NumPy's error)."""
    flags = p.flags
    return (p.ndim and p.shape == buf.shape == grad.shape and flags.c_contiguous and flags.writeable
            and buf.flags.c_contiguous and grad.flags.c_contiguous
            and p.dtype == buf.dtype == grad.dtype and p.dtype.kind == "f")


@njit(cache=True, nogil=True)
def _momentum_step(p, buf, grad, momentum, lr):
    """SGD's momentum update, ``buf = momentum * buf + grad; p -= lr * buf``, element by
    element: one pass over the three arrays, where NumPy's in-place operations take
    four, one more to write ``lr * buf`` to a temporary (a 256x784 weight: 60 µs
    against 126 µs on one thread). The same float operations in the same order (the
    factors come in the arrays' dtype), so the same numbers, bit for bit."""
    p, buf, grad = p.reshape(p.size), buf.reshape(buf.size), grad.reshape(grad.size)  # views
    for i in range(p.size):
        b = momentum * buf[i] + grad[i]
        buf[i] = b
        p[i] -= lr * b


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch computes it:

        g = grad + weight_decay * p        (L2 in the gradient; AdamW decouples it)
        m = m + (1 - beta1) (g - m)        v = beta2 v + (1 - beta2) g²
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    With ``amsgrad`` the largest v seen so far replaces v in the denominator.
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False):
        _check("lr", lr)
        _check("eps", eps)
        _check("beta1", betas[0], 0.0, 1.0)
        _check("beta2", betas[1], 0.0, 1.0)
        _check("weight_decay", weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay = group["weight_decay"]
        if group["maximize"]:
            grad = -grad
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        if weight_decay != 0:
            if self.decoupled:
                p.data *= 1 - lr * weight_decay
            else:
                grad = grad + weight_decay * p.data
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)  # torch's lerp_
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        if group["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            denom = np.sqrt(state["max_exp_avg_sq"]) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        p.data -= step_size * (exp_avg / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): before the Adam step
    the weights shrink, p = p (1 - lr * weight_decay); the decay never enters m or v."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)


# ================================================================ schedulers
class LRScheduler:
    """Base class. ``step()`` (once per epoch, after the optimiser's steps) moves
    ``last_epoch`` on and writes the new learning rates into the optimiser's
    ``param_groups``. As in torch, the formulas are applied to the current
    learning rate, so a schedule composes with changes you make yourself."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a minidl optimiser")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param_groups[{i}] has no 'initial_lr': to resume a schedule "
                                   "with last_epoch >= 0, load the optimiser's state_dict first")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial = True  # the constructor's step sets the starting learning rate
        self.step()
        self._initial = False

    def get_lr(self):
        """The learning rates for ``last_epoch`` (one per parameter group)."""
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def _current(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]


class CosineAnnealingLR(LRScheduler):
    """Anneal from the base learning rate to ``eta_min`` along half a cosine in
    ``T_max`` epochs: lr_t = eta_min + (base - eta_min)(1 + cos(pi t / T_max)) / 2.
    Computed recursively from the current rate, exactly as torch does; after T_max
    the rate climbs back up (no restarts)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):  # noqa: N803 (torch's name)
        if T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        self._step_count = 0
        super().__init__(optimizer, last_epoch)

    def step(self):
        self._step_count += 1
        super().step()

    def get_lr(self):
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._current()
        if self._step_count == 1 and t > 0:  # resumed: closed form
            return [eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / T)) / 2
                    for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for lr, base in zip(self._current(), self.base_lrs)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (lr - eta_min) + eta_min for lr in self._current()]


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(epoch), one function for all groups or one per group.
    Example, linear warm-up over 5 epochs: ``LambdaLR(opt, lambda e: min(1, (e + 1) / 5))``."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        groups = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != groups:
                raise ValueError(f"LambdaLR: expected {groups} lr_lambdas (one per parameter "
                                 f"group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * groups
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]
