"""ITU week 4, task 1: classic image filters as convolutions.

Six hand-made 3x3/5x5 kernels (box blur, gaussian blur, sharpen, Sobel x and y,
Laplacian) are applied to real images with minidl's ``F.conv2d``, a cross-correlation
exactly like PyTorch's (no kernel flip), after mirroring the border so that every
response has the size of its input.
"""
import time
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

import minidl as md
import minidl.nn.functional as F

from . import plots
from .runner import positive_int

NAME = "filters"
COURSE = "ITU advanced ML"
TASK = "week 4, task 1"
SUMMARY = "box/gaussian blur, sharpen, Sobel and Laplacian kernels applied with minidl's conv2d"
STATEMENT = """
Write down the kernels of a box blur, a gaussian blur, a sharpening filter, the Sobel
operators for horizontal and vertical gradients and the Laplacian, and apply them to
real images with a 2-d convolution (in deep-learning libraries: a cross-correlation).
Show the inputs next to the responses and explain what each filter picks out: blurs
average neighbourhoods, Sobel x responds to vertical edges (intensity changing along
x), Sobel y to horizontal ones, the Laplacian to blobs and thin strokes in any
direction, and sharpening adds the (negative) Laplacian back to the image.
"""
DATASETS = ("digits", "mnist", "cifar10")
DEFAULT = True
PROFILES = {"default": {"images": 6}, "quick": {"images": 3}}


def add_arguments(parser):
    parser.add_argument("--images", type=positive_int, help="test images to filter (one of each class first)")


def gaussian_kernel(size=5, sigma=1.0):
    """A normalised 2-d gaussian: the outer product of two 1-d gaussians."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    return np.outer(g, g) / np.outer(g, g).sum()


class Filter(NamedTuple):
    label: str
    kernel: np.ndarray
    signed: bool  # a signed response (edges, Laplacian), drawn with a diverging map


SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
KERNELS = {
    "box_blur": Filter("box blur", np.full((3, 3), 1 / 9), False),
    "gaussian_blur": Filter("gaussian blur", gaussian_kernel(5, 1.0), False),
    # an image again (identity minus the Laplacian): shown in grey like the blurs
    "sharpen": Filter("sharpen", np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64), False),
    "sobel_x": Filter("Sobel x", SOBEL_X, True),
    "sobel_y": Filter("Sobel y", SOBEL_X.T.copy(), True),
    "laplacian": Filter("Laplacian", np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64), True),
}


def apply_filter(images, kernel):
    """Responses (N, H, W) of grey images (N, H, W) to one kernel: conv2d with one input
    and one output channel. The border is mirrored first (numpy's "reflect" padding,
    scipy's "mirror"), so that the outputs keep the input's size and the image's edge
    does not look like an edge in the picture; a conv layer would pad with zeros."""
    r = kernel.shape[-1] // 2
    padded = np.pad(images, ((0, 0), (r, r), (r, r)), mode="reflect")
    weight = md.tensor(kernel[None, None].astype(np.float32))
    return F.conv2d(md.tensor(padded[:, None]), weight).numpy()[:, 0]


def timed_filter(images, kernel, repeats=5):
    """(responses, CPU milliseconds of one apply_filter): the median of ``repeats`` calls after
    a first one, untimed, which may compile minidl's kernels (numba, once per process: about
    2 s of the first filter's time before) or read them from numba's cache."""
    responses = apply_filter(images, kernel)
    seconds = []
    for _ in range(repeats):
        start = time.process_time()
        apply_filter(images, kernel)
        seconds.append(time.process_time() - start)
    return responses, 1000 * float(np.median(seconds))


def grey_images(ctx, count):
    """``count`` test images (one per class first), as grey (N, H, W) in [0, 1]. Digits
    at MNIST's 28x28; for MNIST its official test set is all this driver needs."""
    splits = ctx.load_dataset(size=28) if ctx.dataset == "digits" else ctx.load_dataset()
    x, y = splits.test.x, splits.test.y
    order = ctx.rng().permutation(len(y))
    first = [order[y[order] == c][0] for c in range(len(splits.classes)) if np.any(y == c)]
    picks = (first + [i for i in order if i not in set(first)])[:count]
    images = x[picks]
    if images.shape[1] == 3:  # colour: ITU-R 601 luma
        images = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), images, axes=(0, 1))
    else:
        images = images[:, 0]
    labels = [str(splits.classes[c]) for c in y[picks]]
    return images.astype(np.float32), labels


def plot_responses(images, labels, responses, dataset):
    """One row per image, one column per filter, a colour bar under each column."""
    rows, cols = len(images), len(KERNELS) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.8 * rows + 1.0), squeeze=False,
                             layout="constrained")
    columns = [("input", images, {}, "intensity")]
    for name, f in KERNELS.items():
        resp = responses[name]
        if f.signed:  # white is zero, red positive, blue negative
            lim = float(np.abs(resp).max()) or 1.0
            columns.append((f.label, resp, {"cmap": "RdBu_r", "norm": TwoSlopeNorm(0.0, -lim, lim)},
                            "response (signed)"))
        else:  # sharpening overshoots [0, 1] at edges: shown clipped, as an image viewer would
            clipped = resp.min() < 0 or resp.max() > 1
            columns.append((f.label, resp, {}, "intensity (clipped to [0, 1])" if clipped else "intensity"))
    for c, (title, stack, style, unit) in enumerate(columns):
        for r in range(rows):
            im = plots.show_image(axes[r, c], stack[r], **style)
        axes[0, c].set_title(title)
        cbar = fig.colorbar(im, ax=axes[:, c], location="bottom", shrink=0.9, aspect=12)
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label(unit, fontsize=8)
    for r in range(rows):
        axes[r, 0].set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"Filter responses on {dataset} test images (row label: the class; "
                 "signed responses red > 0 > blue, white = 0)", fontsize=11)
    return fig


def plot_kernels():
    fig, axes = plt.subplots(1, len(KERNELS), figsize=(2.3 * len(KERNELS), 2.8))
    for ax, f in zip(axes, KERNELS.values()):
        k = f.kernel
        offsets = np.arange(k.shape[0]) - k.shape[0] // 2
        plots.heatmap(k, f"{f.label}\n{k.shape[0]}x{k.shape[1]}, sum {k.sum():.3g}", "column offset (px)",
                      "row offset (px)" if ax is axes[0] else "", ax=ax, x_labels=offsets, y_labels=offsets,
                      signed=True, colorbar=None, annotate="{:.2g}" if k.shape[0] > 3 else "{:.3g}")
        ax.set(aspect="equal")
        ax.grid(False)  # the grid would run through the cells' centres
        ax.title.set_fontsize(9)
        lim = np.abs(k).max()
        for text, value in zip(ax.texts, k.flat):  # white on the dark cells; small in the 5x5
            text.set(color="white" if abs(value) > 0.6 * lim else "black", fontsize=6 if k.shape[0] > 3 else 9)
    fig.suptitle("The kernels (weights of a 1-in, 1-out conv2d; red positive, blue negative)")
    fig.tight_layout()
    return fig


def run(ctx):
    from scipy import ndimage

    images, labels = grey_images(ctx, ctx.config.images)
    ctx.log(f"{len(images)} images of {images.shape[1]}x{images.shape[2]} px from {ctx.dataset}")
    responses, metrics = {}, {"dataset": ctx.dataset, "images": len(images),
                              "image_size": list(images.shape[1:]), "filters": {}}
    for name in ctx.progress(KERNELS, "filters"):
        kernel = KERNELS[name].kernel
        resp, cpu_ms = timed_filter(images, kernel)
        responses[name] = resp
        # the same cross-correlation by scipy, same border: the check a student would do
        expected = np.stack([ndimage.correlate(im.astype(np.float64), kernel, mode="mirror")
                             for im in images])
        metrics["filters"][name] = {
            "kernel": kernel.tolist(), "kernel_sum": float(kernel.sum()),
            "mean_abs_response": float(np.abs(resp).mean()),
            "min_response": float(resp.min()), "max_response": float(resp.max()),
            "max_abs_diff_vs_scipy": float(np.abs(resp - expected).max()),
            "conv2d_cpu_ms": cpu_ms}
    metrics["max_abs_diff_vs_scipy"] = max(f["max_abs_diff_vs_scipy"] for f in metrics["filters"].values())

    ctx.save_figure(plot_responses(images, labels, responses, ctx.dataset), "responses",
                    "Each row one test image, each column one filter. Blurs (grey) smooth the "
                    "strokes; signed responses use a diverging map, white = 0: Sobel x is red "
                    "where brightness rises to the right, Sobel y where it rises downwards, "
                    "the Laplacian is negative on bright strokes and positive beside them.")
    ctx.save_figure(plot_kernels(), "kernels",
                    "The six kernels as conv2d weights, with their values. Blurs sum to 1 "
                    "(keep the mean brightness), edge and Laplacian kernels to 0 (flat regions "
                    "give 0), sharpen to 1 (identity plus a negative Laplacian).")
    ctx.table("filters", [{"filter": KERNELS[n].label, "size": "x".join(map(str, KERNELS[n].kernel.shape)),
                           **{k: v for k, v in f.items() if k != "kernel"}}
                          for n, f in metrics["filters"].items()],
              "Response statistics per filter, and the largest difference between minidl's "
              "conv2d and scipy.ndimage.correlate (mode 'mirror') on the same images "
              "(float32 rounding); the CPU time of one conv2d over all the images, the median of 5 "
              "calls after a first, untimed one.",
              columns={"filter": "filter", "size": "size", "kernel_sum": ("kernel sum", "{:.3g}"),
                       "mean_abs_response": ("mean |response|", "{:.4f}"),
                       "min_response": ("min", "{:.3f}"), "max_response": ("max", "{:.3f}"),
                       "max_abs_diff_vs_scipy": ("max |minidl - scipy|", "{:.1e}"),
                       "conv2d_cpu_ms": ("conv2d CPU (ms)", "{:.2f}")})
    ctx.headline("largest |minidl conv2d - scipy| over the filters", metrics["max_abs_diff_vs_scipy"], 1e-5,
                 "float32 rounding (1e-5)", unit="", higher_is_better=False)
    ctx.note(f"minidl's conv2d agrees with scipy.ndimage.correlate to "
             f"{metrics['max_abs_diff_vs_scipy']:.1e} on every filter: conv2d is a "
             f"cross-correlation, so Sobel x as written responds positively to dark-to-bright "
             f"edges from left to right.")
    return metrics
