"""Check analytic gradients against finite differences, in float64.

    import minidl as md
    from minidl.gradcheck import gradcheck
    x = md.randn(4, 3, dtype=np.float64, requires_grad=True)
    w = md.randn(5, 3, dtype=np.float64, requires_grad=True)
    gradcheck(lambda x, w: md.nn.functional.linear(x, w).tanh(), [x, w])   # True, or raises

How: the output is weighted by a random array v, so that one backward pass gives
the vector-Jacobian product g = Jᵀv of every input (a plain .sum() would hide a
transposed gradient). Then

* along a few random directions u, ⟨g, u⟩ must equal the central difference
  (⟨v, f(x + εu)⟩ - ⟨v, f(x - εu)⟩) / 2ε, which tests all entries at once;
* for small inputs every entry is also checked on its own (for large ones, a
  random sample of entries), so that a failure names the entry that is wrong.

A check passes when |analytic - numeric| <= atol + rtol * |numeric|.

``fn`` must be deterministic (no dropout; BatchNorm in training mode is fine, its
batch statistics are a function of the input). Parameters that ``fn`` uses from a
closure, e.g. a module's weights, are checked too when passed as ``params``:
``gradcheck(model, [x], params=list(model.parameters()))``.

``numerical_gradient`` is the same central difference for code without autograd
(the explicit-backprop modules of ``minidl.manual``).
"""
from __future__ import annotations

import numpy as np

from . import autograd
from .autograd import Tensor

__all__ = ["gradcheck", "numerical_gradient", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised when analytic and numerical gradients disagree."""


def numerical_gradient(f, array, h=1e-5):
    """d f() / d array by central differences, perturbing ``array`` in place (and
    restoring it). ``f`` takes no arguments and returns a scalar; it must read
    ``array`` each time it is called."""
    grad = np.zeros(array.shape, dtype=np.float64)
    flat = array.reshape(-1)  # a view: writes reach ``array``
    if not np.shares_memory(flat, array):
        raise ValueError("numerical_gradient needs a contiguous array it can perturb in place")
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + h
        plus = float(f())
        flat[i] = original - h
        minus = float(f())
        flat[i] = original
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


def _entry_name(slot, index):
    return f"{slot}[{', '.join(map(str, index))}]" if index else slot


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, params=(), directions=3,
              max_entries=2000, seed=0):
    """True if the gradients of ``fn(*inputs)`` agree with finite differences; raises
    ``GradcheckError`` naming the worst entry otherwise.

    ``inputs``: tensors (the floating ones with requires_grad are checked) and any
    other arguments (integer targets, ...), passed to ``fn`` positionally; float32
    inputs are checked in float64 copies. ``params``: tensors ``fn`` reads from a
    closure; they are switched to float64 for the check and restored after.
    ``max_entries``: inputs with at most this many entries in all are checked entry by
    entry, larger ones on a random sample of that many entries.
    """
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    params = list(params)
    rng = np.random.default_rng(seed)

    # The values to differentiate, as float64 copies, with a name for messages.
    slots = []  # (name, float64 array)
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad:
            slots.append((f"input {i}", x.data.astype(np.float64)))
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] is a {type(p).__name__}; pass the tensors fn uses")
        slots.append((f"param {i}", p.data.astype(np.float64)))
    if not slots:
        raise ValueError("gradcheck: nothing to check; give at least one input "
                         "requires_grad=True (or pass params=)")

    saved = [(p.data, p.grad, p.requires_grad) for p in params]
    try:
        return _check(fn, inputs, params, slots, eps, atol, rtol, directions, max_entries, rng)
    finally:
        for p, (data, grad, requires_grad) in zip(params, saved):
            p.data, p.grad, p.requires_grad = data, grad, requires_grad


def _evaluate(fn, inputs, params, slots, values, record):
    """Run fn on ``values`` (one array per slot). With ``record`` the slots are
    leaves requiring grad and the graph is kept; otherwise no graph is built."""
    leaves, k = [], 0
    args = []
    for x in inputs:
        if isinstance(x, Tensor) and x.requires_grad:
            leaf = Tensor(values[k], requires_grad=record)
            leaves.append(leaf)
            args.append(leaf)
            k += 1
        else:
            args.append(x)
    for p in params:
        p.data, p.grad = values[k], None
        p.requires_grad = record
        leaves.append(p)
        k += 1
    if record:
        out = fn(*args)
    else:
        with autograd.no_grad():
            out = fn(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn returned {out.dtype}, but the check needs float64 "
                        "throughout; cast inside fn or call model.double() first")
    return out, leaves


def _check(fn, inputs, params, slots, eps, atol, rtol, directions, max_entries, rng):
    x0 = [a for _, a in slots]
    out, leaves = _evaluate(fn, inputs, params, slots, [a.copy() for a in x0], record=True)
    v = rng.standard_normal(out.shape)  # random output weighting
    if out.requires_grad:
        out.backward(v)
    analytic = [np.zeros_like(a) if leaf.grad is None else np.asarray(leaf.grad, np.float64)
                for a, leaf in zip(x0, leaves)]

    def weighted_output(values):
        result, _ = _evaluate(fn, inputs, params, slots, values, record=False)
        return float(np.sum(result.data * v))

    def central(direction):
        plus = [a + eps * d for a, d in zip(x0, direction)]
        minus = [a - eps * d for a, d in zip(x0, direction)]
        return (weighted_output(plus) - weighted_output(minus)) / (2 * eps)

    failures = []  # (excess over tolerance, description)

    # Per entry: one coordinate direction at a time.
    total = sum(a.size for a in x0)
    chosen = np.arange(total) if total <= max_entries else rng.choice(total, max_entries, replace=False)
    offsets = np.cumsum([0] + [a.size for a in x0])
    for flat in chosen:
        s = int(np.searchsorted(offsets, flat, side="right") - 1)
        local = int(flat - offsets[s])
        direction = [np.zeros_like(a) for a in x0]
        direction[s].reshape(-1)[local] = 1.0
        numeric = central(direction)
        exact = analytic[s].reshape(-1)[local]
        excess = abs(exact - numeric) - (atol + rtol * abs(numeric))
        if excess > 0:
            index = np.unravel_index(local, x0[s].shape)
            failures.append((excess, f"{_entry_name(slots[s][0], index)}: analytic {exact:.8g}, "
                                     f"numerical {numeric:.8g}"))

    # Random directions: all entries at once.
    for _ in range(directions):
        direction = [rng.standard_normal(a.shape) for a in x0]
        numeric = central(direction)
        exact = float(sum(np.sum(g * d) for g, d in zip(analytic, direction)))
        excess = abs(exact - numeric) - (atol + rtol * abs(numeric))
        if excess > 0:
            failures.append((excess, f"random direction: ⟨analytic gradient, u⟩ = {exact:.8g}, "
                                     f"finite difference {numeric:.8g}"))

    if failures:
        failures.sort(key=lambda f: -f[0])
        names = ", ".join(f"{name} {a.shape}" for name, a in slots)
        raise GradcheckError(
            f"gradcheck failed: {len(failures)} check(s) out of tolerance (atol={atol}, "
            f"rtol={rtol}, eps={eps}); the worst is {failures[0][1]}"
            + "".join(f"\n  next: {desc}" for _, desc in failures[1:4])
            + f"\n(checked: {names})")
    return True
