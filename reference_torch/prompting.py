"""Prompting a frozen CLIP (UvA DL1 assignment 2 part 2): only the prompt learns.

Visual prompts (Bahng et al. 2022, "Exploring visual prompts for adapting large-scale
models") are added to the (normalised) input image, the course's three:

    PadPrompter(prompt_size=30, image_size=224)   a frame of that width around the image
    FixedPatchPrompter(prompt_size=1)             a square at the top-left corner
    RandomPatchPrompter(prompt_size=1)            a square at a new random place each batch

Deep prompts (Jia et al. 2022, "Visual prompt tuning") are learned tokens put into the
image encoder's sequence, after the class token, before block ``injection_layer``:
``DeepPrompter(width, num_tokens=4, injection_layer=0)``; with ``every_layer=True``
fresh tokens replace them before every later block too (VPT-deep). ``PromptCLIP`` is
the course's CustomCLIP: the frozen CLIP, the class-name text features computed once,
and a prompt; ``forward(images)`` gives the class logits.
"""
from __future__ import annotations

import torch
from torch import nn

from .clip import preprocess

__all__ = ["PadPrompter", "FixedPatchPrompter", "RandomPatchPrompter", "DeepPrompter", "PromptCLIP",
           "VISUAL_PROMPTERS"]


class PadPrompter(nn.Module):
    """A learned frame of width ``prompt_size`` added around an ``image_size`` image."""

    def __init__(self, prompt_size=30, image_size=224):
        super().__init__()
        if not 0 < 2 * prompt_size < image_size:
            raise ValueError(f"a padding prompt of width {prompt_size} does not fit an image of {image_size} pixels")
        self.prompt_size, self.image_size = prompt_size, image_size
        inner = image_size - 2 * prompt_size
        self.pad_up = nn.Parameter(torch.randn(1, 3, prompt_size, image_size))
        self.pad_down = nn.Parameter(torch.randn(1, 3, prompt_size, image_size))
        self.pad_left = nn.Parameter(torch.randn(1, 3, inner, prompt_size))
        self.pad_right = nn.Parameter(torch.randn(1, 3, inner, prompt_size))

    def prompt(self):
        """The whole prompt as one (1, 3, image_size, image_size) image, zero inside the frame."""
        inner = self.image_size - 2 * self.prompt_size
        middle = torch.zeros(1, 3, inner, inner, dtype=self.pad_up.dtype, device=self.pad_up.device)
        middle = torch.cat([self.pad_left, middle, self.pad_right], dim=3)
        return torch.cat([self.pad_up, middle, self.pad_down], dim=2)

    def forward(self, x):
        return x + self.prompt()


class FixedPatchPrompter(nn.Module):
    """A learned ``prompt_size`` x ``prompt_size`` patch added at the top-left corner."""

    def __init__(self, prompt_size=1, image_size=224):
        super().__init__()
        self.prompt_size, self.image_size = prompt_size, image_size
        self.patch = nn.Parameter(torch.randn(1, 3, prompt_size, prompt_size))

    def place(self, top, left):
        prompt = torch.zeros(1, 3, self.image_size, self.image_size, dtype=self.patch.dtype, device=self.patch.device)
        prompt[:, :, top:top + self.prompt_size, left:left + self.prompt_size] = self.patch
        return prompt

    def prompt(self):
        return self.place(0, 0)

    def forward(self, x):
        return x + self.prompt()


class RandomPatchPrompter(FixedPatchPrompter):
    """The same patch at a random place, drawn anew for every batch (from torch's
    generator); ``prompt()`` shows it at the top-left corner."""

    def forward(self, x):
        top, left = torch.randint(0, self.image_size - self.prompt_size + 1, (2,)).tolist()
        return x + self.place(top, left)


VISUAL_PROMPTERS = {"padding": PadPrompter, "fixed_patch": FixedPatchPrompter, "random_patch": RandomPatchPrompter}


class DeepPrompter(nn.Module):
    """``num_tokens`` learned tokens inserted after the class token before block
    ``injection_layer`` of a VisionTransformer; with ``every_layer`` a fresh set replaces
    them before each later block. ``encode_image(visual, images)`` runs the encoder with them."""

    def __init__(self, width, num_tokens=4, injection_layer=0, every_layer=False, layers=None):
        super().__init__()
        if every_layer and layers is None:
            raise ValueError("DeepPrompter(every_layer=True) needs the number of layers")
        self.num_tokens, self.injection_layer, self.every_layer = num_tokens, injection_layer, every_layer
        sets = layers - injection_layer if every_layer else 1
        self.tokens = nn.Parameter(torch.randn(sets, num_tokens, width) * width ** -0.5)

    def encode_image(self, visual, images):
        layers = len(visual.transformer.resblocks)
        if not 0 <= self.injection_layer < layers:
            raise ValueError(f"injection layer {self.injection_layer}: the image encoder has blocks 0 to {layers - 1}")
        x, n = visual.embed(images), self.num_tokens
        for i, block in enumerate(visual.transformer.resblocks):
            if i >= self.injection_layer and (i == self.injection_layer or self.every_layer):
                prompt = self.tokens[i - self.injection_layer if self.every_layer else 0].to(x.dtype)
                rest = x[:, 1:] if i == self.injection_layer else x[:, 1 + n:]  # later: replace the last set
                x = torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), rest], dim=1)
            x = block(x)
        return visual.head(x)


class PromptCLIP(nn.Module):
    """A frozen CLIP that classifies by its text features of the classes (``text_features``,
    (classes, dim), computed once by the caller), with an optional visual prompt (on the
    preprocessed image) and deep prompt. Only the prompts train, and only they are in
    ``state_dict()``: checkpoints stay small and hold what was learned.

    With ``image_size`` the inputs are images in [0, 1], preprocessed here as CLIP's
    (``reference_torch.clip.preprocess``); while ``noise`` is a (std, generator) pair,
    gaussian noise of that std is added after the preprocessing (the course's test noise)."""

    def __init__(self, clip, text_features, visual_prompt=None, deep_prompt=None, image_size=None):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.visual_prompt, self.deep_prompt = visual_prompt, deep_prompt
        self.image_size, self.noise = image_size, None
        features = text_features / text_features.norm(dim=-1, keepdim=True)
        self.register_buffer("text_features", features.detach(), persistent=False)

    def prompts(self):
        return nn.ModuleDict({k: m for k, m in (("visual_prompt", self.visual_prompt),
                                                  ("deep_prompt", self.deep_prompt)) if m is not None})

    def encode_image(self, images):
        if self.image_size is not None:
            images = preprocess(images, self.image_size)
        if self.noise is not None:  # drawn on the CPU from a seeded generator: the same noise on any device
            images = images + self.noise[0] * torch.randn(images.shape, generator=self.noise[1]).to(images)
        if self.visual_prompt is not None:
            images = self.visual_prompt(images)
        if self.deep_prompt is not None:
            return self.deep_prompt.encode_image(self.clip.visual, images.to(self.clip.dtype))
        return self.clip.encode_image(images)

    def forward(self, images):
        features = self.encode_image(images)
        features = features / features.norm(dim=-1, keepdim=True)
        return self.clip.logit_scale.exp() * features @ self.text_features.t()

    def train(self, mode=True):
        super().train(mode)
        self.clip.eval()  # frozen: CLIP stays as it was released
        return self

    def state_dict(self, *args, **kwargs):
        return self.prompts().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return self.prompts().load_state_dict(state_dict, strict=strict, assign=assign)
