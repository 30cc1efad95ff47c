"""The notebooks' diagrams draw from the data they are given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from course_lib.diagrams import bias_timeline_diagram, dispatch_diagram, moe_layer_diagram  # noqa: E402


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " " + fig.axes[0].get_title()


def test_moe_layer_diagram_names_every_part():
    fig = moe_layer_diagram()
    text = _texts(fig)
    for part in ("router", "top-", "gate weights", "shared expert", "residual", "E_{1}"):
        assert part in text, part
    plt.close(fig)


def test_dispatch_diagram_follows_the_assignments():
    chosen = torch.tensor([[2, 6], [3, 1], [7, 0], [3, 4]])
    fig = dispatch_diagram(chosen, 8)
    text = _texts(fig)
    assert "4 tokens x top-2 = 8 pairs" in text
    assert "E3: 1 matmul\non 2 tokens" in text and "(E5)" in text  # expert 3 gets two tokens, expert 5 none
    plt.close(fig)


def test_bias_timeline_says_which_loads_the_bias_comes_from():
    fig = bias_timeline_diagram()
    assert "step t comes from the loads of step t - 1" in _texts(fig)
    plt.close(fig)
