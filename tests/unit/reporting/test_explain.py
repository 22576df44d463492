"""Why a bright dim is not an outlier: the criterion it misses and by how much, in the report and the heatmap."""
import pytest

from outlier_lab.reporting.explain import miss_reason
from outlier_lab.reporting.heatmap import colorbar, heatmap_axes
from outlier_lab.reporting.report import render_markdown

DETECTOR = dict(alpha=6.0, min_layer_frac=0.25, min_position_frac=0.06, min_sequences_frac=0.5,
                num_blocks_analyzed=6, sites=["attn_in"])


def miss(dim=99, max_abs=30.3, sequences=0, hit_sequences=32, layer_frac_max=1.0, position_frac_max=0.004):
    return dict(dim=dim, max_abs=max_abs, sequences=sequences, hit_sequences=hit_sequences,
                layer_frac_max=layer_frac_max, position_frac_max=position_frac_max)


@pytest.mark.parametrize("entry,short,sentence", [
    (miss(), "pos 0.4%<6%", "position_frac is at most 0.4% (needs >= 6%) in every sequence; layer_frac reaches 100%"),
    (miss(layer_frac_max=0.17, position_frac_max=0.22), "layers 17%<25%",
     "layer_frac is at most 17% (needs >= 25%) in every sequence; position_frac reaches 22%"),
    (miss(layer_frac_max=0.125, position_frac_max=0.01), "layers 12%<25% pos 1%<6%",
     "layer_frac is at most 12% (needs >= 25%) and position_frac is at most 1% (needs >= 6%) in every sequence"),
    (miss(layer_frac_max=0.5, position_frac_max=0.5), "never both", "but never in the same one"),
    (miss(sequences=8), "seqs 25%<50%", "qualifies in 8 of 32 sequences (25%; a headline outlier needs "
                                        "sequences_frac >= 50%)"),
    (miss(max_abs=4.2, hit_sequences=0), "max<6", "its max |x| 4.2 never reaches alpha=6"),
])
def test_miss_reason_names_the_failed_criterion_and_the_numbers(entry, short, sentence):
    got_short, got_sentence = miss_reason(entry, DETECTOR, 32)
    assert got_short == short
    assert sentence in got_sentence


def results_with_a_bright_non_outlier():
    return dict(
        model=dict(name="tiny", path="x", architecture="bert", num_blocks=6, hidden_size=384, params_total=1,
                   params_active=1),
        dataset=dict(name="d", num_sequences=32, seq_len=256), detector=DETECTOR, wall_time_s=1.0,
        outlier_features=[dict(dim=223, sequences=32, sequences_frac=1.0, layer_frac=0.67, position_frac=0.437,
                               max_abs=12.5, one_sided=True, sign="-")],
        summary=dict(num_outlier_features=1, num_one_sided=1, num_qualified_any_sequence=1, num_sequences=32,
                     max_abs=30.3, max_abs_dim=99, max_abs_headline=12.5,
                     most_common=dict(dim=223, layers_pct=66.7, positions_pct=43.7, quartiles=[-10.7, -8.2, -6.9],
                                      sequences=32, headline=True)),
        near_misses=[miss(), miss(dim=5, max_abs=3.0, hit_sequences=0)],
        heatmap=dict(blocks=[0, 1], dims=[223, 99, 5], num_headline=1,
                     max_abs=[[12.5, 30.3, 3.0], [11.0, 29.0, 2.5]]))


def test_report_says_what_each_summary_figure_is_taken_over_and_why_dim_99_is_not_an_outlier():
    text = render_markdown(results_with_a_bright_non_outlier())
    assert "| max abs, all dims | 30.3 (dim 99, not an outlier) | every hidden dim, outlier or not |" in text
    assert "| max abs, headline dims | 12.5 | the headline outlier dims |" in text
    assert "| Q1 / median / Q3 | -10.7 / -8.2 / -6.9 | the most common outlier, dim 223: its signed outlier values" in text
    assert ("| 99 | 30.3 | 32 | 1.00 | 0.004 | position_frac is at most 0.4% (needs >= 6%) in every sequence; "
            "layer_frac reaches 100% |") in text
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
    assert [p.get_x() for p in hatched] == [0.5]  # only dim 99 reaches alpha without being an outlier
    assert "over all sequences, positions and sites" in ax.get_title()
    plt.close(fig)
