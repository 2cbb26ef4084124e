"""Attribution methods: which pixels does a classifier's decision rest on?

Every method has the same shape of call:

    result = IntegratedGradients(model, n_steps=50).attribute(x, target=None)
    result.relevance   # (B, H, W): one number per pixel, channels reduced (see below)
    result.logits      # (B, K): the model's output for x
    result.target      # (B,): the class explained, the predicted one unless given
    result.raw         # the method's own output before it became a per-pixel map

``model`` takes a float batch (B, C, H, W) and returns logits (B, K). It is put in
eval mode with frozen parameters while a method runs and restored afterwards, so no
``.grad`` is left on its weights. Every method evaluates the model in pieces of at
most ``batch_size`` images, whatever the number of images, steps, patches or noise
samples: 50-step integrated gradients over 64 images is 3200 model inputs, run as
``ceil(3200 / batch_size)`` forward/backward passes, with no Python loop over images.

How channels become one number per pixel (CHANNEL_REDUCTIONS, minidl.explain's table):
    Saliency            max over channels of |gradient| (Simonyan et al. 2014), or
                        channel_reduce="l2" for the gradient's norm
    InputXGradient      sum over channels of x * gradient
    IntegratedGradients sum over channels, so ``relevance.sum((1, 2))`` is the whole
                        attribution and completeness can be checked on it
    Occlusion           a patch covers every channel at once; nothing to reduce
    GradCAM             a weighted sum over the layer's channels, then upsampled
    SmoothGrad          whatever its base method does, averaged over noisy copies

Scores: gradient methods explain the target's *logit* (as captum does); Occlusion
measures the drop of the target's *probability* (softmax), as in the KTH practical.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minidl import _explain_common as common
# The same rules and reductions as minidl.explain: one table, one set of weights.
from minidl._explain_common import CHANNEL_REDUCTIONS, RULES, integration_points  # noqa: F401

from ._common import (Layer, Target, check_batch_size, check_images, chunks, forward_in_chunks,
                      inspecting, resolve_layer, resolve_target)
from .activations import capture


@dataclass
class Attribution:
    """What every ``attribute`` call returns.

    relevance  (B, H, W) per-pixel relevance, same height and width as the input
    logits     (B, K) model output for the unchanged input
    target     (B,) the class explained for each image
    raw        the method's native output: gradients or attributions (B, C, H, W),
               Grad-CAM's map at the layer's resolution before ReLU (B, h, w),
               Occlusion's probability drop per patch position (B, rows, cols)
    delta      IntegratedGradients only: completeness gap per image,
               sum of attributions - (f(x) - f(baseline)) for the target's logit
    """
    relevance: Tensor
    logits: Tensor
    target: Tensor
    raw: Tensor
    delta: Tensor | None = None


def channel_reduction(name: str):
    """The function (B, C, H, W) -> (B, H, W) called ``name`` in CHANNEL_REDUCTIONS."""
    return common.channel_reduction(name, torch)


def _score(logits: Tensor, target: Tensor) -> Tensor:
    """The target class's logit per row, summed: the gradient of a sum of per-image
    scores with respect to a batch is each image's own gradient, since images do not
    interact in eval mode."""
    return logits.gather(1, target[:, None]).sum()


def input_gradients(model: nn.Module, x: Tensor, target: Tensor, batch_size: int) -> Tensor:
    """d logit[target] / d x for every image, ``batch_size`` images per backward pass."""
    grads = torch.empty_like(x)
    for idx in chunks(len(x), batch_size, x.device):
        inputs = x[idx].requires_grad_(True)
        (grads[idx],) = torch.autograd.grad(_score(model(inputs), target[idx]), inputs)
    return grads


class AttributionMethod:
    """Common part: input checks, eval mode, logits and default targets.

    A subclass implements ``_explain(x, target) -> (relevance, raw)`` for a batch;
    ``attribute`` wraps it. Subclasses keep every size-dependent loop in pieces of
    ``self.batch_size`` model inputs.
    """

    def __init__(self, model: nn.Module, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = check_batch_size(batch_size)

    def attribute(self, x: Tensor, target: Target = None) -> Attribution:
        x = check_images(x, type(self).__name__)
        with inspecting(self.model):
            logits = forward_in_chunks(self.model, x, self.batch_size)
            target = resolve_target(target, logits)
            relevance, raw = self._explain(x, target)
        return Attribution(relevance.detach(), logits, target, raw.detach())

    def _explain(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


# --------------------------------------------------------------------------- gradients
class Saliency(AttributionMethod):
    """Gradient of the target logit w.r.t. the input (Simonyan et al. 2014).

    ``channel_reduce="max"`` takes the largest |gradient| over channels, as in the
    paper; ``"l2"`` the gradient's length per pixel. ``raw`` is the signed gradient.
    """

    def __init__(self, model: nn.Module, channel_reduce: str = "max", batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.reduce = channel_reduction(channel_reduce)

    def _explain(self, x, target):
        grads = input_gradients(self.model, x, target, self.batch_size)
        return self.reduce(grads), grads


class InputXGradient(AttributionMethod):
    """x * gradient, summed over channels. On a linear model f(x) = w.x + b this is
    exactly each pixel's contribution w_i x_i to the logit."""

    def _explain(self, x, target):
        attributions = x * input_gradients(self.model, x, target, self.batch_size)
        return attributions.sum(1), attributions


# --------------------------------------------------------------------------- integrated gradients
class IntegratedGradients(AttributionMethod):
    """Integrated gradients (Sundararajan et al. 2017), summed over channels.

        attribution = (x - baseline) * integral_0^1 grad f(baseline + a (x - baseline)) da

    approximated with ``n_steps`` points of ``rule`` (see ``RULES``; the trapezoid rule
    by default). Completeness: the attributions of an image sum to about
    f(x) - f(baseline) for the target's logit; ``result.delta`` is the gap, which
    shrinks as n_steps grows. On a linear model every rule is exact.

    ``baseline``: a number (0, black, by default) or a tensor broadcastable to the
    input, e.g. (C, 1, 1) per-channel means or a (B, C, H, W) blurred copy.
    All B * n_steps path points run in pieces of ``batch_size``, no loop over images.
    """

    def __init__(self, model: nn.Module, n_steps: int = 50, baseline: float | Tensor = 0.0,
                 rule: str = "riemann_trapezoid", batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.alphas, self.weights = (torch.from_numpy(a) for a in integration_points(n_steps, rule))
        self.n_steps, self.baseline, self.rule = int(n_steps), baseline, rule

    def attribute(self, x: Tensor, target: Target = None) -> Attribution:
        x = check_images(x, "IntegratedGradients")
        result = super().attribute(x, target)
        baseline = self._baseline(x)
        with inspecting(self.model):
            base_logits = forward_in_chunks(self.model, baseline, self.batch_size)
        gained = (result.logits - base_logits).gather(1, result.target[:, None])[:, 0]
        return replace(result, delta=result.relevance.sum((1, 2)) - gained)

    def _baseline(self, x: Tensor) -> Tensor:
        baseline = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            return baseline.expand_as(x)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input "
                             f"{tuple(x.shape)}; use a number, (C, 1, 1), (C, H, W) or (B, C, H, W)") from None

    def _explain(self, x, target):
        baseline = self._baseline(x)
        alphas = self.alphas.to(x)
        weights = self.weights.to(x)
        path_integral = torch.zeros_like(x)  # integral of the gradient along the path, per image
        # number the (image, step) pairs 0 .. B*n_steps-1 and walk through them in pieces
        for idx in chunks(len(x) * self.n_steps, self.batch_size, x.device):
            image, step = idx // self.n_steps, idx % self.n_steps
            a = alphas[step].view(-1, 1, 1, 1)
            points = (baseline[image] + a * (x[image] - baseline[image])).requires_grad_(True)
            (grads,) = torch.autograd.grad(_score(self.model(points), target[image]), points)
            path_integral.index_add_(0, image, grads * weights[step].view(-1, 1, 1, 1))
        attributions = (x - baseline) * path_integral
        return attributions.sum(1), attributions


# --------------------------------------------------------------------------- occlusion
def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def patch_starts(size: int, patch: int, stride: int) -> Tensor:
    """Where patches start along one side: 0, stride, ... until the side is covered.
    The last patch may hang over the border (and is cut there), so no pixel is missed."""
    return torch.arange(0, -(-max(size - patch, 0) // stride) + 1) * stride


class Occlusion(AttributionMethod):
    """Slide a ``patch`` over the image in steps of ``stride`` and set it to ``baseline``
    (a number, 0 by default, or a tensor broadcastable to the input); the relevance of a
    patch is the drop of the target's probability, p(x) - p(occluded x) (Zeiler & Fergus
    2014). A pixel gets the mean drop of all patches that cover it (as captum does);
    ``raw`` holds the drop per patch position (B, rows, cols).

    Cost: B * rows * cols forward passes of single images, in pieces of batch_size.
    """

    def __init__(self, model: nn.Module, patch: int | tuple[int, int] = 8, stride: int | tuple[int, int] = 4,
                 baseline: float | Tensor = 0.0, batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.patch, self.stride = _pair(patch, "patch"), _pair(stride, "stride")
        if self.stride[0] > self.patch[0] or self.stride[1] > self.patch[1]:
            raise ValueError(f"stride {self.stride} is larger than the patch {self.patch}: some pixels would "
                             "never be occluded; use a stride no larger than the patch")
        self.baseline = baseline

    def _explain(self, x, target):
        B, _, H, W = x.shape
        (ph, pw), (sh, sw) = self.patch, self.stride
        if ph > H or pw > W:
            raise ValueError(f"patch {self.patch} is larger than the image ({H}, {W})")
        tops, lefts = patch_starts(H, ph, sh).to(x.device), patch_starts(W, pw, sw).to(x.device)
        rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
        baseline = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device).expand_as(x)
        clean = forward_in_chunks(self.model, x, self.batch_size).softmax(1).gather(1, target[:, None])[:, 0]

        n_patches = len(tops) * len(lefts)
        drops = torch.empty(B * n_patches, dtype=x.dtype, device=x.device)
        total = torch.zeros(B, H, W, dtype=x.dtype, device=x.device)  # sum of drops over covering patches
        covered = torch.zeros_like(total)                           # how many patches cover each pixel
        with torch.no_grad():
            for idx in chunks(B * n_patches, self.batch_size, x.device):
                image, patch = idx // n_patches, idx % n_patches
                top, left = tops[patch // len(lefts)], lefts[patch % len(lefts)]
                inside = (((rows >= top[:, None]) & (rows < top[:, None] + ph))[:, :, None]
                          & ((cols >= left[:, None]) & (cols < left[:, None] + pw))[:, None, :])
                occluded = torch.where(inside[:, None], baseline[image], x[image])
                prob = self.model(occluded).softmax(1).gather(1, target[image][:, None])[:, 0]
                drops[idx] = clean[image] - prob
                total.index_add_(0, image, drops[idx].view(-1, 1, 1) * inside)
                covered.index_add_(0, image, inside.to(x.dtype))
        return total / covered, drops.view(B, len(tops), len(lefts))


# --------------------------------------------------------------------------- layer methods
def _layer_gradients(model: nn.Module, layer: Layer, x: Tensor, target: Tensor,
                     batch_size: int) -> tuple[Tensor, Tensor]:
    """Activations of ``layer`` and d logit[target] / d activation, in pieces."""
    acts, grads = [], []
    for idx in chunks(len(x), batch_size, x.device):
        with capture(model, [layer], as_leaf=True) as (record,):
            logits = model(x[idx])
        if record.value is None:
            raise RuntimeError(f"layer {record.name!r} did not run in the forward pass")
        if record.value.dim() != 4:
            raise ValueError(f"layer {record.name!r} outputs shape {tuple(record.value.shape)}; "
                             "a convolutional layer with (B, C, h, w) output is needed")
        (g,) = torch.autograd.grad(_score(logits, target[idx]), record.value)
        acts.append(record.value.detach())
        grads.append(g)
    return torch.cat(acts), torch.cat(grads)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) -> (B, H, W), bilinear (align_corners=False, as captum's interpolate)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al. 2017) on a convolutional layer.

    Each channel of the layer's activation A (B, C, h, w) is weighted by the spatial mean
    of the target logit's gradient, the weighted channels are summed, a ReLU keeps the
    evidence *for* the class, and the (h, w) map is upsampled bilinearly to the input.
    ``layer``: a dotted name (``"layer4"`` for a ResNet's last block), a module, or None
    for the last ``nn.Conv2d`` the model defines. ``raw`` is the map before ReLU at the
    layer's resolution (captum's LayerGradCam by default gives this map, without ReLU).
    """

    def __init__(self, model: nn.Module, layer: Layer = None, relu: bool = True, batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.relu = relu

    def _explain(self, x, target):
        acts, grads = _layer_gradients(self.model, self.layer, x, target, self.batch_size)
        channel_weights = grads.mean((2, 3), keepdim=True)
        cam = (channel_weights * acts).sum(1)
        shown = cam.clamp(min=0) if self.relu else cam
        return upsample(shown, x.shape[-2:]), cam


class LayerSaliency(AttributionMethod):
    """Saliency at an inner layer: the gradient of the target logit w.r.t. the layer's
    activation, reduced over channels like ``Saliency`` and upsampled bilinearly to the
    input size. ``raw`` is the gradient itself (B, C, h, w). Comparing layers shows how
    the network's sensitivity becomes coarser and more object-like with depth."""

    def __init__(self, model: nn.Module, layer: Layer = None, channel_reduce: str = "max",
                 batch_size: int = 64) -> None:
        super().__init__(model, batch_size)
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.reduce = channel_reduction(channel_reduce)

    def _explain(self, x, target):
        _, grads = _layer_gradients(self.model, self.layer, x, target, self.batch_size)
        return upsample(self.reduce(grads), x.shape[-2:]), grads


# --------------------------------------------------------------------------- smoothing
class SmoothGrad(AttributionMethod):
    """Average a base method over noisy copies of the input (Smilkov et al. 2017).

    ``n_samples`` copies per image with gaussian noise of std ``noise_level`` times the
    image's value range (max - min); the paper recommends 10-20 % and 50 samples.
    ``relevance`` and ``raw`` are the means of the base method's relevance and raw output
    over the copies (for Saliency: the mean of max |gradient|, like captum's NoiseTunnel
    on Saliency). The base method is built with ``method(model, **options)``; copies run
    in pieces of ``batch_size``. ``seed`` makes the noise repeatable.
    """

    def __init__(self, model: nn.Module, method: type[AttributionMethod] = Saliency, n_samples: int = 50,
                 noise_level: float = 0.15, seed: int = 0, batch_size: int = 64, **options) -> None:
        super().__init__(model, batch_size)
        if n_samples < 1 or noise_level < 0:
            raise ValueError(f"need n_samples >= 1 and noise_level >= 0, got {n_samples} and {noise_level}")
        self.base = method(model, batch_size=batch_size, **options)
        self.n_samples, self.noise_level, self.seed = int(n_samples), float(noise_level), seed

    def _explain(self, x, target):
        generator = torch.Generator().manual_seed(self.seed)  # on the CPU: same noise on any device
        sigma = self.noise_level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
        relevance_sum = raw_sum = None
        for idx in chunks(len(x) * self.n_samples, self.batch_size, x.device):
            image = idx // self.n_samples
            noise = torch.randn(len(idx), *x.shape[1:], generator=generator, dtype=x.dtype).to(x.device)
            noisy = x[image] + sigma[image].view(-1, 1, 1, 1) * noise
            relevance, raw = self.base._explain(noisy, target[image])
            if relevance_sum is None:  # shapes are the base method's: raw may be a layer's size
                relevance_sum = relevance.new_zeros(len(x), *relevance.shape[1:])
                raw_sum = raw.new_zeros(len(x), *raw.shape[1:])
            relevance_sum.index_add_(0, image, relevance)
            raw_sum.index_add_(0, image, raw)
        return relevance_sum / self.n_samples, raw_sum / self.n_samples


METHODS: dict[str, type[AttributionMethod]] = {
    "occlusion": Occlusion,
    "saliency": Saliency,
    "input_x_gradient": InputXGradient,
    "gradcam": GradCAM,
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
}
