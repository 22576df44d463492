"""Why a bright dim is not an outlier: the criterion it misses and by how much, in the report and the heatmap."""

import pytest

from outlier_lab.reporting.explain import miss_reason
from outlier_lab.reporting.heatmap import colorbar, heatmap_axes
from outlier_lab.reporting.report import render_markdown

DETECTOR = dict(
    alpha=6.0,
    min_layer_frac=0.25,
    min_position_frac=0.06,
    min_sequences_frac=0.5,
    num_blocks_analyzed=6,
    sites=["attn_in"],
)


def miss(dim=99, max_abs=30.3, sequences=0, hit_sequences=32, layer_frac_max=1.0, position_frac_max=0.004):
    return dict(
        dim=dim,
        max_abs=max_abs,
        sequences=sequences,
        hit_sequences=hit_sequences,
        layer_frac_max=layer_frac_max,
        position_frac_max=position_frac_max,
    )


@pytest.mark.parametrize(
    "entry,short,sentence",
    [
        (
            miss(),
            "pos 0.4%<6%",
            "position_frac is at most 0.4% (needs >= 6%) in every sequence; layer_frac reaches 100%",
        ),
        (
            miss(layer_frac_max=0.17, position_frac_max=0.22),
            "layers 17%<25%",
            "layer_frac is at most 17% (needs >= 25%) in every sequence; position_frac reaches 22%",
        ),
        (
            miss(layer_frac_max=0.125, position_frac_max=0.01),
            "layers 12%<25% pos 1%<6%",
            "layer_frac is at most 12% (needs >= 25%) and position_frac is at most 1% (needs >= 6%) in every sequence",
        ),
        (miss(layer_frac_max=0.5, position_frac_max=0.5), "never both", "but never in the same one"),
        (
            miss(sequences=8),
            "seqs 25%<50%",
            "qualifies in 8 of 32 sequences (25%; a headline outlier needs sequences_frac >= 50%)",
        ),
        (miss(max_abs=4.2, hit_sequences=0), "max<6", "its max |x| 4.2 never reaches alpha=6"),
    ],
)
def test_miss_reason_names_the_failed_criterion_and_the_numbers(entry, short, sentence):
    got_short, got_sentence = miss_reason(entry, DETECTOR, 32)
    assert got_short == short
    assert sentence in got_sentence


def results_with_a_bright_non_outlier():
    return dict(
        model=dict(
            name="tiny", path="x", architecture="bert", num_blocks=6, hidden_size=384, params_total=1, params_active=1
        ),
        dataset=dict(name="d", num_sequences=32, seq_len=256),
        detector=DETECTOR,
        wall_time_s=1.0,
        outlier_features=[
            dict(
                dim=223,
                sequences=32,
                sequences_frac=1.0,
                layer_frac=0.67,
                position_frac=0.437,
                max_abs=12.5,
                one_sided=True,
                sign="-",
            )
        ],
        summary=dict(
            num_outlier_features=1,
            num_one_sided=1,
            num_qualified_any_sequence=1,
            num_sequences=32,
            max_abs=30.3,
            max_abs_dim=99,
            max_abs_headline=12.5,
            most_common=dict(
                dim=223, layers_pct=66.7, positions_pct=43.7, quartiles=[-10.7, -8.2, -6.9], sequences=32, headline=True
            ),
        ),
        near_misses=[miss(), miss(dim=5, max_abs=3.0, hit_sequences=0)],
        heatmap=dict(blocks=[0, 1], dims=[223, 99, 5], num_headline=1, max_abs=[[12.5, 30.3, 3.0], [11.0, 29.0, 2.5]]),
    )


def test_report_says_what_each_summary_figure_is_taken_over_and_why_dim_99_is_not_an_outlier():
    text = render_markdown(results_with_a_bright_non_outlier())
    assert "| max abs, all dims | 30.3 (dim 99, not an outlier) | every hidden dim, outlier or not |" in text
    assert "| max abs, headline dims | 12.5 | the headline outlier dims |" in text
    assert (
        "| Q1 / median / Q3 | -10.7 / -8.2 / -6.9 | the most common outlier, dim 223: its signed outlier values" in text
    )
    assert (
        "| 99 | 30.3 | 32 | 1.00 | 0.004 | position_frac is at most 0.4% (needs >= 6%) in every sequence; "
        "layer_frac reaches 100% |"
    ) in text
    assert "| 5 |" not in text  # a dim that never reaches alpha is not a near miss worth a row


def test_heatmap_marks_headline_columns_apart_and_labels_why_the_others_are_not():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots()
    results = results_with_a_bright_non_outlier()
    bar = colorbar(fig, heatmap_axes(ax, results), ax, results)
    fig.canvas.draw()
    assert "alpha = 6" in [t.get_text() for t in bar.ax.get_yticklabels()]
    (upper,) = [child for child in ax.get_children() if type(child).__name__ == "SecondaryAxis"]
    assert [t.get_text() for t in upper.get_xticklabels()] == ["outlier", "not: pos 0.4%<6%", "not: max<6"]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.5]  # the rule after the one headline column
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    # Only dim 99 reaches alpha without being an outlier, in both blocks: one hatched cell each.
    assert sorted((p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in hatched) == [
        (0.5, -0.5, 1, 1),
        (0.5, 0.5, 1, 1),
    ]
    assert "over all sequences, positions and sites" in ax.get_title()
    plt.close(fig)


def _drawn_heatmap(max_abs):
    """The heatmap of one headline dim and two bright non-outliers (dims 319 and 5) over four blocks, drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = results_with_a_bright_non_outlier()
    results["heatmap"] = dict(blocks=[0, 1, 2, 3], dims=[223, 319, 5], num_headline=1, max_abs=max_abs)
    fig, ax = plt.subplots(figsize=(4, 4))
    colorbar(fig, heatmap_axes(ax, results, reasons=False), ax, results)
    fig.canvas.draw()
    return fig, ax


def test_heatmap_hatches_only_the_cells_that_reach_alpha():
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    # dim 319 stays at 1.6-2.7 in blocks 0-3 except block 2 (9.5); dim 5 reaches alpha in block 0 only (exactly 6).
    fig, ax = _drawn_heatmap([[12.5, 1.6, 6.0], [11.0, 2.7, 5.9], [10.0, 9.5, 3.0], [9.0, 2.2, 1.0]])
    hatched = sorted(
        (p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()
    )
    plt.close(fig)
    assert hatched == [(1.0, 2.0), (2.0, 0.0)]  # (column, block): 319 in block 2, 5 in block 0; never the headline


def test_alpha_is_a_break_in_hue_between_just_below_and_just_above():
    import matplotlib.pyplot as plt
    import numpy as np

    # 5.6 and 6.4 (either side of alpha=6) and 5.9 and 6.0 must differ in hue; 1.0 and 5.6 share the cool one.
    fig, ax = _drawn_heatmap([[12.5, 5.6, 1.0], [11.0, 6.4, 5.9], [10.0, 6.0, 2.0], [9.0, 2.2, 30.0]])
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = pixels.shape[0]

    def drawn(column, block):  # a cell's median colour over a grid of points, read from the rendered canvas
        points = [(column + dx, block + dy) for dx in np.linspace(-0.3, 0.3, 5) for dy in np.linspace(-0.3, 0.3, 5)]
        return np.median(
            [pixels[height - int(round(y)), int(round(x))] for x, y in ax.transData.transform(points)], axis=0
        )

    def warm(rgb):
        return rgb[0] > rgb[2]

    plt.close(fig)
    assert not warm(drawn(1, 0)) and warm(drawn(1, 1))  # 5.6 cool, 6.4 warm
    assert not warm(drawn(2, 1)) and warm(drawn(1, 2))  # 5.9 cool, exactly alpha warm
    assert not warm(drawn(2, 0)) and warm(drawn(2, 3)) and warm(drawn(0, 0))
