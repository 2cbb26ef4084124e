"""Reverse-mode automatic differentiation on NumPy arrays.

Three pieces:

* ``Tensor``: an ndarray (``.data``) plus, when it needs a gradient, a link to the
  ``Function`` node that produced it (``.grad_fn``) and a ``.grad`` slot.
* ``Function``: one differentiable operation, with ``forward`` on raw ndarrays and
  ``backward`` right beside it.
* ``run_backward``: walks the recorded graph from the output to the leaves without
  recursion, in dependency order, checking each gradient's shape, summing
  broadcast gradients back (``unbroadcast``, the one place), and freeing each
  node's saved arrays as it goes.

Where the ops are. Imports go one way, each module using only those before it:

    autograd  <-  ops (arithmetic, reductions, shapes)  <-  conv (convolution, pooling)
              <-  nn.functional (activations, linear, dropout, batch norm, losses)  <-  nn

(``threads`` and ``kernels`` sit below them all and know nothing of tensors.) Each
op is one block in one file: its Function class, then its user-facing function,
which ``@tensor_method`` also attaches to ``Tensor`` where torch has a method
(``x.exp()``, ``x + y``). This module therefore defines no op methods itself.

Naming rule. A Function class is the op's name in CamelCase with the suffix
``Fn``: ``AddFn``, ``MatMulFn``, ``ReLUFn``, ``LinearFn``, ``Conv2dFn``,
``BatchNormFn``. The name without the suffix belongs to the nn Module (``nn.ReLU``,
``nn.Linear``: a layer holding parameters and settings) and the lower-case name to
the function you call (``F.relu``, ``md.exp``). Name your own Functions the same way.
"""
from __future__ import annotations

import contextlib
import inspect
import numbers
import sys

import numpy as np

DEFAULT_DTYPE = np.float32

_grad_enabled = True
_anomaly_mode = False
_rng = np.random.default_rng()


# --------------------------------------------------------------------------- modes
@contextlib.contextmanager
def no_grad():
    """Inside this block no operation is recorded (evaluation, optimiser updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def detect_anomaly():
    """Check every forward output and every backward gradient for NaN or inf and
    raise naming the first operation that produced one. Slow: for debugging."""
    global _anomaly_mode
    previous, _anomaly_mode = _anomaly_mode, True
    try:
        yield
    finally:
        _anomaly_mode = previous


def manual_seed(seed):
    """Seed minidl's random generator (initialisation, dropout, ``md.randn``)."""
    global _rng
    _rng = np.random.default_rng(seed)


def rng():
    """The generator behind every random draw in minidl."""
    return _rng


def get_rng_state():
    """The generator's state as plain data (JSON can hold it): what a checkpoint keeps."""
    return _rng.bit_generator.state


def set_rng_state(state):
    """Continue exactly where ``get_rng_state`` was taken."""
    global _rng
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    _rng = np.random.Generator(bit_generator)


# -------------------------------------------------------------------------- tensor
def _as_array(data, dtype=None):
    """Python scalars and lists of floats become float32 (torch's default dtype);
    ndarrays keep their dtype unless one is asked for."""
    if dtype is None and type(data) is np.ndarray:  # the common case, first: every op's output
        return data
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (np.ndarray, np.generic)):  # numpy data keeps its dtype
        data = np.asarray(data)
        return data if dtype is None else data.astype(dtype, copy=False)
    array = np.asarray(data)
    if dtype is not None:
        return array.astype(dtype, copy=False)
    if array.dtype == np.float64:  # a Python float or list of them
        return array.astype(DEFAULT_DTYPE)
    return array


def _comparison(ufunc):
    def compare(self, other):
        return Tensor(ufunc(self.data, _as_array(other)))
    return compare


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    The differentiable methods (``+``, ``@``, ``exp``, ``sum``, ``reshape``,
    ``relu``, ...) are attached by the modules that define the ops, with
    ``tensor_method`` (see the module docstring)."""

    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        # An ndarray as it is, without a call (every op's output comes this way); the
        # rest through _as_array.
        self.data = data if type(data) is np.ndarray and dtype is None else _as_array(data, dtype)
        self.grad = None
        self.grad_fn = None
        # Bumped by in-place changes, checked by backward. A one-item list, so that
        # detach() can share it, as torch shares its version counter.
        self._versions = [0]
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ---------------------------------------------------------------- properties
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def dim(self):
        return self.data.ndim

    def numel(self):
        return self.data.size

    def __len__(self):
        return len(self.data)

    @property
    def is_leaf(self):
        return self.grad_fn is None

    def requires_grad_(self, requires_grad=True):
        if requires_grad and not np.issubdtype(self.data.dtype, np.floating):
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}; "
                "convert first, e.g. md.tensor(data, dtype=np.float32)")
        self.requires_grad = bool(requires_grad)
        return self

    # -------------------------------------------------------------- conversions
    def numpy(self):
        """The data as an ndarray: the array itself, or, when the tensor requires grad, a
        read-only view of it (torch refuses; a write there would corrupt the gradient of
        whatever saved it). ``t.detach().numpy()`` is writable, as in torch."""
        if not self.requires_grad:
            return self.data
        view = self.data.view()
        view.flags.writeable = False
        return view

    def _one_element(self, what):
        if self.data.size != 1:
            raise ValueError(f"{what} needs a tensor with one element, this one has shape "
                             f"{self.shape}; reduce it first (.sum(), .mean()) or index one element")
        return self.data.item()

    def item(self):
        return self._one_element("item()")

    def tolist(self):
        return self.data.tolist()

    def detach(self):
        """The same data, cut from the graph. As in torch it shares memory and the version
        counter: an in-place change through it is caught by a backward that needs the data."""
        out = Tensor(self.data)
        out._versions = self._versions
        return out

    def __array__(self, dtype=None, copy=None):
        data = self.numpy()  # read-only when it requires grad
        return data if dtype is None else data.astype(dtype)

    # Python numbers from one-element tensors, as in torch.
    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(
                f"the truth value of a tensor with {self.data.size} elements (shape {self.shape}) "
                "is ambiguous: use .any() or .all(), or compare one element")
        return bool(self.data.item())

    def __float__(self):
        return float(self._one_element("float()"))

    def __int__(self):
        return int(self._one_element("int()"))

    def __round__(self, ndigits=None):
        return round(self._one_element("round()"), ndigits)

    def __format__(self, spec):
        if self.data.ndim == 0:  # f"{loss:.3f}"
            return format(self.data.item(), spec)
        if spec:
            raise TypeError(f"format spec {spec!r} needs a 0-d tensor, this one has shape "
                            f"{self.shape}; use .item() on one element")
        return str(self)

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = ""
        if self.data.dtype != DEFAULT_DTYPE and np.issubdtype(self.data.dtype, np.floating):
            extra += f", dtype={self.data.dtype}"
        if self.grad_fn is not None:
            extra += f", grad_fn=<{type(self.grad_fn).__name__}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # Comparisons give boolean tensors outside the graph: they have no gradient.
    __eq__ = _comparison(np.equal)
    __ne__ = _comparison(np.not_equal)
    __lt__ = _comparison(np.less)
    __le__ = _comparison(np.less_equal)
    __gt__ = _comparison(np.greater)
    __ge__ = _comparison(np.greater_equal)
    __hash__ = object.__hash__  # defining __eq__ would otherwise make tensors unhashable

    # ------------------------------------------------------------------ in place
    @property
    def _version(self):
        return self._versions[0]

    def _bump(self):
        self._versions[0] += 1

    def _check_inplace(self):
        # minidl records no in-place ops: refusing them keeps every gradient honest.
        if _grad_enabled and self.requires_grad:
            raise RuntimeError(
                f"in-place change of a tensor of shape {self.shape} that requires grad while "
                "recording: write it out of place (y = y + 1), or wrap an update of "
                "parameters in `with md.no_grad():`")

    def zero_(self):
        self._check_inplace()
        self.data[...] = 0
        self._bump()
        return self

    def fill_(self, value):
        self._check_inplace()
        self.data[...] = value
        self._bump()
        return self

    def copy_(self, other):
        self._check_inplace()
        self.data[...] = _as_array(other)
        self._bump()
        return self

    def add_(self, other, alpha=1):
        self._check_inplace()
        self.data += alpha * _as_array(other)
        self._bump()
        return self

    def mul_(self, other):
        self._check_inplace()
        self.data *= _as_array(other)
        self._bump()
        return self

    def __iadd__(self, other):
        return self.add_(other)

    def __isub__(self, other):
        return self.add_(other, alpha=-1)

    def __imul__(self, other):
        return self.mul_(other)

    def __setitem__(self, index, value):
        self._check_inplace()
        self.data[_unwrap_index(index)] = _as_array(value)
        self._bump()

    # ------------------------------------------------------------------ autograd
    def backward(self, gradient=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that needs it."""
        if not self.requires_grad:
            raise RuntimeError(
                "this tensor does not require grad and has no grad_fn: nothing to differentiate "
                "(did you create it under no_grad, or forget requires_grad=True on the inputs?)")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar output, got shape {self.shape}; "
                    "pass gradient= of the same shape or reduce with .sum() or .mean() first")
            gradient = np.ones_like(self.data)
        else:
            gradient = _as_array(gradient, self.data.dtype)
            if gradient.shape != self.shape:
                raise ValueError(f"backward: gradient shape {gradient.shape} != tensor shape {self.shape}")
        run_backward(self, gradient, retain_graph)


def tensor_method(*names, reflected=None):
    """Attach the decorated op function to ``Tensor`` under ``names`` (its own name
    when none is given); ``reflected`` names the swapped operator, e.g.
    ``__radd__`` for ``2 + x``. Used beside each op, so that autograd needs no
    import of the modules above it."""
    def attach(fn):
        for name in names or (fn.__name__,):
            setattr(Tensor, name, fn)
        if reflected:
            setattr(Tensor, reflected, lambda self, other: fn(other, self))
        return fn
    return attach


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


# ------------------------------------------------------------------------ function
class Function:
    """One differentiable operation.

    Subclasses define ``forward(self, *arrays, **options) -> ndarray`` and
    ``backward(self, grad) -> gradient or tuple of gradients``: one per positional
    input, None where no gradient is needed (``self.needs_input_grad`` says which
    are). Whatever backward needs is saved as an attribute of ``self`` in forward.

    The gradient rule, which the engine checks for every input that needs a
    gradient: backward returns an array either

    1. of the input's own shape, or
    2. of the shape the input was broadcast to in forward, which the engine then
       sums back to the input's shape (``unbroadcast``), so no op need do it.
       That shape is the output's (``grad.shape``: elementwise ops such as
       ``a * b``), provided the input's shape broadcasts to it; an op that
       broadcasts its inputs to other shapes lists them, one per input, in
       ``self.broadcast_shapes`` during forward (``MatMulFn``: the batch
       dimensions only).

    Any other shape is a bug in backward and raises ``RuntimeError`` naming the
    Function, the input and both shapes, instead of a bare NumPy reshape error or
    a silently summed, wrong gradient (e.g. a (4, 4) gradient for an input of
    shape (4, 1) whose op had a (4, 1) output).

    torch's form works too: ``@staticmethod forward(ctx, *tensors)`` and
    ``@staticmethod backward(ctx, grad)`` on tensors, with ``ctx.save_for_backward``
    and ``ctx.saved_tensors``. ``ctx`` is the node itself, and forward runs without
    recording a graph, as in torch.
    """

    needs_input_grad = ()
    torch_style = False  # set per subclass: forward written in torch's form
    # The input tensors (None where no gradient is needed), set by apply when it records
    # the node; None here, the class's value, also once backward has released the node.
    inputs = None
    saves_inputs = True  # False for ops whose backward never reads their inputs
    saved = ()  # (tensor, version) of each tensor input, when saves_inputs
    broadcast_shapes = None  # rule 2 above: None means the output's shape for every input

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    # torch's ctx API, for Functions written in torch's form
    def save_for_backward(self, *tensors):
        self._saved_tensors = tensors

    @property
    def saved_tensors(self):
        return getattr(self, "_saved_tensors", ())

    def __init_subclass__(cls, **kwargs):
        # Decided once per class, not in apply, which runs for every op.
        super().__init_subclass__(**kwargs)
        cls.torch_style = isinstance(inspect.getattr_static(cls, "forward"), staticmethod)

    def _backward(self, grad):
        """``backward`` in either form; the engine calls this."""
        if not self.torch_style:
            return self.backward(grad)
        if not isinstance(inspect.getattr_static(type(self), "backward"), staticmethod):
            raise TypeError(f"{type(self).__name__}: forward is a @staticmethod (torch's form), "
                            "so backward must be one too: @staticmethod def backward(ctx, grad)")
        with no_grad():
            grads = type(self).backward(self, Tensor(grad))
        if not isinstance(grads, tuple):
            grads = (grads,)
        return tuple(g.data if isinstance(g, Tensor) else g for g in grads)

    @classmethod
    def apply(cls, *args, **kwargs):
        fn = cls()
        # One loop over the arguments (this runs for every op; a loop with appends is
        # faster than comprehensions here): the arrays that forward computes on, which
        # inputs need a gradient, those inputs, and every tensor input with its
        # version now, which backward checks (none may be changed in place since).
        arrays, needs, inputs, saved = [], [], [], []
        for a in args:
            if isinstance(a, Tensor):
                arrays.append(a.data)
                needs.append(a.requires_grad)
                inputs.append(a if a.requires_grad else None)
                saved.append((a, a._versions[0]))
            else:
                arrays.append(a)
                needs.append(False)
                inputs.append(None)
        fn.needs_input_grad = needs = tuple(needs)
        try:
            if cls.torch_style:  # forward(ctx, *tensors) on tensors, outside the graph
                with no_grad():
                    out = _as_array(cls.forward(fn, *args, **kwargs))
            else:
                out = fn.forward(*arrays, **kwargs)
        except ValueError as error:
            shapes = " and ".join(str(np.shape(a)) for a in arrays if isinstance(a, np.ndarray))
            raise ValueError(f"{cls.__name__}: inputs of shapes {shapes}: {error}") from None
        if _anomaly_mode:
            _check_finite(out, f"the forward pass of {cls.__name__}")
        result = Tensor(out)
        if _grad_enabled and True in needs:
            fn.inputs = tuple(inputs)
            if cls.saves_inputs:
                fn.saved = saved
            result.requires_grad = True
            result.grad_fn = fn
        return result

    def _modified_error(self, t, version):
        return RuntimeError(
            f"a tensor of shape {t.shape} used by {type(self).__name__} was modified in "
            f"place after it was used (version {version} -> {t._version}); its gradient "
            "would be wrong. Use an out-of-place operation (x = x + 1, not x += 1).")


def _check_finite(array, where):
    if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating) \
            and not np.isfinite(array).all():
        kind = "NaN" if np.isnan(array).any() else "inf"
        raise FloatingPointError(f"detect_anomaly: {kind} produced by {where}")


def unbroadcast(grad, shape):
    """Sum ``grad`` back to ``shape``: the one place where broadcasting is undone."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _broadcasts_to(shape, target):
    """Whether NumPy broadcasting stretches ``shape`` to exactly ``target``."""
    return len(shape) <= len(target) and all(
        n == m or n == 1 for n, m in zip(shape[::-1], target[::-1]))


def _to_input_shape(node, i, g, shape, out_shape):
    """Input ``i``'s gradient ``g`` summed back to its ``shape``, after checking it
    against the gradient rule (see ``Function``)."""
    target = out_shape if node.broadcast_shapes is None else tuple(node.broadcast_shapes[i])
    fits = _broadcasts_to(shape, target)
    if g.shape == target and fits:
        return unbroadcast(g, shape)
    expected = f"{shape}" + (f" or {target}, the shape it was broadcast to in forward"
                             if fits and target != shape else "")
    raise RuntimeError(f"{type(node).__name__}.backward returned a gradient of shape {g.shape} "
                       f"for input {i} of shape {shape}; expected {expected}")


_SECOND_BACKWARD = (
    "trying to backward through the graph a second time (through {name}): the saved "
    "arrays were freed after the first backward; pass retain_graph=True to the first "
    "backward() if you need to call it twice")


def run_backward(root, gradient, retain_graph=False):
    """Propagate ``gradient`` from ``root`` to the leaves.

    First count, for every node, how many nodes consume its output; then process a
    node only when all its consumers have handed in their gradient. Both passes use
    an explicit stack, so a chain of 100,000 ops does not hit the recursion limit.
    This loop runs once per node on every backward: it does the bookkeeping inline
    (no helper calls unless something needs fixing), which is most of its cost.
    """
    if root.grad_fn is None:  # a leaf
        _accumulate(root, gradient)
        return
    consumers = {root.grad_fn: 0}
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node.inputs is None:  # released by an earlier backward
            raise RuntimeError(_SECOND_BACKWARD.format(name=type(node).__name__))
        for t in node.inputs:
            if t is not None and t.grad_fn is not None:
                parent = t.grad_fn
                count = consumers.get(parent)
                if count is None:
                    consumers[parent] = 1
                    stack.append(parent)
                else:
                    consumers[parent] = count + 1

    pending = {root.grad_fn: gradient}
    ready = [root.grad_fn]
    while ready:
        node = ready.pop()
        inputs = node.inputs
        grad = pending.pop(node, None)
        grads = None  # no gradient reached this node: its inputs get none either
        if grad is not None:
            for t, version in node.saved:  # was an input changed in place since forward?
                if t._versions[0] != version:
                    raise node._modified_error(t, version)
            grads = node.backward(grad) if not node.torch_style else node._backward(grad)
            if type(grads) is not tuple:
                grads = (grads,)
            if len(grads) != len(inputs):
                raise RuntimeError(f"{type(node).__name__}.backward returned {len(grads)} "
                                   f"gradients for {len(inputs)} inputs")
        for i, t in enumerate(inputs):
            if t is None:
                continue
            g = None if grads is None else grads[i]
            if g is not None and not (type(g) is np.ndarray and g.shape == t.data.shape
                                      and g.dtype == t.data.dtype and not _anomaly_mode):
                g = _fitted(node, i, g, t.data, grad)  # only where something needs fixing
            parent = t.grad_fn
            if parent is None:  # a leaf
                if g is not None:
                    # The leaf may keep g itself, without a copy, when nothing else can reach
                    # it: its only references are then the tuple grads, the name g and
                    # getrefcount's argument. An array the node saved, one handed to two
                    # inputs, the incoming gradient passed on (Add, Clone) or one that the
                    # caller or a torch-style backward still holds has more; a view shares
                    # another array's memory.
                    owned = (t.grad is None and sys.getrefcount(g) <= 3 and g.base is None
                             and g.flags.writeable)
                    _accumulate(t, g, owned)
                continue
            if g is not None:
                previous = pending.get(parent)
                pending[parent] = g if previous is None else previous + g
            count = consumers[parent] - 1
            consumers[parent] = count
            if count == 0:
                ready.append(parent)
        if not retain_graph:
            # Drop the saved arrays (and the inputs, so that a second backward through
            # this node is caught above).
            vars(node).clear()


def _fitted(node, i, g, data, incoming):
    """Input ``i``'s gradient ``g`` as an array of the input's shape and dtype."""
    if not isinstance(g, np.ndarray):  # a NumPy or Python scalar
        g = np.asarray(g)
    if g.shape != data.shape:
        g = _to_input_shape(node, i, g, data.shape, incoming.shape)
    if g.dtype != data.dtype:
        g = g.astype(data.dtype)
    if _anomaly_mode:
        _check_finite(g, f"the backward pass of {type(node).__name__}")
    return g


def _accumulate(leaf, grad, owned=False):
    if leaf.grad is None:
        # The leaf keeps an array nothing else holds (``owned``, e.g. a Linear
        # layer's weight gradient) as it is; any other is copied, so that changing
        # leaf.grad later changes nothing else (the same array may reach several
        # leaves, e.g. through Add).
        leaf.grad = grad if owned else np.array(grad, dtype=leaf.data.dtype, copy=True)
    else:
        leaf.grad = leaf.grad + grad


# ---------------------------------------------------------------- factories
def tensor(data, requires_grad=False, dtype=None):
    """Like ``torch.tensor``: copies ``data``; floats default to float32."""
    array = np.array(_as_array(data, dtype), copy=True)
    return Tensor(array, requires_grad=requires_grad)


def _shape(size):
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size


def zeros(*size, dtype=DEFAULT_DTYPE, requires_grad=False):
    return Tensor(np.zeros(_shape(size), dtype=dtype), requires_grad=requires_grad)


def ones(*size, dtype=DEFAULT_DTYPE, requires_grad=False):
    return Tensor(np.ones(_shape(size), dtype=dtype), requires_grad=requires_grad)


def full(size, value, dtype=DEFAULT_DTYPE, requires_grad=False):
    return Tensor(np.full(size, value, dtype=dtype), requires_grad=requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return Tensor(np.zeros_like(_as_array(t), dtype=dtype), requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return Tensor(np.ones_like(_as_array(t), dtype=dtype), requires_grad=requires_grad)


def randn(*size, dtype=DEFAULT_DTYPE, requires_grad=False):
    return Tensor(_rng.standard_normal(_shape(size)).astype(dtype), requires_grad=requires_grad)


def rand(*size, dtype=DEFAULT_DTYPE, requires_grad=False):
    return Tensor(_rng.random(_shape(size)).astype(dtype), requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    if dtype is None:
        is_int = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = np.int64 if is_int else DEFAULT_DTYPE
    return Tensor(np.arange(start, end, step, dtype=dtype), requires_grad=requires_grad)
