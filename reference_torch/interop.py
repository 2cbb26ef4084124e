"""Move weights between a PyTorch model and its minidl twin.

    import minidl as md
    from reference_torch import interop, twins

    md_net = md.models.SmallCNN((1, 28, 28), batch_norm=True)
    torch_net = interop.from_minidl(md_net)        # builds the torch twin, copies weights
    ...train torch_net on a GPU...
    interop.to_minidl(torch_net, md_net)           # and back into the minidl model

Both directions copy every parameter *and* buffer (BatchNorm running mean and
variance, ``num_batches_tracked``) by state-dict key, after checking that the two
models have the same keys with the same shapes; a mismatch raises a ValueError that
lists the missing, unexpected and mis-shaped keys. The target takes the
source's train/eval mode; a target that is built for you takes the source's floating
dtype (a float64 torch model gives a float64 minidl model), one you pass keeps its own.

When the other model is not given it is built layer by layer from the one you have:
``Sequential``, ``Linear``, ``Conv2d``, ``ConvTranspose2d``, ``BatchNorm1d/2d``, the pooling layers,
activations, ``Flatten``, ``Dropout``, ``Identity``, and the course models
``minidl.models.MLP``/``SmallCNN`` and their twins in ``reference_torch.twins``. For
any other model, build its twin yourself and pass it.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from . import twins

__all__ = ["to_minidl", "from_minidl", "minidl_twin", "torch_twin", "check_compatible"]


# ----------------------------------------------------------------- state dicts
def _md():
    import minidl  # imported late: reference_torch is usable without touching minidl
    import minidl.models  # noqa: F401  (md.models, whether or not minidl exports it)

    return minidl


def _torch_state(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _md_state(module) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(v, "data", v)) for k, v in module.state_dict().items()}


def check_compatible(source: dict, target: dict, source_name: str, target_name: str) -> None:
    """Raise a ValueError unless the two state dicts have the same keys and shapes."""
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    mis_shaped = [f"{k}: {source_name} {tuple(np.shape(source[k]))} vs {target_name} "
                  f"{tuple(np.shape(target[k]))}"
                  for k in target if k in source and np.shape(source[k]) != np.shape(target[k])]
    if missing or unexpected or mis_shaped:
        def show(items):
            return (", ".join(items[:10]) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")) or "none"
        raise ValueError(
            f"the {source_name} model and the {target_name} model are not twins:\n"
            f"  keys only in the {target_name} model: {show(missing)}\n"
            f"  keys only in the {source_name} model: {show(unexpected)}\n"
            f"  shape mismatches: {show(mis_shaped)}\n"
            "Build both from the same class with the same arguments (module names and "
            "layouts must agree), or leave the second model out to have it built for you.")


# ------------------------------------------------------------ layer translation
# Layers whose constructor arguments are attributes of the same name in both engines:
# the arguments always passed, and the optional ones with their default (passed when
# set otherwise; an error when the other engine's class does not take them).
_SAME_ARGS = {
    "Flatten": ("start_dim", "end_dim"),
    "Dropout": ("p",),
    "ReLU": (), "Tanh": (), "Sigmoid": (), "Identity": (),
    "ELU": ("alpha",), "LeakyReLU": ("negative_slope",), "GELU": ("approximate",),
    "Softmax": ("dim",), "LogSoftmax": ("dim",),
    "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "MaxPool2d": ("kernel_size", "stride", "padding"),
    "AvgPool2d": ("kernel_size", "stride", "padding"),
    "AdaptiveAvgPool2d": ("output_size",),
    "Linear": ("in_features", "out_features"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding"),
    "ConvTranspose2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                        "output_padding"),
}
_OPTIONAL_ARGS = {
    "MaxPool2d": {"dilation": 1, "ceil_mode": False, "return_indices": False},
    "AvgPool2d": {"ceil_mode": False, "count_include_pad": True, "divisor_override": None},
    "Conv2d": {"dilation": 1, "groups": 1, "padding_mode": "zeros"},
    "ConvTranspose2d": {"dilation": 1, "groups": 1, "padding_mode": "zeros"},
}


def _plain(value):
    """torch keeps conv sizes as tuples; minidl may keep ints or tuples: both accept either."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) if isinstance(v, (int, np.integer)) else v for v in value)
    return value


def _is_default(value, default):
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    return value == default


def _translate(module, namespace, models, where):
    """The twin of ``module`` built from classes in ``namespace`` (torch.nn or minidl.nn)."""
    kind = type(module).__name__
    children = list(module.named_children())
    if kind == "Sequential":
        return namespace.Sequential(*[_translate(m, namespace, models, f"{where}.{n}")
                                      for n, m in children])
    build = next((b for cls, b in models if isinstance(module, cls)), None)
    if build is not None:  # a course model (or a subclass): its body and head, translated
        parts = {n: _translate(m, namespace, models, f"{where}.{n}") for n, m in children}
        if set(parts) != {"body", "head"}:
            raise ValueError(f"cannot build a twin of {where} ({kind}): expected the children "
                             f"body and head, found {', '.join(parts) or 'none'}; build it yourself and pass it")
        return build(parts["body"], parts["head"])
    if kind not in _SAME_ARGS or not hasattr(namespace, kind):
        what = where if where == kind else f"{where} ({kind})"
        raise ValueError(
            f"cannot build a twin of {what}: only Sequential, the course models and "
            f"the layers {', '.join(sorted(_SAME_ARGS))} are translated; build the twin "
            "yourself and pass it as the second argument")
    cls = getattr(namespace, kind)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {a: _plain(getattr(module, a)) for a in _SAME_ARGS[kind]
              if a in accepted and hasattr(module, a)}
    if kind in ("Linear", "Conv2d", "ConvTranspose2d") and "bias" in accepted:
        kwargs["bias"] = getattr(module, "bias", None) is not None
    for name, default in _OPTIONAL_ARGS.get(kind, {}).items():
        value = _plain(getattr(module, name, default))
        if _is_default(value, default):
            continue
        if name not in accepted:
            raise ValueError(f"cannot build a twin of {where}: {kind} with {name}={value!r} "
                             f"has no counterpart in {namespace.__name__}")
        kwargs[name] = value
    return cls(**kwargs)


def _md_model_from_parts(cls):
    def build(body, head):
        md = _md()
        model = cls.__new__(cls)
        md.nn.Module.__init__(model)
        model.body, model.head = body, head
        return model
    return build


def torch_twin(md_module) -> nn.Module:
    """A freshly built torch model with the layout of the minidl ``md_module`` (weights not copied)."""
    md = _md()
    models = [(getattr(md.models, name), twin.from_parts) for name, twin in twins.TWINS.items()]
    return _translate(md_module, nn, models, type(md_module).__name__)


def minidl_twin(torch_module: nn.Module):
    """A freshly built minidl model with the layout of ``torch_module`` (weights not copied)."""
    md = _md()
    models = [(twin, _md_model_from_parts(getattr(md.models, name))) for name, twin in twins.TWINS.items()]
    return _translate(torch_module, md.nn, models, type(torch_module).__name__)


# ---------------------------------------------------------------------- copies
def _float_dtype(state: dict[str, np.ndarray]):
    dtypes = {v.dtype for v in state.values() if np.issubdtype(v.dtype, np.floating)}
    return dtypes.pop() if len(dtypes) == 1 else None


def to_minidl(torch_module: nn.Module, md_module=None):
    """Copy the parameters and buffers of ``torch_module`` into ``md_module`` and return
    the minidl model, switched to the torch model's train/eval mode.

    When ``md_module`` is None its twin is built, with the torch model's floating dtype;
    an existing minidl model keeps its dtype (as torch's ``load_state_dict`` does)."""
    if isinstance(torch_module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        torch_module = torch_module.module
    source = _torch_state(torch_module)
    if md_module is None:
        md_module = minidl_twin(torch_module)
        dtype = _float_dtype(source)
        if dtype is not None:
            md_module.to(dtype)
    check_compatible(source, _md_state(md_module), "torch", "minidl")
    md_module.load_state_dict(source)
    md_module.train(torch_module.training)
    return md_module


def from_minidl(md_module, torch_module: nn.Module | None = None) -> nn.Module:
    """Copy the parameters and buffers of ``md_module`` into ``torch_module`` and return
    the torch model, switched to the minidl model's train/eval mode.

    When ``torch_module`` is None its twin is built on the CPU with the minidl model's
    floating dtype; an existing torch model keeps its dtype and device."""
    source = _md_state(md_module)
    if torch_module is None:
        torch_module = torch_twin(md_module)
        dtype = _float_dtype(source)
        if dtype is not None:
            torch_module = torch_module.to(torch.from_numpy(np.zeros(0, dtype)).dtype)
    check_compatible(source, _torch_state(torch_module), "minidl", "torch")
    own = torch_module.state_dict()
    with torch.no_grad():
        for key, value in source.items():
            target = own[key]
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            if target.is_floating_point():
                tensor = tensor.to(target.dtype)
            target.copy_(tensor.reshape(target.shape))
    torch_module.train(bool(md_module.training))
    return torch_module
