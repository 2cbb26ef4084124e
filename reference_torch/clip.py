"""CLIP (Radford et al. 2021) with the parameter names and shapes of OpenAI's released
checkpoints, so that their weights load as they are:

    model = load_clip("ViT-B-32.state_dict.pt")     # build_model(state dict), float32, eval mode
    images = preprocess(batch, model.visual.input_resolution)   # resize, centre crop, CLIP's mean/std
    logits_per_image, logits_per_text = model(images, tokenize(["a photo of a cat"]))

The image encoder is a vision transformer: the image cut into patches (one strided
convolution, ``visual.conv1``), a learned class token in front, positions added, a stack
of residual attention blocks, and the class token's output projected (``visual.proj``).
The text encoder is a causal transformer over the token ids; the output at the end-of-
text token (the largest id, hence ``argmax``) is projected (``text_projection``). Both
features are normalised and compared by a scaled cosine: ``logit_scale.exp() * cos``.

``build_model`` reads the architecture off the tensors' shapes as OpenAI's does (widths,
layers, patch size, resolution, context length, vocabulary), so ViT-B/32, ViT-B/16 and
ViT-L/14 files load, and so does the kit's small mini-CLIP. Only the vision-transformer
models: OpenAI's ResNet image encoders (RN50, ...) are refused by name. On the CPU every
weight is float32 (OpenAI's code converts to float16 on load, for GPUs).

Weight files are read with ``torch.load(weights_only=True)``: a plain state dict. OpenAI's
own ``.pt`` downloads are TorchScript archives, which torch reads only by running their
code (``torch.jit.load``); ``load_clip`` refuses them with the one-line command that turns
one into a state dict, to run once where that file is trusted.
"""
from __future__ import annotations

import math
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIP", "VisionTransformer", "Transformer", "build_model", "load_clip", "preprocess", "class_features",
           "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's preprocessing, RGB
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # every OpenAI CLIP has attention heads of width 64: heads = width // 64


class QuickGELU(nn.Module):
    """OpenAI's approximation of GELU, with which the released weights were trained."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). The names
    are OpenAI's (``attn.in_proj_weight`` is nn.MultiheadAttention's: query, key and
    value stacked; ``mlp.c_fc``, ``mlp.c_proj``). Tokens are (batch, sequence, width)."""

    def __init__(self, width, heads, causal=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.causal = causal

    def forward(self, x):
        y = self.ln_1(x)
        mask = None
        if self.causal:  # a token sees itself and those before it (True: not allowed)
            mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, causal=False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """``forward(images)`` = ``head(transformer(embed(images)))``; the three steps are
    separate so that prompts can be put between the blocks (reference_torch.prompting)."""

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        self.input_resolution, self.patch_size, self.output_dim = input_resolution, patch_size, output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, images):
        """(N, 3, R, R) -> tokens (N, 1 + patches, width): the class token, then the patches."""
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))

    def head(self, tokens):
        """The class token's output, normalised and projected: (N, output_dim)."""
        return self.ln_post(tokens[:, 0]) @ self.proj

    def forward(self, images):
        return self.head(self.transformer(self.embed(images)))


class CLIP(nn.Module):
    """OpenAI's CLIP with a vision-transformer image encoder (its constructor's arguments)."""

    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // HEAD_WIDTH, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # a temperature of 0.07
        self.initialize_parameters()

    def initialize_parameters(self):
        """OpenAI's initialisation (what a model trained from scratch starts from)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std, attn_std, fc_std = (width ** -0.5) * ((2 * layers) ** -0.5), width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, images):
        return self.visual(images.to(self.dtype))

    def encode_text(self, tokens):
        """(N, context_length) token ids -> (N, embed_dim): the end-of-text token's output."""
        x = self.token_embedding(tokens).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def logits(self, image_features, text_features):
        """Scaled cosine similarities (N images, M texts) of unnormalised features."""
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()

    def forward(self, images, tokens):
        """(logits_per_image (N, M), logits_per_text (M, N)), as OpenAI's."""
        logits_per_image = self.logits(self.encode_image(images), self.encode_text(tokens))
        return logits_per_image, logits_per_image.t()


@torch.no_grad()
def class_features(model, tokenizer, classes, templates, batch_size=256):
    """(classes, dim) text features for zero-shot classification: each class name in each
    template, the normalised features averaged over the templates (an ensemble when
    there are several), normalised again."""
    device = model.logit_scale.device
    features = []
    for name in classes:
        tokens = tokenizer.tokenize([t.format(name) for t in templates], model.context_length)
        f = torch.cat([model.encode_text(tokens[i:i + batch_size].to(device)) for i in range(0, len(tokens), batch_size)])
        f = (f / f.norm(dim=-1, keepdim=True)).mean(0)
        features.append(f / f.norm())
    return torch.stack(features)


def architecture(state_dict):
    """CLIP's constructor arguments, read off the shapes of a state dict (OpenAI's rules)."""
    if "visual.proj" not in state_dict:
        kind = "a ResNet image encoder (RN50, ...)" if "visual.layer1.0.conv1.weight" in state_dict else "no CLIP"
        raise ValueError(f"this state dict holds {kind}; only OpenAI's vision-transformer CLIPs "
                         "(ViT-B/32, ViT-B/16, ViT-L/14, ...) and the kit's mini-CLIP load here")
    conv1 = state_dict["visual.conv1.weight"]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return dict(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=conv1.shape[-1] * grid,
        vision_layers=len([k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]),
        vision_width=conv1.shape[0], vision_patch_size=conv1.shape[-1],
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=state_dict["ln_final.weight"].shape[0],
        transformer_heads=state_dict["ln_final.weight"].shape[0] // HEAD_WIDTH,
        transformer_layers=len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks")}))


def build_model(state_dict):
    """A CLIP in eval mode, float32, holding the weights of ``state_dict`` (strict keys)."""
    # OpenAI's TorchScript models carry three settings as entries; they are in the shapes already
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    model = CLIP(**architecture(state_dict))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model.eval()


def load_clip(path):
    """``build_model`` of the state dict in the file ``path`` (read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CLIP weight file there")
    if zipfile.is_zipfile(path) and any(n.endswith("/constants.pkl") for n in zipfile.ZipFile(path).namelist()):
        raise ValueError(f"{path} is a TorchScript archive (OpenAI's download), which torch reads only by running "
                         "its code; turn it into a state dict once, where you trust the file: python -c \"import torch; "
                         f"torch.save(torch.jit.load('{path}', map_location='cpu').state_dict(), "
                         f"'{path.with_suffix('.state_dict.pt')}')\"")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a tampered or foreign file: say which and why, in one line
        raise ValueError(f"{path}: cannot read it as a torch state dict "
                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint of the kit's own (the mini-CLIP's)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a dict of tensors)")
    return build_model(state)


def preprocess(images, size, mean=CLIP_MEAN, std=CLIP_STD):
    """CLIP's image preprocessing on a batch: (N, 3, H, W) floats in [0, 1] (or uint8),
    the shorter side resized to ``size`` (bicubic, antialiased, as PIL's resize), the
    centre ``size`` x ``size`` cropped, each channel normalised by CLIP's mean and std."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = images.float() / 255
    height, width = images.shape[-2:]
    if min(height, width) != size:
        scale = size / min(height, width)
        shape = (max(size, round(height * scale)), max(size, round(width * scale)))
        images = F.interpolate(images, size=shape, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    images = images[..., top:top + size, left:left + size]
    mean = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std
