"""1D curves and 2D surfaces of attack success over a landscape grid."""

from __future__ import annotations

import numpy as np

from dss.landscape.grid import MAX_ASR


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_1d(curves: dict, out_path, xlabel: str = "alpha", title: str | None = None) -> None:
    """ASR along one axis for one or more models: curves = {label: (alphas, asr[, marks])}, where
    marks = {alpha: text} names checkpoints on the axis (the original model at 0 is always marked)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        alphas, asr = np.asarray(curve[0]), np.asarray(curve[1], np.float64)
        marks = {0.0: "original", **(curve[2] if len(curve) > 2 else {})}
        (line,) = ax.plot(alphas, asr, marker="o", ms=3, label=label)
        for at, text in marks.items():
            i = int(np.argmin(np.abs(alphas - at)))
            if np.isclose(alphas[i], at):
                ax.plot(alphas[i], asr[i], marker="*", ms=14, color=line.get_color(), markeredgecolor="black")
                ax.annotate(text, (alphas[i], asr[i]), textcoords="offset points", fontsize=7,
                            xytext=(6, -14 if asr[i] > 90 else 8))
    ax.set(xlabel=xlabel, ylabel="ASR (%)", ylim=(-3, 103), title=title or "safety landscape")
    ax.axvline(0.0, color="gray", lw=0.5, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def plot_2d(alphas, betas, asr, contour_path, surface_path, title: str | None = None) -> None:
    """ASR over a plane (asr[i, j] at (alphas[i], betas[j])): a filled contour and a 3D surface,
    the original model starred at (0, 0)."""
    plt = _pyplot()
    alphas, betas, asr = np.asarray(alphas), np.asarray(betas), np.asarray(asr, np.float64)
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    centre = (int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(betas))))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    filled = ax.contourf(a, b, asr, levels=np.linspace(0, 100, 11), cmap="RdYlGn_r", extend="neither")
    ax.contour(a, b, asr, levels=[MAX_ASR - 1e-6], colors="black", linewidths=0.8)
    ax.plot(alphas[centre[0]], betas[centre[1]], marker="*", ms=14, color="white", markeredgecolor="black")
    fig.colorbar(filled, ax=ax, label="ASR (%)")
    ax.set(xlabel="alpha", ylabel="beta", title=title or "safety landscape")
    fig.tight_layout()
    fig.savefig(contour_path, dpi=120)
    plt.close(fig)

    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d", computed_zorder=False)  # so the star stays above the surface
    ax.plot_surface(a, b, asr, cmap="RdYlGn_r", vmin=0, vmax=100, linewidth=0, antialiased=True, alpha=0.9)
    ax.scatter([alphas[centre[0]]], [betas[centre[1]]], [asr[centre]], marker="*", s=200, color="white",
               edgecolors="black", zorder=10)
    ax.set(xlabel="alpha", ylabel="beta", zlabel="ASR (%)", zlim=(0, 100), title=title or "safety landscape")
    fig.tight_layout()
    fig.savefig(surface_path, dpi=120)
    plt.close(fig)
