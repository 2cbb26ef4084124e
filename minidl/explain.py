"""Gradient-based attribution: which pixels does a classifier's decision rest on?

The minidl counterparts of ``reference_torch.explain.attribution``, with the same
call shape and the same numbers (the tests compare them on twin models):

    result = IntegratedGradients(model, n_steps=50).attribute(x, target=None)
    result.relevance   # (B, H, W): one number per pixel, channels reduced
    result.logits      # (B, K): the model's output for x
    result.target      # (B,): the class explained, the predicted one unless given
    result.raw         # the method's own output before it became a per-pixel map
    result.delta       # IntegratedGradients only: the completeness gap per image

All fields are NumPy arrays. ``x`` is a float32/float64 batch (B, C, H, W), as an
ndarray or a minidl Tensor; ``model`` maps it to logits (B, K).

Every method needs d score / d input (or / d a layer's activation), where the score
is the target class's *logit*. minidl has no ``autograd.grad``; instead the input is
made a leaf that requires grad and ``logits.backward(one_hot)`` is called: seeding
the backward pass with a one-hot row per image is the gradient of
sum_b logits[b, target[b]], and since images do not interact in eval mode, row b of
the input's ``.grad`` is image b's own gradient.

While a method runs, the model is in eval mode (no dropout, batch norm uses its
running statistics) and its parameters are frozen (``requires_grad=False``), so
autograd neither computes nor stores anything for the weights and no ``.grad`` is
left on them. Both are restored afterwards. Every method evaluates the model in
pieces of at most ``batch_size`` inputs, whatever the number of images, path steps
or noisy copies: there is no Python loop over images.

What does not depend on the engine (the integration rules, the table of channel
reductions, finding a layer, the eval-mode guard) is written once, in
``minidl._explain_common``, and the torch version calls the same code.

How channels become one number per pixel (CHANNEL_REDUCTIONS, shared with torch):
    Saliency            max over channels of |gradient|, or "l2" / "sum"
    InputXGradient      sum over channels of x * gradient
    IntegratedGradients sum over channels, so relevance.sum((1, 2)) is the whole
                        attribution and completeness can be checked on it
    GradCAM             a weighted sum over the layer's channels, then upsampled
    LayerSaliency       the layer gradient reduced like Saliency, then upsampled
    SmoothGrad          whatever its base method does, averaged over noisy copies
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from . import _explain_common as common
from ._explain_common import CHANNEL_REDUCTIONS, RULES, check_batch_size, integration_points
from .autograd import Tensor, enable_grad, no_grad
from .nn import Conv2d, Module

__all__ = ["Attribution", "AttributionMethod", "Saliency", "InputXGradient", "IntegratedGradients",
           "GradCAM", "LayerSaliency", "SmoothGrad", "METHODS", "RULES", "CHANNEL_REDUCTIONS",
           "integration_points", "upsample_bilinear"]


@dataclass
class Attribution:
    """What every ``attribute`` call returns (NumPy arrays).

    relevance  (B, H, W) per-pixel relevance, same height and width as the input
    logits     (B, K) model output for the unchanged input
    target     (B,) int64, the class explained for each image
    raw        the method's native output: gradients or attributions (B, C, H, W),
               Grad-CAM's map at the layer's resolution before ReLU (B, h, w),
               a layer's gradient (B, C, h, w) for LayerSaliency
    delta      IntegratedGradients only: completeness gap per image,
               sum of attributions - (f(x) - f(baseline)) for the target's logit
    """
    relevance: np.ndarray
    logits: np.ndarray
    target: np.ndarray
    raw: np.ndarray
    delta: np.ndarray | None = None


# --------------------------------------------------------------------------- shared helpers
def inspecting(model: Module):
    """Eval mode and frozen parameters while ``model`` is explained; both restored after."""
    return common.inspecting(model, enable_grad)


def check_images(x, who: str) -> np.ndarray:
    """The batch (B, C, H, W) as a float ndarray; a minidl Tensor is unwrapped."""
    if isinstance(x, Tensor):
        x = x.data
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        what = f"{x.dtype} of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{who} expects a float image batch (B, C, H, W), got {what}; "
                         "add a batch dimension with x[None] and convert integers with x / 255")
    return x


def resolve_target(target, logits: np.ndarray) -> np.ndarray:
    """Class index per image, (B,) int64: the predicted class where ``target`` is None."""
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    values = np.asarray(target.data if isinstance(target, Tensor) else target).reshape(-1)
    if values.dtype.kind not in "iu" and not (values.dtype.kind == "f" and np.all(values == np.round(values))):
        raise ValueError(f"target must be class indices (integers), got {values.tolist()}")
    t = values.astype(np.int64)
    if t.size == 1:
        t = np.full(batch, t[0])
    if t.shape != (batch,):
        raise ValueError(f"target must be one class index or one per image ({batch}), got {t.size} values")
    if t.min() < 0 or t.max() >= classes:
        raise ValueError(f"target {t.tolist()} is out of range for a model with {classes} outputs")
    return t


def chunks(total: int, batch_size: int) -> Iterator[np.ndarray]:
    """Index arrays 0..total-1 in pieces of ``batch_size``: the only loop the methods need.

    Methods that evaluate many variants of every image (steps of a path, noisy copies)
    number the (image, variant) pairs 0..total-1 and walk through them in pieces, so
    memory is bounded by ``batch_size`` and not by the number of images.
    """
    for start in range(0, total, batch_size):
        yield np.arange(start, min(start + batch_size, total))


def forward_in_chunks(model: Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of a large batch, ``batch_size`` images per forward pass, without a graph."""
    with no_grad():
        logits = np.concatenate([model(Tensor(x[i:i + batch_size])).data
                                 for i in range(0, len(x), batch_size)])
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits (B, K), it returned shape {logits.shape}")
    return logits


def one_hot(target: np.ndarray, logits: Tensor) -> np.ndarray:
    """The seed for ``logits.backward``: 1 at (b, target[b]), 0 elsewhere."""
    seed = np.zeros(logits.shape, dtype=logits.dtype)
    seed[np.arange(len(target)), target] = 1
    return seed


def input_gradients(model: Module, x: np.ndarray, target: np.ndarray, batch_size: int) -> np.ndarray:
    """d logit[target] / d x for every image, ``batch_size`` images per backward pass."""
    grads = np.empty_like(x)
    for idx in chunks(len(x), batch_size):
        inputs = Tensor(x[idx], requires_grad=True)  # a fresh leaf: its .grad starts empty
        logits = model(inputs)
        logits.backward(one_hot(target[idx], logits))
        grads[idx] = inputs.grad
    return grads


def channel_reduction(name: str):
    """The function (B, C, H, W) -> (B, H, W) called ``name`` in CHANNEL_REDUCTIONS."""
    return common.channel_reduction(name, np)


class AttributionMethod:
    """Common part: input checks, eval mode, logits and default targets.

    A subclass implements ``_explain(x, target) -> (relevance, raw)`` for a batch of
    ndarrays; ``attribute`` wraps it. Every loop whose length depends on the input
    runs over pieces of ``self.batch_size`` model inputs.
    """

    def __init__(self, model: Module, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = check_batch_size(batch_size)

    def attribute(self, x, target=None) -> Attribution:
        x = check_images(x, type(self).__name__)
        with inspecting(self.model):
            logits = forward_in_chunks(self.model, x, self.batch_size)
            target = resolve_target(target, logits)
            relevance, raw = self._explain(x, target)
        return Attribution(relevance, logits, target, raw)

    def _explain(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


# --------------------------------------------------------------------------- gradients
class Saliency(AttributionMethod):
    """Gradient of the target logit w.r.t. the input (Simonyan et al. 2014):

        relevance[b, i, j] = max_c |d logit_target / d x[b, c, i, j]|

    ``channel_reduce="l2"`` takes the gradient's length per pixel instead, ``"sum"``
    its signed sum. ``raw`` is the signed gradient (B, C, H, W).
    """

    def __init__(self, model: Module, channel_reduce: str = "max", batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.reduce = channel_reduction(channel_reduce)

    def _explain(self, x, target):
        grads = input_gradients(self.model, x, target, self.batch_size)
        return self.reduce(grads), grads


class InputXGradient(AttributionMethod):
    """x * gradient, summed over channels:

        relevance[b, i, j] = sum_c x[b, c, i, j] * d logit_target / d x[b, c, i, j]

    On a linear model f(x) = w.x + b this is exactly each pixel's contribution
    w_i x_i to the logit."""

    def _explain(self, x, target):
        attributions = x * input_gradients(self.model, x, target, self.batch_size)
        return attributions.sum(1), attributions


# --------------------------------------------------------------------------- integrated gradients
class IntegratedGradients(AttributionMethod):
    """Integrated gradients (Sundararajan et al. 2017), summed over channels:

        attribution = (x - baseline) * integral_0^1 grad f(baseline + a (x - baseline)) da
                   ~= (x - baseline) * sum_k weight_k * grad f(baseline + alpha_k (x - baseline))

    with the ``n_steps`` points and weights of ``rule`` (see ``RULES``; the trapezoid
    rule by default). Completeness: the attributions of an image sum to about
    f(x) - f(baseline) for the target's logit; ``result.delta`` is the gap, which
    shrinks as n_steps grows. On a linear model the gradient is constant along the
    path, so every rule is exact.

    ``baseline``: a number (0, black, by default) or an array broadcastable to the
    input, e.g. (C, 1, 1) per-channel means or a (B, C, H, W) blurred copy.
    All B * n_steps path points run in pieces of ``batch_size``.
    """

    def __init__(self, model: Module, n_steps: int = 50, baseline=0.0, rule: str = "riemann_trapezoid",
                 batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.alphas, self.weights = integration_points(n_steps, rule)
        self.n_steps, self.baseline, self.rule = int(n_steps), baseline, rule

    def attribute(self, x, target=None) -> Attribution:
        x = check_images(x, "IntegratedGradients")
        result = super().attribute(x, target)
        baseline = self._baseline(x)
        with inspecting(self.model):
            base_logits = forward_in_chunks(self.model, baseline, self.batch_size)
        rows = np.arange(len(x))
        gained = result.logits[rows, result.target] - base_logits[rows, result.target]
        return replace(result, delta=result.relevance.sum((1, 2)) - gained)

    def _baseline(self, x: np.ndarray) -> np.ndarray:
        baseline = self.baseline.data if isinstance(self.baseline, Tensor) else self.baseline
        baseline = np.asarray(baseline, dtype=x.dtype)
        try:
            return np.broadcast_to(baseline, x.shape)
        except ValueError:
            raise ValueError(f"baseline of shape {baseline.shape} does not broadcast to the input "
                             f"{x.shape}; use a number, (C, 1, 1), (C, H, W) or (B, C, H, W)") from None

    def _explain(self, x, target):
        baseline = self._baseline(x)
        alphas, weights = self.alphas.astype(x.dtype), self.weights.astype(x.dtype)
        path_integral = np.zeros_like(x)  # integral of the gradient along the path, per image
        # number the (image, step) pairs 0 .. B*n_steps-1 and walk through them in pieces
        for idx in chunks(len(x) * self.n_steps, self.batch_size):
            image, step = idx // self.n_steps, idx % self.n_steps
            a = alphas[step].reshape(-1, 1, 1, 1)
            points = baseline[image] + a * (x[image] - baseline[image])
            grads = input_gradients(self.model, points, target[image], len(points))
            # add each point's weighted gradient to its image (an image may appear twice)
            np.add.at(path_integral, image, grads * weights[step].reshape(-1, 1, 1, 1))
        attributions = (x - baseline) * path_integral
        return attributions.sum(1), attributions


# --------------------------------------------------------------------------- layer methods
def resolve_layer(model: Module, layer) -> tuple[str, Module]:
    """(name, module) for a dotted name like ``"body.4"``, a module, or None: the last Conv2d."""
    return common.resolve_layer(model, layer, Conv2d)


@contextmanager
def layer_as_leaf(layer: Module, name: str) -> Iterator[list[Tensor]]:
    """Inside the block, ``layer``'s output is replaced by a fresh leaf Tensor that
    requires grad; the block gets a list that holds the leaf of the last forward pass
    (empty it before each pass).

    Why a leaf: ``backward`` fills ``.grad`` of leaves only, so cutting the graph at
    the layer gives d score / d activation in ``leaf.grad`` (and nothing below the
    layer is differentiated). A forward hook that returns the leaf does the cut, as a
    torch hook would.
    """
    captured: list[Tensor] = []

    def output_to_leaf(module, inputs, output):
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {name!r} returns a {type(output).__name__}, not a tensor")
        if captured:  # a module used twice: which of its outputs would we explain?
            raise RuntimeError(f"layer {name!r} ran twice in one forward pass; pick its parent block instead")
        leaf = Tensor(output.data, requires_grad=True)
        captured.append(leaf)
        return leaf

    with layer.register_forward_hook(output_to_leaf):
        yield captured


def layer_gradients(model: Module, layer: Module, name: str, x: np.ndarray, target: np.ndarray,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Activations of ``layer`` and d logit[target] / d activation, in pieces."""
    acts, grads = [], []
    with layer_as_leaf(layer, name) as captured:
        for idx in chunks(len(x), batch_size):
            captured.clear()
            logits = model(Tensor(x[idx]))
            if not captured:
                raise RuntimeError(f"layer {name!r} did not run in the forward pass")
            activation = captured[0]
            if activation.ndim != 4:
                raise ValueError(f"layer {name!r} outputs shape {activation.shape}; "
                                 "a convolutional layer with (B, C, h, w) output is needed")
            logits.backward(one_hot(target[idx], logits))
            acts.append(activation.data)
            grads.append(activation.grad)
    return np.concatenate(acts), np.concatenate(grads)


def bilinear_matrix(size_in: int, size_out: int, dtype) -> np.ndarray:
    """(size_out, size_in) weights of 1-D linear interpolation with align_corners=False.

    Output pixel o has its centre at o + 0.5; in input coordinates that is
    (o + 0.5) * size_in / size_out, i.e. sample position (o + 0.5) * scale - 0.5,
    clamped at 0 (torch's convention). It takes 1 - frac of the input pixel below and
    frac of the one above (the last pixel is repeated past the border).
    """
    scale = size_in / size_out
    position = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0)
    below = np.minimum(np.floor(position).astype(np.int64), size_in - 1)
    above = np.minimum(below + 1, size_in - 1)
    frac = position - below
    matrix = np.zeros((size_out, size_in), dtype=dtype)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, below), 1 - frac)
    np.add.at(matrix, (rows, above), frac)
    return matrix


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) -> (B, H, W), bilinear as ``F.interpolate(..., mode="bilinear",
    align_corners=False)``. Bilinear interpolation is separable: interpolate along the
    rows, then along the columns, each a small matrix product."""
    rows = bilinear_matrix(maps.shape[1], size[0], maps.dtype)
    cols = bilinear_matrix(maps.shape[2], size[1], maps.dtype)
    return np.einsum("Hh,bhw,Ww->bHW", rows, maps, cols)


class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al. 2017) on a convolutional layer with activation A (B, C, h, w):

        weight[b, c] = mean_ij d logit_target / d A[b, c, i, j]     (how much channel c helps)
        cam[b]       = sum_c weight[b, c] * A[b, c]                  (B, h, w)
        relevance    = upsample(ReLU(cam)) to the input's (H, W)

    The ReLU keeps the evidence *for* the class (``relu=False`` keeps both signs).
    ``layer``: a dotted name (``"body.4"``), a module of the model, or None for the
    last ``Conv2d`` the model defines. ``raw`` is ``cam`` before the ReLU, at the
    layer's resolution.
    """

    def __init__(self, model: Module, layer=None, relu: bool = True, batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.relu = relu

    def _explain(self, x, target):
        acts, grads = layer_gradients(self.model, self.layer, self.layer_name, x, target, self.batch_size)
        channel_weights = grads.mean((2, 3), keepdims=True)
        cam = (channel_weights * acts).sum(1)
        shown = np.maximum(cam, 0) if self.relu else cam
        return upsample_bilinear(shown, x.shape[-2:]), cam


class LayerSaliency(AttributionMethod):
    """Saliency at an inner layer: d logit_target / d A for the layer's activation A,
    reduced over channels like ``Saliency`` and upsampled bilinearly to the input size.
    ``raw`` is the gradient itself (B, C, h, w)."""

    def __init__(self, model: Module, layer=None, channel_reduce: str = "max", batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.reduce = channel_reduction(channel_reduce)

    def _explain(self, x, target):
        _, grads = layer_gradients(self.model, self.layer, self.layer_name, x, target, self.batch_size)
        return upsample_bilinear(self.reduce(grads), x.shape[-2:]), grads


# --------------------------------------------------------------------------- smoothing
NoiseSource = Callable[[tuple, np.dtype], np.ndarray]


class SmoothGrad(AttributionMethod):
    """Average a base method over noisy copies of the input (Smilkov et al. 2017):

        relevance = 1/n sum_k base(x + sigma * eps_k),   eps_k ~ N(0, I),
        sigma     = noise_level * (max(x) - min(x))      per image

    The paper recommends noise_level 10-20 % and 50 samples. ``relevance`` and ``raw``
    are the means of the base method's outputs over the copies. The base method is
    built with ``method(model, **options)``; copies run in pieces of ``batch_size``.

    Noise: by default ``np.random.default_rng(seed)``, restarted at every call, so
    results repeat. ``noise(shape, dtype)`` may supply standard-normal draws instead
    (it is called once per piece, in order): that is how the tests feed the torch
    version's exact noise, since numpy's and torch's generators differ.
    """

    def __init__(self, model: Module, method: type[AttributionMethod] = Saliency, n_samples: int = 50,
                 noise_level: float = 0.15, seed: int = 0, batch_size: int = 64,
                 noise: NoiseSource | None = None, **options) -> None:
        super().__init__(model, batch_size)
        if n_samples < 1 or noise_level < 0:
            raise ValueError(f"need n_samples >= 1 and noise_level >= 0, got {n_samples} and {noise_level}")
        self.base = method(model, batch_size=batch_size, **options)
        self.n_samples, self.noise_level, self.seed = int(n_samples), float(noise_level), seed
        self.noise = noise

    def _explain(self, x, target):
        if self.noise is None:
            rng = np.random.default_rng(self.seed)
            noise = lambda shape, dtype: rng.standard_normal(shape, dtype=dtype)  # noqa: E731
        else:
            noise = self.noise
        sigma = self.noise_level * (x.max((1, 2, 3)) - x.min((1, 2, 3)))
        relevance_sum = raw_sum = None
        for idx in chunks(len(x) * self.n_samples, self.batch_size):
            image = idx // self.n_samples  # copy k of image b has index b * n_samples + k
            eps = np.asarray(noise((len(idx), *x.shape[1:]), x.dtype), dtype=x.dtype)
            noisy = x[image] + sigma[image].reshape(-1, 1, 1, 1) * eps
            relevance, raw = self.base._explain(noisy, target[image])
            if relevance_sum is None:  # shapes are the base method's: raw may be a layer's size
                relevance_sum = np.zeros((len(x), *relevance.shape[1:]), dtype=relevance.dtype)
                raw_sum = np.zeros((len(x), *raw.shape[1:]), dtype=raw.dtype)
            np.add.at(relevance_sum, image, relevance)
            np.add.at(raw_sum, image, raw)
        return relevance_sum / self.n_samples, raw_sum / self.n_samples


METHODS: dict[str, type[AttributionMethod]] = {
    "saliency": Saliency,
    "input_x_gradient": InputXGradient,
    "gradcam": GradCAM,
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
}
