"""Figures people would rather look at than read. Written as PNG next to the run's data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from protocols.tuning import ArrayTuneResult  # noqa: E402


def plot_tuning(result: ArrayTuneResult, tolerance: float, path: Path) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    lo = np.nanmin(result.targets) * 1e6
    hi = np.nanmax(result.targets) * 1e6
    for ax, data, title in ((axes[0], result.targets, "target (uS)"), (axes[1], result.final, "final read (uS)")):
        im = ax.imshow(data * 1e6, vmin=lo * 0.8, vmax=hi * 1.1, cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    err = (result.final / result.targets - 1) * 100
    lim = max(3 * tolerance * 100, float(np.nanmax(np.abs(err))) if np.isfinite(err).any() else 1)
    im = axes[2].imshow(err, vmin=-lim, vmax=lim, cmap="coolwarm")
    axes[2].set_title(f"error (%), tolerance +/-{tolerance * 100:g}%")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for r, c in zip(*np.nonzero(np.abs(err) > tolerance * 100)):
        axes[2].text(c, r, "x", ha="center", va="center", color="k")
    targeted = np.isfinite(result.targets)
    axes[3].hist(result.pulses[targeted], bins=20, color="0.4")
    axes[3].set_title("pulses per device")
    axes[3].set_xlabel("pulses")
    for ax in axes[:3]:
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(kind: str, arrays: dict, summary: dict, folder: Path) -> list[Path]:
    """The figures of a run of this kind from its arrays and summary, into `folder` (a
    protocol run as it ends, or an old run again: `memlab runs plot`)."""
    if kind == "read-map":
        return [plot_read_map(arrays["conductance"], arrays["read_spread"], folder / "read_map.png")]
    if kind in ("tune", "demo"):
        result = ArrayTuneResult(targets=arrays["targets"], final=arrays["final"], pulses=arrays["pulses"])
        return [plot_tuning(result, summary["tolerance"], folder / "tuning.png")]
    return []


def plot_read_map(g: np.ndarray, spread: np.ndarray, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    im = axes[0].imshow(g * 1e6, cmap="viridis")
    axes[0].set_title("conductance (uS)")
    axes[0].set_xlabel("column")
    axes[0].set_ylabel("row")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    rel = (spread / g * 100)[np.isfinite(spread)]
    if rel.size:
        axes[1].hist(rel, bins=20, color="0.4")
    axes[1].set_title("read-to-read spread (% of G)")
    axes[1].set_xlabel("sd / mean (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
