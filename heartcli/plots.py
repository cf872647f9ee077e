"""PNG figures: training curves, confusion matrices and ECG strips (matplotlib, Agg backend,
atomic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heartcli.io import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss, validation macro-F1 and learning rate per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, [h["val_macro_f1"] for h in history], color="tab:green")
    axes[1].set_title("validation macro-F1")
    axes[2].plot(epochs, [h["lr"] for h in history], color="tab:red")
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Counts, shaded by row share (recall), true class down, predicted across."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 1.0 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(int(matrix[i, j])),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="row share")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def ecg_strips(strips: list[dict[str, Any]], path: Path, title: str) -> None:
    """ECG strips one above the other: each a dict of ``t`` (seconds), ``mv`` (the signal in
    millivolts) and ``beats``, a list of ``(time in seconds, reference class, predicted
    class)`` ("" for the side a missed or false beat lacks). The reference class is written
    above each beat, the predicted one below; a disagreement is red, with a red band."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(strips), 1, figsize=(14, 2.9 * len(strips)), squeeze=False)
    for ax, strip in zip(axes[:, 0], strips, strict=True):
        t, mv = np.asarray(strip["t"]), np.asarray(strip["mv"])
        ax.plot(t, mv, color="black", linewidth=0.7)
        low, high = (float(mv.min()), float(mv.max())) if len(mv) else (0.0, 1.0)
        pad = 0.25 * max(high - low, 0.5)
        ax.set_ylim(low - 1.6 * pad, high + 1.6 * pad)
        wrong = 0
        for at, ref, test in strip["beats"]:
            bad = ref != test
            wrong += bad
            colour = "red" if bad else "tab:blue"
            if bad:
                ax.axvspan(at - 0.15, at + 0.15, color="red", alpha=0.15, linewidth=0)
            ax.text(
                at,
                high + pad,
                ref or "-",
                ha="center",
                va="bottom",
                fontsize=8,
                color="red" if bad else "dimgray",
                fontweight="bold" if bad else "normal",
            )
            ax.text(at, low - pad, test or "-", ha="center", va="top", fontsize=8,
                    color=colour, fontweight="bold" if bad else "normal")  # fmt: skip
        if len(t):
            ax.set_xlim(float(t[0]), float(t[-1]))
            ax.set_title(
                f"{t[0]:.1f}-{t[-1]:.1f} s: {wrong} disagreement(s)", fontsize=9, loc="left"
            )
        ax.set_ylabel("mV")
        ax.grid(alpha=0.25)
    axes[-1, 0].set_xlabel("time (s); above the signal: reference (.atr), below: heart")
    fig.suptitle(f"{title}  (red: disagreement, '-': no beat on that side)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
