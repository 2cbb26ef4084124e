"""Every figure of one kind drawn one way: training curves, confusion matrices, image
grids, bar charts, heat maps and t-SNE scatters. Each function returns a matplotlib
Figure, with a title, axis labels and units, ready for ``ctx.save_figure``; where a
driver needs several panels it passes ``ax=`` and lays them out itself.

Conventions: accuracies are given as fractions and drawn in per cent; training
series are solid, validation dashed, in one colour per run; a chance level is a
grey dotted line.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

PERCENT_KEYS = ("accuracy",)  # history keys drawn in per cent


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _finish(fig, ax, title, xlabel, ylabel, legend=True, grid=True):
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if grid:
        ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _rows(history):
    """A history as a dict of lists, from a dict of lists or a list of dicts."""
    if isinstance(history, dict):
        return {k: list(v) for k, v in history.items()}
    keys = dict.fromkeys(k for row in history for k in row)
    return {k: [row.get(k, np.nan) for row in history] for k in keys}


def _is_percent(metric):
    return any(k in metric for k in PERCENT_KEYS)


# ---------------------------------------------------------------- curves
def training_curves(histories, metrics=("loss", "accuracy"), title="", chance=None, xlabel="epoch",
                    units=None, log=(), separate_validation=False, titles=None):
    """One panel per metric, one colour per run: ``histories`` maps a run's label to its
    history (minidl's dict of lists or the torch Trainer's list of dicts); the metric's
    training values are solid, its ``val_`` values dashed, or in a panel of their own
    with ``separate_validation`` (clearer with many runs). ``chance`` (a fraction) marks
    the accuracy panels; ``units`` maps a metric to its axis label, ``titles`` to its
    panel title; ``log`` lists metrics drawn on a log scale."""
    units, titles = units or {}, titles or {}
    parts = (("train", ""), ("validation", "val_"))
    panels = [(m, [p]) for m in metrics for p in parts] if separate_validation else [(m, parts) for m in metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False)
    for ax, (metric, panel_parts) in zip(axes[0], panels):
        scale = 100 if _is_percent(metric) else 1
        for i, (label, history) in enumerate(histories.items()):
            h = _rows(history)
            for part, prefix in panel_parts:
                if prefix + metric in h:
                    values = scale * np.asarray(h[prefix + metric], dtype=float)
                    name = label if len(panel_parts) == 1 else (f"{label}, {part}" if len(histories) > 1 else part)
                    ax.plot(np.arange(1, len(values) + 1), values, "--" if prefix else "-", color=f"C{i}",
                            marker="o" if len(values) <= 30 else None, ms=3, label=name)
        if chance is not None and _is_percent(metric):
            ax.axhline(100 * chance, color="0.5", ls=":", lw=1, label=f"chance ({100 * chance:.0f} %)")
        if metric in log:
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        pretty = metric.replace("_", " ")
        ylabel = units.get(metric, f"{pretty} (%)" if scale == 100 else pretty)
        heading = titles.get(metric, pretty.capitalize())
        if len(panel_parts) == 1:
            heading += f", {panel_parts[0][0]}"
        _finish(fig, ax, heading, xlabel, ylabel)
    if title:
        fig.suptitle(title)
        fig.tight_layout()
    return fig


def line_plot(series, title, xlabel, ylabel, ax=None, chance=None, logx=False, logy=False, figsize=(7, 4.2),
              unit=""):
    """Lines from ``{label: (x, y)}``, a marker at each point; ``chance`` is a y level,
    labelled with ``unit`` (" %")."""
    fig, ax = _axes(ax, figsize)
    for i, (label, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, "-o", ms=4, color=f"C{i}", label=label)
    if chance is not None:
        ax.axhline(chance, color="0.5", ls=":", lw=1, label=f"chance ({chance:g}{unit})")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    return _finish(fig, ax, title, xlabel, ylabel)


# ------------------------------------------------------------ matrices
def confusion_matrix(matrix, classes, title, ax=None, fontsize=None):
    """Rows are true classes. Each cell holds its count of images and, under it, its
    share of the row (the colour); empty cells are left blank. Counts are what a text
    quotes ("12 test images"), shares what compares classes of different sizes."""
    counts = np.asarray(matrix)
    rates = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = _axes(ax, (0.62 * n + 3.2, 0.55 * n + 2.6))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
    size = fontsize or (7 if n <= 10 else 5.5)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, f"{counts[i, j]:.0f}\n{rates[i, j]:.0f}%", ha="center", va="center",
                        fontsize=size, linespacing=0.95, color="white" if rates[i, j] > 55 else "black")
    long = max(len(str(c)) for c in classes) > 2
    ax.set_xticks(range(n), classes, rotation=45 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class (colour)")
    return _finish(fig, ax, title + "\n(cells: images, % of the true class)", "predicted class", "true class",
                   legend=False, grid=False)


def heatmap(matrix, title, xlabel, ylabel, ax=None, x_labels=None, y_labels=None, signed=None,
            colorbar="value", annotate=None, figsize=(6, 4.8), fontsize=7):
    """A matrix as colours. Signed values (``signed``, or any value below zero) use a
    diverging map with white at zero and limits symmetric about it, so that red and blue
    of the same depth mean the same size; others a sequential map. ``annotate`` is a
    format ("{:.2f}") for the values in the cells."""
    matrix = np.asarray(matrix, dtype=float)
    signed = bool((matrix < 0).any()) if signed is None else signed
    fig, ax = _axes(ax, figsize)
    if signed:
        top = max(float(np.nanmax(np.abs(matrix))), 1e-12)
        im = ax.imshow(matrix, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -top, top), aspect="auto")
    else:
        im = ax.imshow(matrix, cmap="viridis", aspect="auto")
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=45 if max(map(len, map(str, x_labels))) > 3 else 0,
                      ha="right" if max(map(len, map(str, x_labels))) > 3 else "center", fontsize=8)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), y_labels, fontsize=8)
    if annotate:  # white on the dark cells: the deep ends of a diverging map, the low end of viridis
        low, high = np.nanmin(matrix), np.nanmax(matrix)
        for (i, j), value in np.ndenumerate(matrix):
            dark = abs(value) > 0.6 * top if signed else value < low + 0.5 * (high - low)
            ax.text(j, i, annotate.format(value), ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar)
    return _finish(fig, ax, title, xlabel, ylabel, legend=False, grid=False)


# --------------------------------------------------------------- images
def as_image(image):
    """(C, H, W) or (H, W) in [0, 1] -> what ``imshow`` draws as it is: (H, W, 3) or (H, W)."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return np.clip(image, 0, 1)


def show_image(ax, image, title=None, fontsize=9, **imshow):
    """One image without ticks, pixels as squares (no smoothing of 28-pixel images)."""
    shown = as_image(image) if not imshow else np.asarray(image)
    style = {"cmap": "gray", "vmin": 0, "vmax": 1} if shown.ndim == 2 and not imshow else {}
    im = ax.imshow(shown, interpolation="nearest", **{**style, **imshow})
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
    return im


def image_grid(images, title, captions=None, columns=8, row_labels=None, size=1.3, **imshow):
    """Images (N, C, H, W), (N, H, W) or a list of them, ``columns`` to a row, each with
    its caption under it; ``row_labels`` name the rows at the left. Cells past the last
    image stay empty. ``imshow`` options (cmap, vmin, vmax) replace the [0, 1] display."""
    n = len(images)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns + (1.2 if row_labels else 0.3),
                                                     size * rows + 0.7 + (0.25 * rows if captions else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            show_image(ax, images[k], captions[k] if captions else None, fontsize=8, **imshow)
        else:
            ax.axis("off")
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------- bars
def bar_chart(values, title, ylabel, ax=None, errors=None, fmt="{:.1f}", chance=None, baseline=None,
              colors=None, xlabel="", rotation=0, figsize=None, ylim=None, unit=""):
    """Bars with their values written on them. ``values`` maps a bar's label to its
    height, or a group's label to ``{series: height}`` (grouped bars, one colour per
    series, a legend). ``errors`` has the same shape (standard deviations, drawn as
    error bars); ``chance`` and ``baseline`` are horizontal reference lines, the chance
    level labelled with ``unit`` (" %")."""
    grouped = isinstance(next(iter(values.values())), dict)
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g])) if grouped else [None]
    fig, ax = _axes(ax, figsize or (max(5.5, 0.9 * len(groups) * len(series) + 2), 4.2))
    width = 0.8 / len(series)
    pos = np.arange(len(groups))
    top = 0.0
    for i, name in enumerate(series):
        heights = [values[g].get(name, np.nan) if grouped else values[g] for g in groups]
        errs = None
        if errors is not None:
            errs = [errors[g].get(name, 0) if grouped else errors[g] for g in groups]
        color = (colors[i] if grouped else colors) if colors is not None else (f"C{i}" if grouped else "C0")
        bars = ax.bar(pos + (i - (len(series) - 1) / 2) * width, heights, width, yerr=errs, capsize=3,
                      color=color, label=name)
        ax.bar_label(bars, [fmt.format(h) if np.isfinite(h) else "" for h in heights], fontsize=7,
                     padding=2)
        top = max(top, np.nanmax(np.asarray(heights, dtype=float) + (np.asarray(errs) if errs else 0)))
    if chance is not None:
        ax.axhline(chance, color="0.5", ls=":", lw=1, label=f"chance ({fmt.format(chance)}{unit})")
    if baseline is not None:
        label, level = baseline
        ax.axhline(level, color="0.3", ls="--", lw=1, label=label)
    ax.set_xticks(pos, groups, rotation=rotation, ha="right" if rotation else "center", fontsize=8)
    ax.set_ylim(ylim or (0, top * 1.25 if top > 0 else 1))
    ax.grid(axis="y", alpha=0.3)
    _finish(fig, ax, title, xlabel, ylabel)
    ax.grid(axis="x", visible=False)
    return fig


# ---------------------------------------------------------------- t-SNE
def tsne_embedding(features, seed=0):
    """A 2-D t-SNE of ``features`` (N, D), deterministic for a seed. One thread:
    sklearn's Barnes-Hut gradient in OpenMP threads ran many times slower than one
    thread on a small, busy machine (measured: 18 s against 1.3 s CPU, 800 points)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca",
                random_state=seed, max_iter=750 if len(features) > 150 else 500)
    with threadpool_limits(1):
        return tsne.fit_transform(features)


def scatter_2d(points, labels, classes, title, ax=None, markers=None, xlabel="t-SNE 1", ylabel="t-SNE 2",
               colors=None):
    """2-D points coloured by class (a legend of class names); ``markers`` maps a group
    name to a boolean mask drawn with its own marker (e.g. train and test); ``colors``
    (one per class) replace tab10, e.g. to keep grey and black for other marks."""
    points, labels = np.asarray(points), np.asarray(labels)
    fig, ax = _axes(ax, (6.4, 5.4))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    if colors is not None:
        from matplotlib.colors import ListedColormap
        cmap = ListedColormap(colors)
    groups = markers or {None: np.ones(len(labels), bool)}
    for (group, mask), marker in zip(groups.items(), "o^sD"):
        for k, name in enumerate(classes):
            pick = mask & (labels == k)
            ax.scatter(points[pick, 0], points[pick, 1], s=12, marker=marker, color=cmap(k % cmap.N),
                       alpha=0.8, label=name if marker == "o" else None)
    for group, marker in zip(groups, "o^sD"):
        if group is not None:
            ax.scatter([], [], marker=marker, color="0.4", label=group)
    ax.set_xticks([])
    ax.set_yticks([])
    _finish(fig, ax, title, xlabel, ylabel, legend=False)
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=2 if len(classes) > 6 else 1)
    return fig


def tsne_scatter(features, labels, classes, title, seed=0, ax=None, markers=None):
    """t-SNE of ``features`` drawn as :func:`scatter_2d`."""
    return scatter_2d(tsne_embedding(features, seed), labels, classes, title, ax=ax, markers=markers)


# ----------------------------------------------------------------- text
def text_panels(texts, title, columns=2, fontsize=7.5, width=6.4):
    """Texts side by side in a monospace font (samples of a language model), ``texts``
    mapping each panel's title to its text. The panels have no axes: nothing in them is
    measured along x or y."""
    n = len(texts)
    columns = min(columns, n)
    rows = -(-n // columns)
    lines = max(text.count("\n") + 1 for text in texts.values())
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, rows * (0.15 * lines + 0.5) + 0.4),
                             squeeze=False)
    for ax, (name, text) in zip(axes.flat, texts.items()):
        ax.text(0.01, 0.98, text, family="monospace", fontsize=fontsize, va="top", ha="left", transform=ax.transAxes)
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- graphs
def graph_drawing(positions, edges, title, ax=None, labels=None, colors=None, highlight=()):
    """A small undirected graph: ``positions`` (N, 2), ``edges`` pairs (i, j), nodes drawn
    as numbered circles (``labels`` replace the numbers; ``colors`` one per node); the
    nodes in ``highlight`` get a thick outline."""
    positions = np.asarray(positions, dtype=float)
    fig, ax = _axes(ax, (4, 4))
    for i, j in edges:
        ax.plot(*positions[[i, j]].T, color="0.55", lw=1.5, zorder=1)
    for k, (px, py) in enumerate(positions):
        ax.scatter(px, py, s=420, color=colors[k] if colors is not None else "tab:blue", zorder=2,
                   edgecolors="black", linewidths=2.5 if k in highlight else 0.5)
        ax.text(px, py, labels[k] if labels is not None else str(k), ha="center", va="center", color="white",
                fontsize=10, fontweight="bold", zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    ax.margins(0.18)
    return _finish(fig, ax, title, "", "", legend=False, grid=False)


def attention_maps(weights, labels, title, size=3.6):
    """One heat map per attention head, ``weights`` (heads, T, T) with rows the querying
    positions; ``labels`` name the T positions (characters, tokens) on both axes."""
    heads = len(weights)
    fig, axes = plt.subplots(1, heads, figsize=(size * heads + 1, size + 0.3), squeeze=False)
    for h, ax in enumerate(axes[0]):
        heatmap(weights[h], f"head {h + 1}", "key (attended) position", "query position" if h == 0 else "", ax=ax,
                x_labels=labels, y_labels=labels, colorbar="weight" if h == heads - 1 else None)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
