"""Diagrams the notebooks draw with matplotlib: the DeepSeekMoE layer, sort-and-dispatch, the bias timeline, Meta's
and DeepSeek-V3's multi-token prediction; ``box`` and ``arrow``, the pieces they are drawn with; and ``log_axis``, a
logarithmic axis labelled in plain numbers.

Each diagram function returns a matplotlib Figure (the notebook shows it); nothing is read from image files.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

_ROUTED = "#9ecae1"  # a chosen routed expert
_IDLE = "#e6e6e6"  # a routed expert this token does not use
_SHARED = "#a1d99b"
_ROUTER = "#fdd0a2"


def log_axis(ax: plt.Axes, which: str = "y", base: float = 10) -> None:
    """Make the ``which`` ("x" or "y") axis of ``ax`` logarithmic in ``base``, labelled in plain numbers: 2, 3, 10,
    1000 (matplotlib's default writes 2x10^0 on an axis that spans less than a decade). Raises ValueError for
    another ``which``."""
    if which not in ("x", "y"):
        raise ValueError(f"which must be 'x' or 'y', got {which!r}")
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=base)
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(ticker.LogFormatter(base=base))
    axis.set_minor_formatter(ticker.LogFormatter(base=base))  # labels minor ticks only where few decades are shown


def box(ax: plt.Axes, x: float, y: float, w: float, h: float, text: str, colour: str, size: int = 9, *,
        rounded: bool = True, linewidth: float = 0.8) -> None:
    """A box of width ``w`` and height ``h`` (data units) centred on (x, y), filled with ``colour``, with its label
    ``text`` in font size ``size``: rounded corners, or a plain rectangle with ``rounded=False``."""
    corner = (x - w / 2, y - h / 2)
    ax.add_patch(FancyBboxPatch(corner, w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=colour,
                                edgecolor="black", linewidth=linewidth) if rounded else
                 Rectangle(corner, w, h, facecolor=colour, edgecolor="black", linewidth=linewidth))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)


def arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], text: str = "", style: str = "-",
          colour: str = "black", rad: float = 0.0, linewidth: float = 1.0) -> None:
    """An arrow from ``start`` to ``end`` (data units), straight or bent by ``rad``, dashed with ``style="--"``,
    with an optional label ``text`` above its middle."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", linestyle=style, color=colour,
                                                          linewidth=linewidth, connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom",
                fontsize=8, color=colour)


def _canvas(width: float, height: float, xlim: float, ylim: float) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, xlim)
    ax.set_ylim(0, ylim)
    ax.axis("off")
    return fig, ax


def moe_layer_diagram(n_shown: int = 8, chosen: tuple[int, ...] = (2, 6)) -> Figure:
    """The DeepSeekMoE layer for one token u_t ([V3] eqs. 12-16): the router scores every routed expert, the
    biased top-k chooses K_r of them, the unbiased scores normalised over the chosen ones weigh their outputs,
    the shared expert runs for every token, and the weighted sum plus the residual gives h'_t.

    n_shown routed experts are drawn (V3 has 256); those in ``chosen`` are the token's top-k.
    """
    fig, ax = _canvas(10, 4.6, 12.4, 6.2)
    box(ax, 0.8, 3.2, 1.2, 0.8, "token\n$u_t$", "white", 10)
    # router, selection, gate weights
    box(ax, 3.1, 5.4, 2.4, 0.9, "router: scores\n$s_{i,t} = \\sigma(u_t^\\top e_i)$", _ROUTER)
    box(ax, 6.2, 5.4, 2.6, 0.9, "top-$K_r$ of $s_{i,t} + b_i$\n(the bias chooses)", _ROUTER)
    box(ax, 9.3, 5.4, 2.6, 0.9, "gate weights $g_{i,t}$:\nchosen $s_{i,t}$ / their sum", _ROUTER)
    arrow(ax, (1.4, 3.5), (1.9, 5.2))
    arrow(ax, (4.3, 5.4), (4.9, 5.4))
    arrow(ax, (7.5, 5.4), (8.0, 5.4))
    # routed experts
    xs = [2.4 + i * 0.95 for i in range(n_shown)]
    for i, x in enumerate(xs):
        label = f"$E_{{{i + 1}}}$" if i < n_shown - 1 else f"$E_{{N_r}}$"
        box(ax, x, 3.2, 0.75, 0.7, label, _ROUTED if i in chosen else _IDLE)
    ax.text(xs[0] - 0.45, 2.55, f"routed experts (SwiGLU FFNs; V3: 256, each token uses $K_r$ = 8; here {len(chosen)})",
            ha="left", va="top", fontsize=8)
    arrow(ax, (1.4, 3.2), (xs[0] - 0.4, 3.2))
    for i in chosen:  # which experts run: decided by the biased top-k
        arrow(ax, (6.2, 4.95), (xs[i], 3.56), style="--", colour="tab:blue")
    # shared expert
    box(ax, 5.5, 1.2, 3.0, 0.7, "shared expert $\\mathrm{FFN}^{(s)}$: every token", _SHARED)
    arrow(ax, (1.2, 2.8), (4.0, 1.2), rad=0.1)
    # weighted sum
    ax.add_patch(plt.Circle((10.9, 2.4), 0.42, facecolor="white", edgecolor="black"))
    ax.text(10.9, 2.4, "$\\Sigma$", ha="center", va="center", fontsize=13)
    for i in chosen:  # the chosen experts' outputs, below the row of experts
        arrow(ax, (xs[i], 2.85), (10.5, 2.3), text="", colour="tab:blue", rad=0.2)
    arrow(ax, (9.3, 4.95), (10.9, 2.82), text="$\\times g_{i,t}$", colour="tab:orange")
    arrow(ax, (7.0, 1.2), (10.55, 2.2))
    ax.plot([0.8, 0.8, 10.9], [2.8, 0.35, 0.35], color="black", linewidth=1.0)  # the residual
    arrow(ax, (10.9, 0.35), (10.9, 1.98))
    ax.text(6.3, 0.42, "residual $u_t$ (added by the block around the layer)", ha="center", va="bottom", fontsize=8)
    arrow(ax, (11.32, 2.4), (12.3, 2.4))
    ax.text(11.85, 2.55, "$h'_t$", ha="center", va="bottom", fontsize=11)
    ax.set_title("The DeepSeekMoE layer for one token ([V3] eqs. 12-16): "
                 "$h'_t = u_t + \\mathrm{FFN}^{(s)}(u_t) + \\sum_i g_{i,t}\\,\\mathrm{FFN}^{(r)}_i(u_t)$", fontsize=10)
    fig.tight_layout()
    return fig


def dispatch_diagram(chosen: torch.Tensor, n_experts: int) -> Figure:
    """Sort-and-dispatch for ``chosen`` [tokens, k] expert ids: the (token, slot) pairs in their order, the same
    pairs sorted by expert (each expert's tokens one contiguous block, one matrix product per expert), and the
    way back (outputs times gate weights, added to their tokens' rows)."""
    tokens, k = chosen.shape
    flat = chosen.reshape(-1).tolist()
    order = torch.tensor(flat).argsort(stable=True).tolist()
    colours = plt.cm.tab10(torch.arange(n_experts).numpy() % 10)
    n = len(flat)
    fig, ax = _canvas(10, 3.8, n + 2.2, 5.0)
    ax.text(0.1, 4.2, "pairs\n(token, slot)", fontsize=8, va="center")
    ax.text(0.1, 1.9, "sorted\nby expert", fontsize=8, va="center")
    for position, expert in enumerate(flat):
        token = position // k
        box(ax, 1.9 + position, 4.2, 0.8, 0.7, f"t{token}\n→ E{expert}", colours[expert], 8)
    for slot, source in enumerate(order):
        expert, token = flat[source], source // k
        box(ax, 1.9 + slot, 1.9, 0.8, 0.7, f"t{token}\n→ E{expert}", colours[expert], 8)
        arrow(ax, (1.9 + source, 3.82), (1.9 + slot, 2.28), colour="gray")
    start = 0
    for expert in range(n_experts):  # a bracket under each expert's block
        size = flat.count(expert)
        if size:
            left, right = 1.9 + start - 0.4, 1.9 + start + size - 0.6
            ax.plot([left, left, right, right], [1.4, 1.3, 1.3, 1.4], color="black", linewidth=0.8)
            ax.text((left + right) / 2, 1.15, f"E{expert}: 1 matmul\non {size} token{'s' if size > 1 else ''}",
                    ha="center", va="top", fontsize=7)
        start += size
    ax.text(n / 2 + 1.5, 0.05, f"then: outputs x gate weights, added back to their tokens' rows (index_add); "
                               f"experts with no token ({', '.join(f'E{e}' for e in range(n_experts) if e not in flat) or 'none'}) "
                               f"do no work", ha="center", fontsize=8)
    ax.set_title(f"Sort-and-dispatch: {tokens} tokens x top-{k} = {n} pairs, grouped by expert with one argsort",
                 fontsize=10)
    fig.tight_layout()
    return fig


def bias_timeline_diagram(n_steps: int = 3) -> Figure:
    """When the auxiliary-loss-free bias changes ([V3] 2.1.2, [LF]): step t routes with the bias b^(t), counts
    the loads c^(t) over all its micro-batches, and only after optimizer.step() computes
    b^(t+1) = b^(t) + gamma * sign(mean(c^(t)) - c^(t)), which step t + 1 uses."""
    fig, ax = _canvas(10, 2.9, 3.4 * n_steps + 0.4, 3.6)
    names = ["t - 1", "t", "t + 1", "t + 2"]
    for s in range(n_steps):
        x = 0.3 + 3.4 * s
        ax.add_patch(FancyBboxPatch((x, 0.5), 3.0, 2.3, boxstyle="round,pad=0.02", facecolor="#f7f7f7",
                                    edgecolor="gray"))
        ax.text(x + 1.5, 3.05, f"training step {names[s]}", ha="center", fontsize=9, weight="bold")
        box(ax, x + 1.5, 2.2, 2.7, 0.55, f"forward + backward, routed by $b^{{({names[s]})}}$", _ROUTER, 8)
        box(ax, x + 1.5, 1.45, 2.7, 0.5, f"count loads $c^{{({names[s]})}}$ (all micro-batches)", _ROUTED, 8)
        box(ax, x + 1.5, 0.8, 2.7, 0.45, "optimizer.step(), then update bias", _SHARED, 8)
        if s + 1 < n_steps:
            arrow(ax, (x + 2.85, 0.8), (x + 3.55, 2.2), colour="tab:red", rad=0.3)
            ax.text(x + 3.2, 1.25, f"$b^{{({names[s + 1]})}}$", ha="center", fontsize=9, color="tab:red")
    ax.set_title("The bias used at step t comes from the loads of step t - 1: "
                 "$b^{(t)} = b^{(t-1)} + \\gamma\\,\\mathrm{sign}(\\bar c^{(t-1)} - c^{(t-1)})$", fontsize=10)
    fig.tight_layout()
    return fig


def mtp_designs_diagram() -> Figure:
    """Multi-token prediction two ways: Meta's parallel heads on one trunk, each predicting its token from the same
    hidden state z_i ([META]), and DeepSeek-V3's chain of MTP modules, module k also reading Emb(t_{i+k}), so that
    the causal chain is kept ([V3] 2.2, eqs. 21-23)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [5, 7.4]})

    def step(ax: plt.Axes, x: float, y: float, text: str, colour: str, w: float = 1.7) -> None:
        box(ax, x, y, w, 0.55, text, colour, 10, rounded=False, linewidth=1)

    def link(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
        arrow(ax, start, end, linewidth=1.2)

    # Meta: one trunk, parallel heads on the same hidden state z_i.
    step(left, 2.5, 0.4, "tokens $t_1 .. t_i$", "#eeeeee", w=2.2)
    step(left, 2.5, 1.5, "shared trunk", "#cfe2f3", w=2.2)
    link(left, (2.5, 0.68), (2.5, 1.22))
    for j, x in enumerate([1.0, 2.5, 4.0], start=1):
        step(left, x, 2.8, f"head {j}", "#fde9c9", w=1.2)
        link(left, (2.5, 1.78), (x, 2.52))
        left.text(x, 3.45, f"$t_{{i+{j}}}$", ha="center", fontsize=12)
        link(left, (x, 3.08), (x, 3.3))
    left.text(2.62, 2.1, "$z_i$", fontsize=11, color="#444444")
    left.set_xlim(0, 5)
    left.set_title("[META]: parallel heads on one trunk\n(each head predicts its token from the same $z_i$)")
    # DeepSeek-V3: main model, then a chain of MTP modules, each also fed Emb(t_{i+k}).
    centres = [1.0, 3.7, 6.4]
    step(right, centres[0], 0.4, "tokens $t_1 .. t_i$", "#eeeeee", w=1.8)
    step(right, centres[0], 1.5, "main model", "#cfe2f3", w=1.8)
    link(right, (centres[0], 0.68), (centres[0], 1.22))
    for k, x in enumerate(centres[1:], start=1):
        step(right, x, 0.4, f"Emb($t_{{i+{k}}}$)", "#eeeeee", w=1.6)
        step(right, x, 1.5, f"MTP module {k}", "#d9ead3", w=1.8)
        link(right, (x, 0.68), (x, 1.22))
        link(right, (centres[k - 1] + 0.9, 1.5), (x - 0.9, 1.5))
        right.text((centres[k - 1] + x) / 2, 1.62, f"$h^{k - 1}_i$", ha="center", fontsize=11, color="#444444")
    for k, x in enumerate(centres):
        step(right, x, 2.8, "shared head", "#fde9c9", w=1.6)
        link(right, (x, 1.78), (x, 2.52))
        right.text(x, 3.45, f"$t_{{i+{k + 1}}}$", ha="center", fontsize=12)
        link(right, (x, 3.08), (x, 3.3))
    right.set_xlim(0, 7.4)
    right.set_title("[V3]: sequential MTP modules\n(module k also reads the embedding of $t_{i+k}$: the causal chain "
                    "is kept)")
    for ax in (left, right):
        ax.set_ylim(-0.1, 3.8)
        ax.axis("off")
    fig.tight_layout()
    return fig
