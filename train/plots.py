"""Evaluation figures as PNG files: data in, one file out, nothing else touched.

Shared by ``train.evaluate``, ``train.gradcam`` and the quantize/benchmark reports.
Uses matplotlib's Agg canvas directly (no pyplot), so it never needs a display and
leaves no global figure state behind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from train.metrics import roc_auc, roc_curve


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_confusion_matrix(cm, labels, path: Path, *, title: str = "Confusion matrix") -> Path:
    """Counts (left) and row-normalized recall per true class (right)."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    k = len(labels)
    fig = Figure(figsize=(2.0 + 1.2 * k, 1.0 + 0.6 * k))
    panels = ((cm, "counts", "d"), (norm, "row-normalized", ".2f"))
    for ax, (values, sub, fmt) in zip(fig.subplots(1, 2), panels):
        ax.imshow(values / max(values.max(), 1e-12), cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                # Dark cells get white text so every number stays readable.
                dark = values[i, j] > 0.5 * values.max()
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(k), labels, rotation=45)
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({sub})")
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(y_true, probs, labels, path: Path, *, title: str = "ROC, one-vs-rest") -> Path:
    """One ROC curve per class present in ``y_true``, AUC per class and macro AUC in the legend."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    aucs = []
    for i, code in enumerate(labels):
        positives = y_true == i
        if not positives.any() or positives.all():
            continue  # AUC is undefined without both positives and negatives
        auc = roc_auc(positives, probs[:, i])
        aucs.append(auc)
        fpr, tpr = roc_curve(positives, probs[:, i])
        ax.plot(fpr, tpr, lw=1.5, label=f"{code} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    macro = f"macro AUC {np.mean(aucs):.3f}" if aucs else "macro AUC n/a"
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=title)
    ax.legend(loc="lower right", fontsize=8, title=macro, title_fontsize=8)
    return _save(fig, path)


def plot_training_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss, accuracy, validation balanced accuracy and learning rate per epoch.

    ``history`` maps column names of a run's history.csv (``epoch``, ``loss``,
    ``val_loss``, ``accuracy``, ``val_accuracy``, ``val_balanced_accuracy``, ``lr``)
    to per-epoch values; missing columns leave their panel empty.
    """
    epochs = np.asarray(history.get("epoch", []), dtype=np.float64) + 1
    panels = (
        ("loss", ("loss", "val_loss")),
        ("accuracy", ("accuracy", "val_accuracy")),
        ("validation balanced accuracy", ("val_balanced_accuracy",)),
        ("learning rate", ("lr",)),
    )
    fig = Figure(figsize=(11, 7))
    for ax, (title, keys) in zip(fig.subplots(2, 2).ravel(), panels):
        for key in keys:
            if history.get(key):
                ax.plot(epochs[: len(history[key])], history[key], marker="o", ms=3, label=key)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == "learning rate" and history.get("lr"):
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_image_pair(left: np.ndarray, right: np.ndarray, path: Path, *, title: str = "",
                    captions: tuple[str, str] = ("image", "Grad-CAM")) -> Path:
    """Two RGB uint8 images side by side (e.g. an input and its heatmap overlay)."""
    fig = Figure(figsize=(7, 3.2))
    for ax, img, caption in zip(fig.subplots(1, 2), (left, right), captions):
        ax.imshow(img)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
