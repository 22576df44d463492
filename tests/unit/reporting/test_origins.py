"""report.md's "where they come from" joins the origin detectors per dim; the expert heatmap marks super experts."""

from outlier_lab.analysis.detectors.super_experts import SuperExperts
from outlier_lab.reporting.expert_heatmap import write_expert_heatmap
from outlier_lab.reporting.origins import origins_section

RESULTS = dict(
    model=dict(name="tiny"),
    outlier_features=[dict(dim=5), dict(dim=13)],
    massive=dict(summary=dict(dims=[13])),
    super_experts=dict(
        super_experts=[dict(block=1, expert=2, dim=13, max_abs=775.0, routed_tokens=9)],
        heatmap=dict(blocks=[0, 1], experts=[0, 1, 2, -1], max_abs=[[0.5, 0.4, None, 0.2], [0.6, 0.3, 775.0, 0.1]]),
    ),
    super_weights=dict(candidate=dict(block=1, row=5, column=77, value=25.0, output_max_abs=90.0)),
    token_attribution=dict(
        features=[
            dict(
                dim=5,
                hits=10,
                first_position_frac=0.1,
                delimiter_frac=0.5,
                top_tokens=[dict(token_id=3, text="\n", count=7, max_abs=9.0)],
            ),
            dict(dim=13, hits=4, first_position_frac=0.0, delimiter_frac=0.0, top_tokens=[]),
        ],
        massive=[
            dict(
                dim=13,
                hits=2,
                first_position_frac=0.0,
                delimiter_frac=1.0,
                top_tokens=[dict(token_id=4, text=":", count=2, max_abs=300.0)],
            )
        ],
    ),
)


def test_each_dim_names_its_token_expert_and_weight():
    lines = origins_section(RESULTS)
    assert "## Where they come from" in lines
    rows = [line for line in lines if line.startswith("| 5 ") or line.startswith("| 13 ")]
    assert rows == [
        "| 5 | outlier feature | '\\n' x7 | 10% | 50% | none | block 1 |",
        "| 13 | outlier feature | – | 0% | 0% | 1/2 | no |",
        "| 13 | massive activation | ':' x2 | 0% | 100% | 1/2 | no |",
    ]


def test_no_origin_detector_no_section():
    assert origins_section(dict(outlier_features=[dict(dim=5)])) == []


def test_expert_heatmap_is_written_only_with_moe_blocks(tmp_path):
    path = write_expert_heatmap(tmp_path, RESULTS)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        write_expert_heatmap(tmp_path / "dense", dict(super_experts=dict(heatmap=dict(blocks=[], experts=[])))) is None
    )


def test_comparison_lists_super_experts_per_model():
    row = SuperExperts.comparison_row(RESULTS["super_experts"])
    assert row == dict(super_expert_count=1, super_experts="1/2@13", super_expert_max_abs=775.0)
