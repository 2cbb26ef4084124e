"""``Module`` and ``Parameter``: the bookkeeping every layer shares.

A module owns three kinds of state, each kept in its own ordered dict so that the
names come out in the order they were assigned (torch's order, so state dicts of
twin models line up key for key):

* ``_parameters``: ``Parameter`` tensors that the optimiser updates;
* ``_buffers``: plain ndarrays that are state but not trained (BatchNorm's running
  statistics), saved in the ``state_dict`` too;
* ``_modules``: child modules, whose names become key prefixes ("0.weight",
  "fc.bias", "bn.running_mean").

Assigning an attribute sorts the value into the right dict (``__setattr__``), so a
layer is written just like in torch::

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc2(self.fc1(x).relu())
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from ..autograd import DEFAULT_DTYPE, Tensor, _as_array


class Parameter(Tensor):
    """A tensor that a ``Module`` registers as trainable: requires_grad is on.

    Python numbers and lists become float32 (torch's default); an ndarray keeps its
    dtype and its memory (no copy, as ``torch.nn.Parameter``).
    """

    def __init__(self, data, requires_grad=True):
        data = _as_array(data)
        if data.dtype.kind in "iub" and requires_grad:
            data = data.astype(DEFAULT_DTYPE)
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _to_numpy(value, key):
    """An ndarray from whatever a state dict may hold: ndarrays, minidl tensors,
    torch tensors (anything with ``.numpy()``), numbers and lists."""
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy"):
        if hasattr(value, "detach"):  # a torch tensor: leave its graph, come to the CPU
            value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        return np.asarray(value.numpy())
    try:
        return np.asarray(value)
    except Exception as error:  # pragma: no cover - message only
        raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}, which cannot be "
                        "turned into an array; pass ndarrays") from error


class _HookHandle:
    """What ``register_forward_hook`` returns; also a context manager."""

    _next_id = 0

    def __init__(self, hooks, hook):
        self._hooks, self.id = hooks, _HookHandle._next_id
        _HookHandle._next_id += 1
        hooks[self.id] = hook

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Module:
    """Base class of every layer and model. Subclasses call ``super().__init__()``
    first, assign their parameters and sub-modules as attributes, and define
    ``forward``; calling the module calls ``forward``."""

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define "
                                  "forward(self, x) in the subclass")

    def __call__(self, *args, **kwargs):
        output = self.forward(*args, **kwargs)
        hooks = self.__dict__.get("_forward_hooks")
        if not hooks:  # the usual case, on every call of every layer: nothing to do
            return output
        for hook in tuple(hooks.values()):  # a copy: a hook may remove itself
            result = hook(self, args, output)
            if result is not None:  # as in torch, a hook may replace the output
                output = result
        return output

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward pass of this
        module (torch's API): to record activations, or to return a replacement
        output. Returns a handle; ``handle.remove()`` takes the hook off again."""
        return _HookHandle(self.__dict__["_forward_hooks"], hook)

    # ------------------------------------------------------------ registration
    def _check_initialised(self, name):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() ran: call super().__init__() "
                f"first in {type(self).__name__}.__init__")

    def __setattr__(self, name, value):
        """Sort the value into _parameters, _modules or _buffers, or set it plainly."""
        if isinstance(value, (Parameter, Module)):
            self._check_initialised(name)
            self._forget(name)
            store = self._parameters if isinstance(value, Parameter) else self._modules
            store[name] = value
            return
        params = self.__dict__.get("_parameters", {})
        modules = self.__dict__.get("_modules", {})
        if name in params or name in modules:
            kind = "parameter" if name in params else "sub-module"
            if value is not None:
                advice = "wrap it as nn.Parameter(...)" if name in params else "assign a Module"
                raise TypeError(f"cannot assign a {type(value).__name__} to {kind} {name!r} of "
                                f"{type(self).__name__}: {advice} or None")
            (params if name in params else modules)[name] = None
        elif name in self.__dict__.get("_buffers", {}):
            self._buffers[name] = None if value is None else _as_array(value)
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        """Remove ``name`` from wherever it was, so that it lives in one place only."""
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        # Only called when normal lookup fails, i.e. for registered state.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent one, like a bias=False)."""
        self._check_initialised(name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected an nn.Parameter or None, "
                            f"got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name, array, persistent=True):
        """Register an ndarray that is state but not trained, such as a running mean.
        Persistent buffers go into the state_dict."""
        self._check_initialised(name)
        if "." in name or not name:
            raise KeyError(f"buffer name {name!r} must be non-empty and contain no '.'")
        self._forget(name)
        self._buffers[name] = None if array is None else _as_array(array)
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        self._check_initialised(name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): {type(module).__name__} is not a Module")
        self._forget(name)
        self._modules[name] = module

    # -------------------------------------------------------------- traversal
    def named_modules(self, prefix="", memo=None):
        """(name, module) for this module and every descendant, each module once."""
        memo = set() if memo is None else memo
        stack = [(prefix, self)]
        while stack:  # depth first, children in assignment order
            name, module = stack.pop()
            if id(module) in memo:
                continue
            memo.add(id(module))
            yield name, module
            children = [(f"{name}.{k}" if name else k, m)
                        for k, m in module._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

    def _named_members(self, store, prefix, recurse, deduplicate=True):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, value in getattr(module, store).items():
                if value is None or (deduplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{module_name}.{name}" if module_name else name), value

    def named_parameters(self, prefix="", recurse=True):
        """(name, Parameter) pairs with torch's dotted names; a shared parameter once."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named_members("_buffers", prefix, recurse, deduplicate=False)

    def buffers(self, recurse=True):
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant, then on this module (as torch)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------- state
    def _state_items(self):
        """(key, array) for every parameter and persistent buffer, in torch's order."""
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, param in module._parameters.items():
                if param is not None:
                    yield prefix + name, param.data
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent:
                    yield prefix + name, buffer

    def _state_slots(self):
        """(key, owner, name) like _state_items, for writing into."""
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, param in module._parameters.items():
                if param is not None:
                    yield prefix + name, module, name
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent:
                    yield prefix + name, module, name

    def state_dict(self):
        """An ordered dict name -> ndarray copy of every parameter and persistent buffer.
        The names are torch's, so ``torch_model.load_state_dict({k: torch.from_numpy(v)
        for k, v in md_model.state_dict().items()})`` works for twin models."""
        return OrderedDict((key, array.copy()) for key, array in self._state_items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters and buffers, in place and keeping their dtype.

        Values may be ndarrays, minidl tensors or torch tensors. With ``strict`` (the
        default) missing and unexpected keys are errors; a shape mismatch always is.
        Nothing is changed unless everything fits. Returns (missing_keys, unexpected_keys).
        """
        slots = {key: (module, name) for key, module, name in self._state_slots()}
        given = {key: _to_numpy(value, key) for key, value in state_dict.items()}
        missing = [key for key in slots if key not in given]
        unexpected = [key for key in given if key not in slots]
        errors = []
        if strict and unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(map(repr, unexpected)))
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(map(repr, missing)))
        for key, (module, name) in slots.items():
            if key not in given:
                continue
            target = _current(module, name)
            if given[key].shape != target.shape:
                errors.append(f"size mismatch for {key}: copying an array of shape "
                              f"{given[key].shape} from the state_dict, the shape in the current "
                              f"model is {target.shape}")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors)
                               + "\n(state_dict().keys() lists the names this model expects)")
        for key, (module, name) in slots.items():
            if key in given:
                target = _current(module, name)
                target[...] = given[key]  # in place: optimisers keep their references
                param = module._parameters.get(name)
                if param is not None:
                    param._bump()  # a graph recorded before the load will notice
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ modes, grads
    def train(self, mode=True):
        """Training mode (dropout active, batch statistics) for this module and all below."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode: dropout off, BatchNorm uses its running statistics."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Forget the gradients of every parameter (None, as torch does by default)."""
        for param in self.parameters():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad = np.zeros_like(param.data)

    def requires_grad_(self, requires_grad=True):
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def to(self, dtype):
        """Cast every floating parameter, gradient and buffer to ``dtype`` (e.g.
        ``np.float64`` for gradient checks). Parameters keep their identity, so an
        optimiser created before still updates them. Integer buffers are kept."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Module.to expects a floating dtype such as np.float64, got {dtype}")
        for module in self.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.data = param.data.astype(dtype)
                    if param.grad is not None:
                        param.grad = param.grad.astype(dtype)
                    param._bump()
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.dtype.kind == "f":
                    module._buffers[name] = buffer.astype(dtype)
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # -------------------------------------------------------------------- repr
    def extra_repr(self):
        """One line of settings shown inside the parentheses, e.g. 'in_features=4, ...'."""
        return ""

    def __repr__(self):
        lines = []
        for name, module in self._modules.items():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = f"{type(self).__name__}({extra}" if extra else f"{type(self).__name__}("
        return head + "\n" + "\n".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))


def _current(module, name):
    """The ndarray behind a parameter or buffer."""
    param = module._parameters.get(name)
    return param.data if param is not None else module._buffers[name]


# ---------------------------------------------------------------- containers
class _Container(Module):
    """What Sequential and ModuleList share: children in order, numbered "0", "1", ..."""

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self


class Sequential(_Container):
    """Modules applied one after the other; children are named "0", "1", ...
    (or by the keys of an OrderedDict), as in torch."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            for index, module in enumerate(modules):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: argument {index} is a {type(module).__name__}, "
                                    "not a Module (did you pass a function? wrap it in a Module)")
                self.add_module(str(index), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def __getitem__(self, index):
        modules = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(modules[index]))
        return modules[_check_index(index, len(modules), "Sequential")][1]


class ModuleList(_Container):
    """A list of modules whose parameters are registered (a plain Python list would
    hide them from ``parameters()`` and the optimiser)."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def __getitem__(self, index):
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(modules[index])
        return modules[_check_index(index, len(modules), "ModuleList")]

    def __setitem__(self, index, module):
        index = _check_index(index, len(self), "ModuleList")
        self.add_module(str(index), module)

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def insert(self, index, module):
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("a ModuleList has no forward(); loop over it in your "
                                  "module's forward")


def _check_index(index, length, what):
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for a {what} of length {length}")
    return index % length
