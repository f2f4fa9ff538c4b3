"""The STAR trajectory of one example as a PNG: its response coloured chunk by chunk by P(safe),
above the score curve, with the colour scale and the verdict threshold labelled."""

from __future__ import annotations

import textwrap

import numpy as np

from dss.segments import Trajectory

__all__ = ["plot_trajectory"]

THRESHOLD = 0.5  # the guardrail's own verdict: safe where P(safe) >= 0.5


def plot_trajectory(example, traj: Trajectory, out_path, title: str | None = None):
    """The response coloured chunk by chunk by P(safe) (red = unsafe), above the score curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

    cmap = plt.get_cmap("RdYlGn")
    lines, line, width, start = [], [], 0, 0
    for end, p in zip(traj.char_ends, traj.safe_prob):
        for piece_i, piece in enumerate(example["response"][start:end].split("\n")):
            if piece_i > 0 or width + len(piece) > 95:
                lines.append(line)
                line, width = [], 0
            if piece:
                color = cmap(float(np.nan_to_num(p, nan=0.5)))
                line.append(TextArea(piece, textprops=dict(fontsize=8, family="monospace",
                                                           bbox=dict(facecolor=color, edgecolor="none", pad=1))))
                width += len(piece)
        start = end
    lines.append(line)
    rows = [HPacker(children=l, pad=0, sep=0) for l in lines if l]
    text_height = 0.6 + 0.2 * len(rows)
    fig, (ax_text, ax_curve) = plt.subplots(2, 1, figsize=(10, text_height + 2.4), height_ratios=[text_height, 2.4])
    ax_text.axis("off")
    if rows:
        box = VPacker(children=rows, pad=0, sep=3)
        ax_text.add_artist(AnchoredOffsetbox(loc="upper left", child=box, frameon=False, bbox_to_anchor=(0, 1),
                                             bbox_transform=ax_text.transAxes, borderpad=0))
    ax_text.set_title(title or textwrap.shorten(example["prompt"], 110), fontsize=9, loc="left")
    chunks = np.arange(1, len(traj.safe_prob) + 1)
    ax_curve.plot(chunks, traj.safe_prob, color="0.3", lw=1, label="P(safe) after each chunk")
    ax_curve.scatter(chunks, traj.safe_prob, c=np.nan_to_num(traj.safe_prob, nan=0.5), cmap=cmap, vmin=0, vmax=1,
                     s=14, zorder=3, edgecolors="0.3", linewidths=0.4)
    ax_curve.axhline(THRESHOLD, color="gray", lw=0.8, ls="--", label=f"verdict threshold {THRESHOLD} (below: unsafe)")
    ax_curve.set(xlabel="chunk (cumulative prefix of the response)", ylabel="P(safe)", ylim=(-0.05, 1.05))
    ax_curve.legend(loc="lower left", fontsize=7, frameon=False)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=[ax_text, ax_curve], fraction=0.025, pad=0.01)
    bar.set_label("P(safe) (text and points)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(out_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
