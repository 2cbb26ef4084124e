"""Parts of the feature-visualisation driver (``feature_visualization``): its figures,
drawn through ``assignments.plots`` (activation maps, grids of visualisations, the
semantic dictionary and the neuron groups of Olah et al. 2018), and the optional
ImageNet ResNet-18 (--weights)."""
from __future__ import annotations

from collections import OrderedDict

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from torch import nn

from reference_torch import explain as E
from reference_torch.explain.attribution import upsample
from reference_torch.models import load_torchvision_weights, resnet18

from . import _explain_common as C
from . import plots

# ImageNet's normalisation (torchvision's weights expect it) and a few classes to visualise
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CLASSES = {1: "goldfish", 130: "flamingo", 323: "monarch butterfly", 340: "zebra", 949: "strawberry"}


def layer_maps(ctx, model, blocks, images):
    """For the predicted class: |gradient| at the input and at every block's ReLU, and
    gradient x activation at every block (upsampled), by column title."""
    target, images = C.predictions(ctx, model, images)[0], ctx.to_device(images)
    maps = {"input: |gradient|": E.Saliency(model).attribute(images).relevance}
    for b in blocks:
        maps[f"{b.name}: |gradient|"] = E.LayerSaliency(model, layer=b.relu).attribute(images).relevance
    for b in blocks:
        maps[f"{b.name}: gradient\nx activation"] = upsample(E.gradient_x_activation(model, b.relu, images, target),
                                                              images.shape[-2:])
    return maps


def plot_activation_maps(x, maps, channels, row_labels, dataset):
    """Rows: images; columns: the input, then ``channels[block]`` of every block. Each
    channel's column has one colour scale, so its maps compare across the images."""
    columns = [(block, c) for block in maps for c in channels[block]]
    fig, axes = plt.subplots(len(x), 1 + len(columns), squeeze=False, layout="constrained",
                             figsize=(1.35 * (1 + len(columns)) + 0.6, 1.45 * len(x) + 1.1))
    for r in range(len(x)):
        plots.show_image(axes[r, 0], x[r], "input" if r == 0 else None)
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    for col, (block, c) in enumerate(columns, start=1):
        column = maps[block][:, c].cpu().numpy()
        top = max(float(column.max()), 1e-8)
        for r in range(len(x)):
            im = plots.show_image(axes[r, col], column[r], cmap="viridis", vmin=0, vmax=top)
        axes[0, col].set_title(f"{block} ({column.shape[-2]}x{column.shape[-1]})\nchannel {c}", fontsize=8)
    cbar = fig.colorbar(im, ax=axes[:, 1:], location="bottom", shrink=0.4, aspect=30)
    cbar.set_label("activation / largest value in its column (0 = dark, max = yellow)", fontsize=8)
    cbar.set_ticks([0, top], labels=["0", "max"])
    fig.suptitle(f"Activation maps after each block's ReLU ({dataset}); per layer the channels that differ "
                 "most between these images", fontsize=10)
    return fig


def unit_grid(title, rows, size=1.45, fmt="{:.2f}"):
    """Rows of (label, images (N, C, H, W), N objectives, N unit names or None): every image
    captioned with its objective, under its unit's name where the row has names."""
    images = [image for _, stack, _, _ in rows for image in (stack.cpu().numpy() if torch.is_tensor(stack) else stack)]
    captions = [(f"{names[i]}\n" if names else "") + fmt.format(float(score))
                for _, _, scores, names in rows for i, score in enumerate(scores)]
    return plots.image_grid(images, title, captions, len(rows[0][2]), [r[0] for r in rows], size=size)


def plot_neuron_groups(image, groups, visuals, class_names, title):
    """Top row: each group's map over the image; bottom: its visualisation; right: the
    groups' attributions to every class logit."""
    count, top = len(groups.maps), float(groups.maps.max())
    fig, axes = plt.subplots(2, count + 1, figsize=(1.9 * count + 4.6, 4.8),
                             gridspec_kw={"width_ratios": [1] * count + [2.4]})
    side = image.shape[-1]
    for g in range(count):  # the map in colour over a pale image, transparent where the group is absent
        plots.show_image(axes[0, g], 0.5 + 0.5 * image.cpu().numpy(), f"group {g + 1}: where", fontsize=9)
        share = (groups.maps[g] / top).clamp(0, 1).cpu().numpy()
        colour = plt.get_cmap("magma_r")(share)
        colour[..., 3] = 0.9 * share
        axes[0, g].imshow(colour, extent=(-0.5, side - 0.5, side - 0.5, -0.5), interpolation="nearest")
        plots.show_image(axes[1, g], visuals.images[g].cpu().numpy(), f"group {g + 1}: what\n(score "
                         f"{visuals.scores[g]:.2f})", fontsize=9)
    gs = axes[0, count].get_gridspec()
    for ax in axes[:, count]:
        ax.remove()
    plots.heatmap(groups.attribution.T.cpu().numpy(), "attribution to each class logit", "group", "class",
                  ax=fig.add_subplot(gs[:, count]), x_labels=[str(g + 1) for g in range(count)],
                  y_labels=class_names, annotate="{:.1f}", colorbar="gradient x activation")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_semantic_dictionary(x, dictionaries, visuals, block, row_labels, title):
    """Per row an image with the chosen position of ``block``'s map marked, then the
    visualisations of the channels most active there, with their activations."""
    count = len(dictionaries[0]["channels"])
    images, captions = [], []
    for image, entry, visual in zip(x, dictionaries, visuals):
        images += [image.cpu().numpy(), *visual.images.cpu().numpy()]
        captions += [f"position {tuple(entry['position'])}"] + [
            f"channel {c}\nactivation {v:.2f}" for c, v in zip(entry["channels"], entry["activations"])]
    fig = plots.image_grid(images, title, captions, count + 1, row_labels[:len(dictionaries)], size=1.6)
    cell = x.shape[-1] / block.size  # pixels per position of the map
    for row, entry in enumerate(dictionaries):
        r, c = entry["position"]
        fig.axes[row * (count + 1)].add_patch(Rectangle((c * cell - 0.5, r * cell - 0.5), cell, cell, fill=False,
                                                        color="yellow", lw=2))
    return fig


# ------------------------------------------------------------------------ ImageNet ResNet-18 (--weights)
def load_resnet(ctx):
    """The ResNet-18 of --weights (checked when the option was parsed) with ImageNet's
    normalisation in front, on the run's device, in eval mode."""
    return nn.Sequential(OrderedDict(normalize=E.Normalize(IMAGENET_MEAN, IMAGENET_STD), net=(
        load_torchvision_weights(resnet18(num_classes=1000), ctx.config.weights)))).to(ctx.device).eval()


def visualise_resnet(ctx, resnet):
    """Channels of layer2..layer4 and a few classes of the ImageNet ResNet-18, lucid recipe. Its
    transforms do not enlarge the canvas (pad=0): a padded 2x2 layer4 map at 64 pixels would
    become 3x3, another objective than the one scored. Grey fills what a shift brings in."""
    cfg = ctx.config
    size, steps, channels = cfg.resnet_size, cfg.resnet_steps, list(range(cfg.resnet_channels))
    classes = list(IMAGENET_CLASSES)[:len(channels)]
    objectives = {**{f"layer{k}": (E.channel(f"net.layer{k}", channels), [f"channel {c}" for c in channels])
                     for k in (2, 3, 4)}, "classes": (E.class_logit(classes), [IMAGENET_CLASSES[k] for k in classes])}
    ctx.log(f"ResNet-18: {len(objectives)} visualisations of {size}x{size} images, {steps} steps each")
    lucid = dict(param="fourier", decorrelate=True, transforms=E.RandomTransforms())  # ImageNet's colours
    results = {key: (E.visualize(resnet, objective, size, steps=steps, seed=ctx.seed, **lucid),
                     E.visualize(resnet, objective, size, steps=0, seed=ctx.seed, **lucid).scores)
               for key, (objective, _) in objectives.items()}
    ctx.save_figure(unit_grid(f"ImageNet ResNet-18 ({cfg.weights}): Fourier images with transforms, {size}x{size}, "
                              f"{steps} steps", [(key, v.images, v.scores, objectives[key][1])
                                                 for key, (v, _) in results.items()], size=1.9), "featvis_resnet18",
                    f"Activation maximisation on the ImageNet ResNet-18: channels {channels} of the outputs of "
                    "layer2 to layer4, and the logits of a few classes. Above each image: its unit and the "
                    "objective it reaches.")
    units = {key: {"start": start.tolist(), "optimised": v.scores.tolist(), "gain": (v.scores - start).tolist()}
             for key, (v, start) in results.items()}
    gains = [g for unit in units.values() for g in unit["gain"]]
    ctx.note(f"ResNet-18 (--weights {cfg.weights}): the objective rose for {sum(g > 0 for g in gains)} of "
             f"{len(gains)} visualised units (smallest gain {min(gains):.2f}).")
    return {"size": size, "steps": steps, "units": units, "min_gain": min(gains),
            "classes": {k: IMAGENET_CLASSES[k] for k in classes}}
