"""Degradation ladder, verdict, variants and stochastic-depth comparisons, with the figures built from them."""

import plotly.graph_objects as go
import pytest
import torch

from storage import open_store
from workbench import summarize
from workbench.errors import WorkbenchError
from workbench.jobs import QueueExecutor
from workbench.models import ResNet
from workbench.presets import get_preset
from workbench.science.degradation import (
    CurveRun,
    degradation_observed,
    load_curve_runs,
    paper_reference_errors,
    smoothed_at,
    verdict_markdown,
)
from workbench.science.gradient_flow import unit_gradient_matrix
from workbench.science.statistics import AT_ITERATION, BEST
from workbench.service import Workbench
from workbench.service.plans import IDENTITY_VARIANTS, plan_preset_ladder, plan_variants, stochastic_depth_pair
from workbench.spec import DataSpec, RunSpec, TrainSpec
from workbench.viz.charts import CI95, MIN_MAX, STD, CurveStyle
from workbench.viz.figures import (
    error_vs_depth,
    figure6,
    final_errors,
    gradient_heatmaps,
    gradient_profile_chart,
    lesion_by_k,
    lesion_by_unit,
)

DATA = DataSpec(synthetic_train=256, synthetic_test=64)
TRAIN = TrainSpec(iterations=20, batch_size=32, seed=3)


def curve(final: float, start: float = 90.0, iterations: int = 100, every: int = 10, split: str = "train"):
    """Rows of a training-error curve falling linearly from `start` to `final`."""
    steps = list(range(every, iterations + 1, every))
    return [{"iteration": it, "split": split, "name": "error",
             "value": start + (final - start) * i / (len(steps) - 1)} for i, it in enumerate(steps)]


def run(name: str, depth: int, residual: bool, final: float, iterations: int = 100) -> CurveRun:
    rows = curve(final, iterations=iterations) + curve(final + 5, iterations=iterations, every=50, split="test")
    return CurveRun.from_rows(name, depth, residual, rows)


def test_degradation_is_observed_when_the_deeper_plain_net_trains_worse_across_seeds():
    verdict = degradation_observed([
        *(run("plain20", 20, False, final) for final in (20.0, 20.5, 19.5)),
        *(run("plain56", 56, False, final) for final in (35.0, 34.0, 36.0)),
        run("resnet20", 20, True, 18.0), run("resnet56", 56, True, 12.0),
    ])
    assert verdict.observed is True and verdict.verdict == "degradation observed"
    assert verdict.iteration == 100 and verdict.window == 10
    pair = verdict.degraded_pairs[0]
    assert (pair["shallow"], pair["deep"], pair["seeds"]) == ("plain20", "plain56", (3, 3))
    assert pair["significant"] and pair["p"] < 0.001 and pair["df"] == pytest.approx(2.94, abs=0.01)
    assert verdict.train_errors["plain56"] == pytest.approx(35.0) and len(verdict.seeds["plain20"]) == 3
    assert verdict.residual_pairs == []
    assert "Welch's t-test over seeds: t = " in verdict.explanation
    assert "plain56 35.0 ± 1.0% (n=3), best 34.0%" in verdict.explanation
    assert "no deeper residual net trains worse" in verdict.explanation


def test_one_seed_or_overlapping_seeds_is_not_enough_evidence():
    one_seed = degradation_observed([run("plain20", 20, False, 20.0), run("plain56", 56, False, 35.0)])
    assert one_seed.observed is None and one_seed.verdict == "not enough evidence"
    assert "needs at least two on each side" in one_seed.explanation
    assert verdict_markdown(one_seed).startswith("**Not enough evidence.**")
    overlapping = degradation_observed([*(run("plain20", 20, False, final) for final in (20.0, 30.0)),
                                        *(run("plain56", 56, False, final) for final in (22.0, 31.0))])
    assert overlapping.observed is None and overlapping.degraded_pairs[0]["p"] > 0.05


def test_no_degradation_when_deeper_plain_nets_train_as_well_within_tolerance():
    verdict = degradation_observed([run("plain20", 20, False, 20.0), run("plain32", 32, False, 20.3),
                                    run("plain44", 44, False, 15.0)])
    assert verdict.observed is False and verdict.degraded_pairs == []


def test_comparison_is_at_the_last_iteration_every_plain_run_reached():
    # plain56 is still early (60 iterations): compare both at iteration 60, where plain20 is higher.
    shallow = run("plain20", 20, False, 20.0)
    deep = CurveRun.from_rows("plain56", 56, False, curve(60.0, start=70.0, iterations=60))
    verdict = degradation_observed([shallow, deep])
    assert verdict.iteration == 60
    assert verdict.train_errors["plain20"] == pytest.approx(smoothed_at(shallow.train, 60, 6))
    assert verdict.degraded_pairs[0]["deep"] == "plain56"


def test_a_run_logged_only_after_the_common_iteration_is_read_at_its_first_point():
    early = CurveRun.from_rows("plain20", 20, False, curve(20.0, iterations=10, every=5))
    late = CurveRun("plain56", 56, False, train=[(40, 70.0)])
    verdict = degradation_observed([early, late])
    assert verdict.iteration == 10 and verdict.train_errors["plain56"] == 70.0 and verdict.degraded_pairs


def test_the_verdict_reads_each_seed_as_the_summary_says_final_best_or_at_an_iteration():
    shallow = [run("plain20", 20, False, final) for final in (20.0, 20.5, 19.5)]
    # plain56 dips to 10% at iteration 20 and ends at 35%: worse at the end, better at its best.
    deep = [CurveRun("plain56", 56, False, train=[(10, 90.0), (20, 10.0 + d), (100, 35.0 + d)]) for d in (0, 1, -1)]
    final = degradation_observed([*shallow, *deep])
    assert final.observed is True and final.iteration == 100 and "iterations 91-100" in final.explanation
    best = degradation_observed([*shallow, *deep], summary=BEST)
    assert best.observed is False and best.summary == BEST and best.train_errors["plain56"] == pytest.approx(10.0)
    assert "lowest training error logged up to iteration 100: plain20 20.0" in best.explanation
    early = degradation_observed([*shallow, *deep], summary=AT_ITERATION, at=10)
    assert early.observed is False and early.iteration == 10 and early.train_errors == {"plain20": 90.0,
                                                                                         "plain56": 90.0}
    late = degradation_observed([*shallow, *deep], summary=AT_ITERATION, at=5000)
    assert late.observed is True and late.iteration == 100


def test_not_enough_data_without_two_plain_depths():
    assert degradation_observed([run("plain20", 20, False, 20.0), run("resnet56", 56, True, 10.0)]).observed is None
    empty = [CurveRun("plain20", 20, False), CurveRun("plain56", 56, False)]
    assert degradation_observed(empty).observed is None


def test_smoothed_at_averages_the_trailing_window_or_takes_the_latest_point():
    points = [(10, 50.0), (20, 40.0), (30, 30.0)]
    assert smoothed_at(points, 30, 10) == pytest.approx(30.0)
    assert smoothed_at(points, 30, 15) == pytest.approx(35.0)
    assert smoothed_at(points, 30, 25) == pytest.approx(40.0)
    assert smoothed_at(points, 25, 2) == 40.0
    assert smoothed_at(points, 5, 2) is None


def submitted(store, plan):
    """{preset or net name: run id} of a plan queued through the service."""
    ids = Workbench(store, QueueExecutor(store)).submit(plan)
    return {run.preset or run.spec.net.name: run_id for run, run_id in zip(plan, ids, strict=True)}


def test_ladder_queues_plain_and_residual_twins_with_identical_data_and_recipe(tmp_path):
    with open_store(tmp_path) as store:
        ids = submitted(store, plan_preset_ladder([56, 20, 32], DATA, TRAIN, group="ladder-1"))
        assert list(ids) == ["plain20", "resnet20", "plain32", "resnet32", "plain56", "resnet56"]
        runs = store.list_runs(group_name="ladder-1")
        assert {r.group_kind for r in runs} == {"ladder"} and {r.status for r in runs} == {"queued"}
        specs = [RunSpec.model_validate(r.spec) for r in runs]
        assert all(s.data == DATA and s.train == TRAIN for s in specs)
        nets = {r.preset: RunSpec.model_validate(r.spec).net for r in runs}
        assert nets["plain32"].shortcut == "none" and nets["resnet32"].shortcut == "A"
        assert nets["plain32"].depth == nets["resnet32"].depth == 32
        with pytest.raises(WorkbenchError):
            plan_preset_ladder([20, 20], DATA, TRAIN, group="bad")
        curves = load_curve_runs(store, list(reversed(runs)))
    assert [c.name for c in curves] == list(ids) and degradation_observed(curves).observed is None


def test_a_ladder_of_depths_without_presets_builds_them_alike(tmp_path):
    with open_store(tmp_path) as store:
        ids = submitted(store, plan_preset_ladder([20, 26], DATA, TRAIN, group="g"))
        runs = {name: store.get_run(run_id) for name, run_id in ids.items()}
    assert list(ids) == ["plain20", "resnet20", "plain26", "resnet26"]
    assert RunSpec.model_validate(runs["plain26"].spec).net.depth == 26 and runs["plain26"].preset == "plain26"
    assert {run.group_kind for run in runs.values()} == {"ladder"}


def test_identity_variant_presets_differ_only_in_placement_and_carry_table_2_errors(tmp_path):
    with open_store(tmp_path) as store:
        ids = submitted(store, plan_variants(IDENTITY_VARIANTS, DATA, TRAIN, group="he2016"))
        stored = store.list_runs(group_name="he2016")
        runs = {r.preset: RunSpec.model_validate(r.spec) for r in stored}
    assert list(ids) == list(IDENTITY_VARIANTS) and {r.group_kind for r in stored} == {"sweep"}
    placements = {name: spec.net.placement for name, spec in runs.items()}
    assert placements == {"resnet110-original": "post", "resnet110-bn-after-add": "bn_after_add",
                          "resnet110-relu-before-add": "relu_before_add",
                          "resnet110-relu-only-preact": "relu_only_preact", "resnet110-full-preact": "full_preact"}
    stripped = {spec.net.model_copy(update={"placement": "post", "name": "x"}).model_dump_json()
                for spec in runs.values()}
    assert len(stripped) == 1
    assert [get_preset(n).reference_error for n in IDENTITY_VARIANTS] == [6.61, 8.17, 7.84, 6.71, 6.37]


def test_stochastic_depth_comparison_differs_only_in_drop_probability(tmp_path):
    without, with_sd = stochastic_depth_pair("resnet110-sd", 0.5)
    assert without.stochastic_depth == 0.0 and with_sd.stochastic_depth == 0.5
    assert without.model_copy(update={"name": "x"}) == with_sd.model_copy(update={"name": "x", "stochastic_depth": 0.0})
    # Linear decay to 0.5 over 54 units leaves (3 * 54 - 1) / 4 units in expectation (Huang et al. 2016).
    assert summarize(with_sd)["expected_units"] == pytest.approx((3 * 54 - 1) / 4)
    assert summarize(without)["expected_units"] == 54
    with open_store(tmp_path) as store:
        ids = submitted(store, plan_variants(stochastic_depth_pair("resnet20", 0.2), DATA, TRAIN, group="sd"))
        specs = [RunSpec.model_validate(store.get_run(i).spec) for i in ids.values()]
    assert list(ids) == ["resnet20", "resnet20-sd0.2"]
    assert specs[0].train == specs[1].train and specs[0].data == specs[1].data
    with pytest.raises(WorkbenchError, match="plain"):
        stochastic_depth_pair("plain20")


def test_stochastic_depth_twins_start_from_identical_weights():
    without, with_sd = stochastic_depth_pair("resnet20", 0.5)
    torch.manual_seed(TRAIN.seed)
    first = ResNet(without).state_dict()
    torch.manual_seed(TRAIN.seed)
    second = ResNet(with_sd).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_figure6_puts_plain_left_residual_right_with_dashed_train_and_bold_test():
    runs = [run("plain20", 20, False, 20.0), run("resnet20", 20, True, 15.0), run("resnet56", 56, True, 10.0)]
    figure = figure6(runs)
    assert isinstance(figure, go.Figure)
    traces = {trace.name: trace for trace in figure.data}
    assert traces["plain20 train (20.0%)"].xaxis == "x" and traces["resnet56 test (15.0%)"].xaxis == "x2"
    assert traces["plain20 train (20.0%)"].line.dash == "dash"
    assert traces["plain20 test (25.0%)"].line.width > traces["plain20 train (20.0%)"].line.width
    assert traces["plain20 test (25.0%)"].line.color == traces["resnet20 test (20.0%)"].line.color
    assert len(figure6(runs, max_points=3).data[0].x) <= 4


def seeded_ladder() -> list[CurveRun]:
    return [*(run("plain20", 20, False, final) for final in (20.0, 22.0, 24.0)),
            *(run("plain56", 56, False, final) for final in (30.0, 32.0, 34.0)), run("resnet20", 20, True, 15.0)]


def test_figure6_draws_a_network_s_seeds_as_mean_and_band_with_n_and_the_summary_in_the_legend():
    figure = figure6(seeded_ladder(), style=CurveStyle(band=MIN_MAX))
    traces = {trace.name: trace for trace in figure.data}
    mean = traces["plain56 train n=3, final 32.00 ± 2.00%"]
    assert mean.xaxis == "x" and mean.y[-1] == 32.0 and mean.line.dash == "dash"
    assert "plain20 test n=3, final 27.00 ± 2.00%" in traces and traces["resnet20 train (15.0%)"].xaxis == "x2"
    [band] = [trace for trace in figure.data if trace.fill == "toself" and trace.name.startswith("plain56 train")]
    middle = len(band.y) // 2
    assert (band.y[middle - 1], band.y[middle]) == (34.0, 30.0) and band.xaxis == "x"
    best = [trace.name for trace in figure6(seeded_ladder(), style=CurveStyle(summary=BEST)).data if trace.name]
    assert "plain20 train n=3, best 22.00 ± 2.00%" in best and "resnet20 train (best 15.0%)" in best
    assert len(figure6(seeded_ladder()).data) == 14  # without a band, every run alone


def test_error_against_depth_over_seeds_is_the_mean_with_the_band_as_error_bars_and_n():
    finals = [final_errors(r) for r in seeded_ladder()]
    traces = {trace.name: trace for trace in error_vs_depth(finals, band=STD).data}
    plain = traces["plain train (n=3, mean ± std)"]
    assert list(plain.x) == [20, 56] and list(plain.y) == pytest.approx([22.0, 32.0])
    assert list(plain.error_y.array) == pytest.approx([2.0, 2.0]) and list(plain.customdata) == [3, 3]
    assert list(traces["ResNet train"].y) == [15.0]
    ci = {trace.name: trace for trace in error_vs_depth(finals, band=CI95).data}["plain test (n=3, 95% CI)"]
    assert list(ci.error_y.arrayminus) == pytest.approx([2.0 / 3 ** 0.5 * 4.3027] * 2, abs=1e-3)
    spread = {trace.name: trace for trace in error_vs_depth(finals, band=MIN_MAX).data}["plain train (n=3, min-max)"]
    assert list(spread.error_y.array) == pytest.approx([2.0, 2.0])
    assert len({trace.name: trace for trace in error_vs_depth(finals).data}["plain train"].x) == 6


def test_error_vs_depth_has_paper_markers():
    runs = [run("plain20", 20, False, 20.0), run("plain56", 56, False, 30.0), run("resnet56", 56, True, 10.0)]
    finals = [final_errors(r) for r in runs]
    assert finals[1]["train_error"] == pytest.approx(30.0) and finals[1]["test_error"] == pytest.approx(35.0)
    references = paper_reference_errors([20, 56, 57])
    assert references == {20: 8.75, 56: 6.97}
    figure = error_vs_depth(finals, references)
    names = [trace.name for trace in figure.data]
    assert "plain train" in names and "ResNet test" in names
    paper = figure.data[names.index("ResNet, He et al. 2015 Table 6")]
    assert list(paper.x) == [20, 56] and paper.marker.symbol == "star"


def test_lesion_and_gradient_figures_from_plain_data():
    study = {"units": 3, "baseline_error": 10.0,
             "single": [{"unit": i, "stage": i, "block": 1, "kept": "identity" if i == 1 else "pad", "error": 10.0 + i}
                        for i in (1, 2, 3)],
             "random": [{"k": 1, "errors": [12.0, 14.0], "mean": 13.0, "std": 1.0, "deleted": [[1], [2]]}]}
    by_unit = lesion_by_unit([("resnet", study), ("plain", study)])
    assert list(by_unit.data[0].y) == [11.0, 12.0, 13.0] and by_unit.data[0].marker.symbol[1] == "diamond"
    by_k = lesion_by_k([("resnet", study)])
    assert list(by_k.data[0].x) == [0, 1] and list(by_k.data[0].y) == [10.0, 13.0]
    assert lesion_by_unit([]).layout.annotations[0].text == "no lesion study yet"
    rows = [{"iteration": it, "split": "train", "name": f"unit_grad/{u}", "value": float(u * it)}
            for it in (10, 20) for u in (1, 2, 3)]
    rows.append({"iteration": 10, "split": "train", "name": "error", "value": 1.0})
    iterations, units, matrix = unit_gradient_matrix(rows)
    assert iterations == [10, 20] and units == [1, 2, 3] and matrix[2] == [30.0, 60.0]
    heat = gradient_heatmaps([("plain", iterations, units, matrix), ("resnet", iterations, units, matrix)])
    assert len(heat.data) == 2 and heat.data[0].zmax == heat.data[1].zmax
    assert heat.data[0].z[0][0] == pytest.approx(1.0)
    assert "no gradient" in gradient_heatmaps([("x", [], [], [])]).layout.annotations[0].text
    profile = gradient_profile_chart([("plain", [1.0, 0.1]), ("resnet", [1.0, 0.9])])
    assert profile.layout.yaxis.type == "log" and len(profile.data) == 2
