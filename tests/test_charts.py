"""Chart builders: paper-style curves, downsampling, smoothing, unit diagram."""

import numpy as np
import pytest

from workbench.service.curves import RunCurves, Series
from workbench.spec import NetSpec
from workbench.viz.charts import (
    CI95,
    MAX_POINTS_PER_TRACE,
    MIN_MAX,
    RUNNING_MEAN,
    STD,
    CurveStyle,
    downsample_minmax,
    path_length_figure,
    pointwise,
    smooth,
    training_curves_figure,
    unit_diagram_figure,
)
from workbench.viz.series import SeedGroup


def series(iterations, values, epochs=None) -> Series:
    made = Series()
    iterations = list(iterations)
    made.extend(iterations, epochs if epochs is not None else [i / 100 for i in iterations], list(values))
    return made


def twin_curves() -> list[RunCurves]:
    return [
        RunCurves(1, "#1 plain20", series([10, 20, 30], [60.0, 40.0, 30.0]), series([30], [35.0])),
        RunCurves(2, "#2 resnet20", series([10, 20, 30], [50.0, 30.0, 20.0]), series([30], [12.5])),
    ]


def diagram_labels(figure) -> list[str]:
    return [a.text.removeprefix("<b>").removesuffix("</b>").replace("<br>", " ") for a in figure.layout.annotations
            if a.y == 0]


def test_downsample_keeps_small_series_unchanged():
    x, y = np.arange(10), np.linspace(0, 1, 10)
    kept_x, kept_y = downsample_minmax(x, y, max_points=20)
    assert kept_x is x and kept_y is y


def test_downsample_bounds_points_and_keeps_extremes_and_ends_in_order():
    rng = np.random.default_rng(0)
    y = rng.normal(size=64_000)
    y[12_345] = 50.0
    y[50_000] = -50.0
    x = np.arange(len(y))
    kept_x, kept_y = downsample_minmax(x, y, max_points=800)
    assert len(kept_x) <= 802
    assert kept_x[0] == 0 and kept_x[-1] == len(y) - 1
    assert np.all(np.diff(kept_x) > 0)
    assert 12_345 in kept_x and 50_000 in kept_x
    np.testing.assert_array_equal(kept_y, y[kept_x])


def test_smooth_is_a_debiased_exponential_moving_average_or_a_running_mean():
    values = np.array([0.0, 10.0, 10.0])
    np.testing.assert_allclose(smooth(values, 0.5), [0.0, 5.0 / 0.75, 7.5 / 0.875])
    assert smooth(values, 0.0) is values
    np.testing.assert_allclose(smooth(np.full(5, 3.0), 0.9), np.full(5, 3.0))
    np.testing.assert_allclose(smooth(np.array([4.0, 0.0, 8.0, 2.0]), 0.5, RUNNING_MEAN), [4.0, 2.0, 4.0, 5.0])


def test_wall_time_axis_counts_minutes_from_each_runs_first_point_and_hover_is_unified():
    train, test = Series(), Series()
    train.extend([10, 20], [0.1, 0.2], [50.0, 40.0], [1000.0, 1060.0])
    test.extend([20], [0.2], [45.0], [1090.0])
    later = Series()
    later.extend([10], [0.1], [30.0], [5000.0])
    figure = training_curves_figure([RunCurves(1, "a", train, test), RunCurves(2, "b", later, None)],
                                    x_axis="wall time")
    assert [list(trace.x) for trace in figure.data] == [[0.0, 1.0], [1.5], [0.0]]
    assert figure.layout.hovermode == "x unified" and "min" in figure.layout.xaxis.title.text


def test_curves_are_paper_style_dashed_train_bold_test_one_colour_per_run():
    figure = training_curves_figure(twin_curves())
    assert len(figure.data) == 4
    train = [t for t in figure.data if " train " in t.name]
    test = [t for t in figure.data if " test " in t.name]
    assert all(t.line.dash == "dash" for t in train) and all(t.line.dash == "solid" for t in test)
    assert min(t.line.width for t in test) > max(t.line.width for t in train)
    colours = {t.legendgroup: t.line.color for t in figure.data}
    assert len(set(colours.values())) == 2
    assert all(t.line.color == colours[t.legendgroup] for t in figure.data)
    assert "#2 resnet20 test 12.50%" in [t.name for t in figure.data]
    assert figure.layout.yaxis.title.text == "error (%)" and figure.layout.xaxis.title.text == "iterations"
    assert figure.layout.height == 480


def test_curves_toggles_epochs_loss_and_log_scale():
    figure = training_curves_figure(twin_curves(), metric="loss", x_axis="epochs", log_y=True)
    assert list(figure.data[0].x) == pytest.approx([0.1, 0.2, 0.3])
    assert figure.layout.yaxis.type == "log"
    assert figure.layout.yaxis.title.text == "cross-entropy loss"
    assert figure.data[0].name.endswith("30.000")


def test_curves_smoothing_applies_to_training_curves_only():
    raw = training_curves_figure(twin_curves())
    smoothed = training_curves_figure(twin_curves(), smoothing=0.5)
    assert list(smoothed.data[0].y) == pytest.approx([60.0, 46.6667, 37.1429]) != list(raw.data[0].y)
    assert list(smoothed.data[1].y) == list(raw.data[1].y)
    assert smoothed.data[0].name == raw.data[0].name


def test_long_curves_are_downsampled_on_the_server():
    long_run = RunCurves(1, "long", series(range(64_000), np.random.default_rng(1).random(64_000) * 90), None)
    figure = training_curves_figure([long_run])
    assert len(figure.data[0].x) <= MAX_POINTS_PER_TRACE + 2


def test_empty_selection_gives_a_note_not_an_error():
    figure = training_curves_figure([RunCurves(1, "queued", None, None)])
    assert len(figure.data) == 0
    assert "No curves yet" in figure.layout.annotations[0].text


def test_unit_diagram_follows_the_placement_recipe():
    post = unit_diagram_figure(NetSpec(depth=20))
    assert diagram_labels(post) == ["x", "conv 3x3", "BN1", "ReLU", "conv 3x3", "BN2", "+", "ReLU", "out"]
    preact = unit_diagram_figure(NetSpec(depth=20, placement="full_preact", shortcut="B"))
    assert diagram_labels(preact) == ["x", "BN1", "ReLU", "conv 3x3", "BN2", "ReLU", "conv 3x3", "+", "out"]
    texts = " ".join(a.text for a in preact.layout.annotations)
    assert "(1x1 conv where the shape changes)" in texts, "full pre-activation projections have no BN"
    post_b = unit_diagram_figure(NetSpec(depth=20, shortcut="B"))
    assert "1x1 conv + BN where the shape changes" in " ".join(a.text for a in post_b.layout.annotations)


def test_unit_diagram_of_bottleneck_and_plain_units():
    bottleneck = unit_diagram_figure(NetSpec(depth=164, unit="bottleneck", shortcut="C"))
    assert [label for label in diagram_labels(bottleneck) if label.startswith("conv")] == [
        "conv 1x1", "conv 3x3", "conv 1x1"]
    plain = unit_diagram_figure(NetSpec(depth=20, shortcut="none"))
    assert "+" not in diagram_labels(plain)
    assert any("no shortcut" in a.text for a in plain.layout.annotations)


def test_path_length_histogram_shows_the_distribution():
    figure = path_length_figure([0.25, 0.5, 0.25])
    assert list(figure.data[0].x) == [0, 1, 2] and sum(figure.data[0].y) == pytest.approx(1.0)


def seeds(*curves) -> SeedGroup:
    runs = []
    for index, values in enumerate(curves):
        runs.append(RunCurves(index + 1, f"#{index + 1}", series(range(10, 10 * len(values) + 1, 10), values), None))
    return SeedGroup("g", "net [3 seeds]", tuple(runs))


def test_seed_group_is_a_mean_with_a_std_min_max_or_95_percent_ci_band():
    group = seeds([10.0, 20.0, 30.0], [12.0, 24.0, 30.0], [14.0, 28.0])
    members = [(run, run.train) for run in group.runs]
    x, mean, lower, upper, count = pointwise(members, CurveStyle(), "train", STD)
    assert list(x) == [10, 20, 30] and list(count) == [3, 3, 2]
    np.testing.assert_allclose(mean, [12.0, 24.0, 30.0])
    np.testing.assert_allclose(upper - mean, [2.0, 4.0, 0.0])
    _, _, lower, upper, _ = pointwise(members, CurveStyle(), "train", MIN_MAX)
    assert list(lower) == [10.0, 20.0, 30.0] and list(upper) == [14.0, 28.0, 30.0]
    _, mean, _, upper, _ = pointwise(members, CurveStyle(), "train", CI95)
    np.testing.assert_allclose(upper - mean, [4.3027 * 2 / 3 ** 0.5, 4.3027 * 4 / 3 ** 0.5, 0.0], rtol=1e-4)

    figure = training_curves_figure([group], style=CurveStyle(show_runs=True, summary="best"))
    band, *thin, line = figure.data
    assert band.fill == "toself" and len(thin) == 3 and all(trace.showlegend is False for trace in thin)
    assert line.name == "net [3 seeds] train n=3, best 12.00 ± 2.00%"


def test_bands_come_from_every_stored_point_not_the_drawn_sample():
    flat = np.full(20_000, 50.0)
    spiky = flat.copy()
    spiky[12_345] = 99.0
    group = SeedGroup("g", "net", tuple(RunCurves(i, f"#{i}", series(range(20_000), values), None)
                                        for i, values in enumerate((flat, spiky, flat))))
    band = training_curves_figure([group], style=CurveStyle(band=MIN_MAX)).data[0]
    assert len(band.x) <= 2 * 2 * MAX_POINTS_PER_TRACE and max(band.y) == 99.0
