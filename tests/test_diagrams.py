"""The notebooks' diagrams draw from the data they are given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pytest  # noqa: E402

from course_lib.machinery.diagrams import (bias_timeline_diagram, dispatch_diagram, log_axis, moe_layer_diagram,  # noqa: E402
                                           mtp_designs_diagram)
from course_lib.machinery.make_notebooks import read, solution_paths  # noqa: E402


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


def test_mtp_designs_diagram_shows_both_designs():
    """Notebook 04's figure: Meta's parallel heads on one trunk beside V3's chain of modules fed Emb(t_{i+k})."""
    fig = mtp_designs_diagram()
    text = " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " ".join(ax.get_title() for ax in fig.axes)
    for part in ("shared trunk", "head 3", "main model", "MTP module 2", "Emb($t_{i+2}$)", "shared head", "[META]",
                 "[V3]"):
        assert part in text, part
    assert [len(ax.patches) for ax in fig.axes] == [5, 9]  # the boxes: 2 + 3 heads; 2 + 2 x 2 modules + 3 heads
    plt.close(fig)


@pytest.mark.parametrize("low, high", [(2, 7), (0.5, 40), (1e-3, 1e3), (2000, 9000)])
def test_log_axis_labels_plain_numbers(low, high):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [low, high])
    log_axis(ax, "y")
    fig.canvas.draw()
    labels = [t.get_text() for minor in (False, True) for t in ax.get_yticklabels(minor=minor) if t.get_text()]
    plt.close(fig)
    assert labels and not any("times" in label or "^" in label for label in labels), labels


def test_log_axis_refuses_a_third_axis():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="'x' or 'y'"):
        log_axis(ax, "z")
    plt.close(fig)


def test_every_log_axis_of_the_notebooks_is_labelled_plainly():
    """A log scale set directly keeps matplotlib's 2x10^0 labels: the notebooks go through log_axis."""
    for path in solution_paths():
        for index, cell in enumerate(read(path).cells):
            for direct in ('scale("log"', 'scale="log"'):
                assert direct not in cell.source, f"{path.name} cell {index}: use course_lib.machinery.diagrams.log_axis"
