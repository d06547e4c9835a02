"""A reproduction made by the tool itself: train a plain/residual depth ladder through the store and a
worker, lesion the deepest pair, and write PNG figures plus `reproduction.md` with the numbers.

Run it with `python -m workbench --home DIR reproduce ...`; running it again with the same home and
group reuses the trained runs and stored lesion studies and only redraws what is missing.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from storage import RunStore
from storage.status import COMPLETED, INTERRUPTED, QUEUED, RUNNING
from workbench.errors import IllegalTransition, WorkbenchError
from workbench.jobs.analyses import GRADIENT_PROFILE, LESION
from workbench.jobs.executor import QueueExecutor
from workbench.jobs.worker import default_worker_id, execute_run
from workbench.models import build_network
from workbench.models.analysis import count_parameters
from workbench.paths import RunFolder
from workbench.science.degradation import (
    CurveRun,
    degradation_observed,
    load_curve_runs,
    paper_reference_errors,
)
from workbench.science.gradient_flow import unit_gradient_matrix
from workbench.service.plans import plan_preset_ladder
from workbench.service.runs import Workbench
from workbench.spec import DataSpec, RunSpec, TrainSpec
from workbench.training.loop import cpu_has_native_bf16
from workbench.viz.figures import (
    error_vs_depth,
    figure6,
    final_errors,
    gradient_heatmaps,
    gradient_profile_chart,
    lesion_by_k,
    lesion_by_unit,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
FIGURE_SIZE = (1100, 460)
PAPER_ITERATIONS = 64000
NEAR_CHANCE_POINTS = 5.0
WAIT_POLL_S = 10.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass
class ReproductionConfig:
    """The subset, budget and lesion settings of one reproduction."""

    data_path: Path = DEFAULT_DATA
    per_class_cap: int = 500
    iterations: int = 3000
    batch_size: int = 128
    warmup_iterations: int = 200
    depths: tuple[int, ...] = (20, 56)
    log_every: int = 5
    grad_norm_every: int = 10
    seed: int = 0
    lesion_images: int = 1000
    lesion_draws: int = 2
    lesion_max_k: int = 8
    group_name: str | None = None
    profile_batch: int = 128

    def __post_init__(self) -> None:
        if self.group_name is None:
            warmup = f"-wu{self.warmup_iterations}" if self.warmup_iterations else ""
            seed = f"-seed{self.seed}" if self.seed else ""
            self.group_name = f"degradation-cifar10-cap{self.per_class_cap}-it{self.iterations}{warmup}{seed}"

    def data(self) -> DataSpec:
        return DataSpec(name="cifar10", path=str(Path(self.data_path).resolve()), per_class_cap=self.per_class_cap,
                        seed=self.seed)

    def train(self) -> TrainSpec:
        return TrainSpec(iterations=self.iterations, batch_size=self.batch_size, log_every=self.log_every,
                         warmup_iterations=self.warmup_iterations, grad_norm_every=self.grad_norm_every, seed=self.seed)


@dataclass
class Reproduction:
    """What a reproduction produced: run ids, curves, lesion results, figure files, the report."""

    config: ReproductionConfig
    run_ids: dict[str, int]
    curves: list[CurveRun]
    verdict: dict[str, Any]
    finals: list[dict[str, Any]]
    lesions: dict[str, dict[str, Any]]
    figures: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None


def write_png(figure: go.Figure, path: Path, width: int = FIGURE_SIZE[0], height: int = FIGURE_SIZE[1]) -> Path:
    """Render a Plotly figure to PNG: kaleido when installed, else Playwright driving Debian's Chromium; with
    neither, the interactive figure as a self-contained HTML file of the same name. The path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = go.Figure(figure).update_layout(width=width, height=height)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        logger.info("kaleido is not installed; rendering %s through Playwright and Chromium", path.name)
    else:
        figure.write_image(path, width=width, height=height, scale=1)
        return path
    if not Path(CHROMIUM).exists():
        html_path = path.with_suffix(".html")
        figure.write_html(html_path, include_plotlyjs="inline", full_html=True)
        logger.warning("no PNG renderer (kaleido, or Chromium at %s): wrote %s instead; for PNG figures, "
                       "apt-get install chromium or pip install kaleido", CHROMIUM, html_path.name)
        return html_path
    html = figure.to_html(include_plotlyjs="inline", full_html=True, config={"staticPlot": True})
    # A fresh thread: Playwright's sync API refuses to start in a thread that already runs an event
    # loop (the caller's own Playwright session, for one).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_screenshot_html, html, path, width, height).result()
    return path


def _screenshot_html(html: str, path: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width + 40, "height": height + 40})
            page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("data:", "about:"))
                       else route.continue_())
            page.set_content(html)
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").first.screenshot(path=str(path))
        finally:
            browser.close()


def _group_runs(service: Workbench, config: ReproductionConfig) -> dict[str, int]:
    """The group's runs by preset name, queuing the ladder first when the group is new."""
    store = service.store
    runs = store.list_runs(group_name=config.group_name)
    if not runs:
        plan = plan_preset_ladder(config.depths, config.data(), config.train(), group=config.group_name)
        return dict(zip((run.preset for run in plan), service.submit(plan), strict=True))
    expected = (config.data(), config.train())
    for run in runs:
        spec = RunSpec.model_validate(run.spec)
        if (spec.data, spec.train) != expected:
            raise WorkbenchError(
                f"group {config.group_name!r} in {store.home} was trained with other settings (run {run.id}); "
                "use another --group or the same subset and budget"
            )
    return {run.preset: run.id for run in reversed(runs)}


def train_ladder(service: Workbench, config: ReproductionConfig) -> dict[str, int]:
    """Queue (if needed) and train the group's runs in this process, as a worker does; resumes interrupted runs.

    Only this group's runs are claimed; runs another worker holds are waited for.
    """
    store = service.store
    run_ids = _group_runs(service, config)
    for run_id in run_ids.values():
        if store.get_run(run_id).status == INTERRUPTED:
            store.transition(run_id, QUEUED)
    pending = [name for name, run_id in run_ids.items() if store.get_run(run_id).status != COMPLETED]
    if pending:
        logger.info("training %s (%d iterations each)", ", ".join(pending), config.iterations)
    worker_id = default_worker_id()
    while True:
        for run_id in run_ids.values():
            if store.get_run(run_id).status != QUEUED:
                continue
            try:
                store.claim_run(run_id, worker_id)
            except IllegalTransition:
                continue
            execute_run(store, run_id, worker_id)
        elsewhere = [name for name, run_id in run_ids.items() if store.get_run(run_id).status in (QUEUED, RUNNING)]
        if not elsewhere:
            break
        logger.info("waiting for %s, trained by another worker", ", ".join(elsewhere))
        time.sleep(WAIT_POLL_S)
    failed = {name: store.get_run(run_id) for name, run_id in run_ids.items()
              if store.get_run(run_id).status != COMPLETED}
    if failed:
        details = "; ".join(f"{name}: {run.status} {run.error_message or ''}".strip() for name, run in failed.items())
        raise WorkbenchError(f"not every run of the ladder completed ({details})")
    return run_ids


def lesion_params(config: ReproductionConfig) -> dict[str, Any]:
    return {"draws": config.lesion_draws, "max_k": config.lesion_max_k, "limit_images": config.lesion_images,
            "seed": config.seed}


def stored_result(service: Workbench, run_id: int, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """The stored result of the `kind` analysis of a run with these params, run here first when missing."""
    result = service.latest_result(run_id, kind, params)
    if result is None:
        analysis = service.run_analysis(run_id, kind, params)
        if analysis.status != COMPLETED:
            raise WorkbenchError(f"the {kind.replace('_', ' ')} of run {run_id} {analysis.status}: "
                                 f"{analysis.error_message}")
        result = analysis.result
    return result


def ensure_lesion(service: Workbench, run_id: int, config: ReproductionConfig) -> tuple[dict[str, Any], float | None]:
    """(the stored lesion result with this config's settings, the seconds it took), computing it if missing."""
    result = stored_result(service, run_id, LESION, lesion_params(config))
    return result, result.get("run", {}).get("seconds")


def gradient_profile(service: Workbench, run_id: int, batch_size: int) -> list[float | None]:
    """Per-unit input gradient norms of a run's network at initialization, computed once and stored."""
    return stored_result(service, run_id, GRADIENT_PROFILE, {"batch_size": batch_size})["profile"]


def _duration(run: Any) -> float | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return (run.finished_at - run.started_at).total_seconds()


def regenerate_command(home: Path, docs_dir: Path, config: ReproductionConfig) -> str:
    """The command line that regenerates this reproduction."""
    try:
        shown_home = home.resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        shown_home = home
    parts = [".venv/bin/python", "-m", "workbench", "--home", str(shown_home), "reproduce",
             "--docs", _shown_path(docs_dir), "--data", _shown_path(config.data_path),
             "--per-class-cap", str(config.per_class_cap),
             "--iterations", str(config.iterations), "--warmup", str(config.warmup_iterations),
             "--depths", *map(str, config.depths),
             "--lesion-images", str(config.lesion_images), "--lesion-draws", str(config.lesion_draws),
             "--lesion-max-k", str(config.lesion_max_k)]
    if config.seed:
        parts += ["--seed", str(config.seed)]
    default = ReproductionConfig(per_class_cap=config.per_class_cap, iterations=config.iterations,
                                 warmup_iterations=config.warmup_iterations, seed=config.seed)
    if config.group_name != default.group_name:
        parts += ["--group", config.group_name]
    return shlex.join(parts)


def _shown_path(path: Path) -> str:
    """A path relative to the project root when that is shorter (as the docs show it)."""
    return os.path.relpath(Path(path).resolve(), PROJECT_ROOT)


def reproduce(home: Path, docs_dir: Path, config: ReproductionConfig) -> Reproduction:
    """Train, lesion, draw and report; see the module docstring."""
    from storage import open_store

    with open_store(home) as store:
        # The archive the user named is trusted as a data root for this run only.
        service = Workbench(store, QueueExecutor(store), [Path(config.data_path).resolve().parent])
        run_ids = train_ladder(service, config)
        runs = [store.get_run(run_id) for run_id in run_ids.values()]
        curves = load_curve_runs(store, runs)
        verdict = degradation_observed(curves).to_dict()
        finals = [final_errors(curve) for curve in curves]
        deepest = max(config.depths)
        lesion_names = [f"resnet{deepest}", f"plain{deepest}"]
        lesions, lesion_seconds = {}, {}
        for name in lesion_names:
            lesions[name], lesion_seconds[name] = ensure_lesion(service, run_ids[name], config)
        profile_names = [f"plain{deepest}", f"resnet{deepest}"]
        profiles = [(name, gradient_profile(service, run_ids[name], config.profile_batch)) for name in profile_names]
        gradient_rows = store.fetch_metrics_since(
            {run_ids[name]: 0 for name in lesion_names},
            names=[f"unit_grad/{k}" for k in range(1, len(lesions[lesion_names[0]]["single"]) + 1)],
        )
        heat_panels = [(name, *unit_gradient_matrix(gradient_rows[run_ids[name]].rows))
                       for name in reversed(lesion_names)]
        parameters = {run.preset: count_parameters(build_network(RunSpec.model_validate(run.spec).net))[0]
                      for run in runs}
        loss_rows = store.fetch_metrics_since({run.id: 0 for run in runs}, names=["loss"])
        peak_losses = {run.preset: max((row.value for row in loss_rows[run.id].rows
                                        if row.split == "train" and row.value is not None), default=None)
                       for run in runs}
        figure_files = {
            "figure6": write_png(figure6(curves, title="Training (dashed) and test (bold) error"),
                                 docs_dir / "figures" / "degradation_curves.png"),
            "error_vs_depth": write_png(error_vs_depth(finals, paper_reference_errors(config.depths)),
                                        docs_dir / "figures" / "error_vs_depth.png"),
            "lesion_by_unit": write_png(lesion_by_unit([(name, lesions[name]) for name in lesion_names]),
                                        docs_dir / "figures" / "lesion_by_unit.png"),
            "lesion_by_k": write_png(lesion_by_k([(name, lesions[name]) for name in lesion_names]),
                                     docs_dir / "figures" / "lesion_by_k.png"),
            "gradient_profile": write_png(gradient_profile_chart(profiles),
                                          docs_dir / "figures" / "gradient_profile_init.png"),
            "gradient_heatmap": write_png(gradient_heatmaps(heat_panels),
                                          docs_dir / "figures" / "gradient_heatmap.png"),
        }
        report = docs_dir / "reproduction.md"
        report.write_text(render_report(
            home=home, config=config, runs=runs, finals=finals, verdict=verdict, lesions=lesions,
            lesion_seconds=lesion_seconds, parameters=parameters, peak_losses=peak_losses, profiles=profiles,
            figures=figure_files,
            docs_dir=docs_dir, dataset_counts=_dataset_counts(store, runs[0].id),
        ))
    logger.info("reproduction written to %s", report)
    return Reproduction(config=config, run_ids=run_ids, curves=curves, verdict=verdict, finals=finals,
                        lesions=lesions, figures=figure_files, report=report)


def _dataset_counts(store: RunStore, run_id: int) -> dict[str, int]:
    from workbench.training import load_checkpoint

    state = load_checkpoint(RunFolder.of(store.home, run_id).last)
    return dict(state["dataset"]["counts"])


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def observations(finals: list[dict], verdict: dict, peak_losses: dict[str, float | None],
                 num_classes: int = 10) -> list[str]:
    """Markdown bullets on what in these numbers departs from the paper's picture (empty when nothing does)."""
    chance = 100.0 * (1 - 1 / num_classes)
    notes = []
    for final in sorted(finals, key=lambda f: (f["residual"], f["depth"])):
        error = final["train_error"]
        if error is not None and error >= chance - NEAR_CHANCE_POINTS:
            peak = peak_losses.get(final["name"])
            spike = f"; its training loss peaked at {peak:.2f} (chance level is {math.log(num_classes):.2f})" \
                if peak is not None else ""
            notes.append(f"- {final['name']} stayed near chance ({error:.1f}% training error against "
                         f"{chance:.0f}% for guessing): it did not learn within this budget{spike}.")
    plain = {f["depth"]: f["train_error"] for f in finals if not f["residual"] and f["train_error"] is not None}
    residual = {f["depth"]: f["train_error"] for f in finals if f["residual"] and f["train_error"] is not None}
    for depth in sorted(set(plain) & set(residual)):
        notes.append(f"- At {depth} layers the residual net ends at {residual[depth]:.1f}% training error, the plain "
                     f"net at {plain[depth]:.1f}%.")
    both = sorted(set(plain) & set(residual))
    if len(both) >= 2:
        shallow, deep = both[0], both[-1]
        notes.append(f"- From {shallow} to {deep} layers the training error changes by "
                     f"{plain[deep] - plain[shallow]:+.1f} points for the plain nets and by "
                     f"{residual[deep] - residual[shallow]:+.1f} points for the residual nets.")
    if verdict.get("residual_pairs"):
        pairs = ", ".join(f"{p['deep']} above {p['shallow']}" for p in verdict["residual_pairs"])
        notes.append(f"- The residual nets also get worse with depth here ({pairs}), unlike the paper's Fig. 6 "
                     "(right), where the deeper residual nets end lower: that part is not reproduced at this "
                     "budget.")
    return ["Observations:", "", *notes, ""] if notes else []


def render_report(*, home: Path, config: ReproductionConfig, runs: list, finals: list[dict], verdict: dict,
                  lesions: dict[str, dict], lesion_seconds: dict[str, float | None], parameters: dict[str, int],
                  peak_losses: dict[str, float | None], profiles: list[tuple[str, list]], figures: dict[str, Path],
                  docs_dir: Path,
                  dataset_counts: dict[str, int]) -> str:
    """The Markdown report: setup, numbers, verdicts, figures and the regenerating command."""
    by_name = {final["name"]: final for final in finals}
    train_images = dataset_counts.get("train", 0)
    epochs = config.iterations * config.batch_size / train_images if train_images else float("nan")
    first = runs[0]
    device = first.device or "cpu"
    total_train = sum(filter(None, (_duration(run) for run in runs)))
    references = paper_reference_errors(config.depths)

    def rel(path: Path) -> str:
        return os.path.relpath(path, docs_dir)

    lines = [
        "# Reproduction: degradation and lesion study on this CPU",
        "",
        "Generated by the workbench itself (`workbench/service/reproduction.py`): the runs were queued in a run store,",
        "trained by a workbench worker with the engine's `fit`, lesioned with `workbench.science.lesion`, and the",
        "figures are the same Plotly charts the Compare and Analysis tabs show, saved as PNG. Every number below is",
        "read from the store; nothing was edited by hand.",
        "",
        "## Setup",
        "",
        f"- **Data:** CIFAR-10 from `../shared/data/cifar-10-python.tar.gz`, at most {config.per_class_cap} images per "
        f"class (DataSpec `per_class_cap`, seed {config.seed}): {dataset_counts.get('train')} training and "
        f"{dataset_counts.get('test')} test images. That copy was re-encoded through JPEG (see its README), so "
        "absolute errors are not comparable with the paper.",
        f"- **Budget:** {config.iterations} iterations of batch {config.batch_size} (about {epochs:.1f} epochs of the "
        "subset) per network, the paper's recipe otherwise (SGD, momentum 0.9, weight decay 1e-4, learning rate 0.1 "
        "divided by 10 at 50% and 75% of the budget, flip + 4-pixel-pad crop augmentation), "
        + (f"with a linear learning-rate warm-up over the first {config.warmup_iterations} iterations for every "
           "network. " if config.warmup_iterations else "without warm-up. ")
        + "The paper trains for "
        f"{PAPER_ITERATIONS:,} iterations ({PAPER_ITERATIONS / config.iterations:,.0f} times as many) on 45k of "
        "the 50k training images.",
        f"- **Networks:** {', '.join(run.preset for run in runs)} (option A shortcuts for the ResNets), identical data "
        "order and seed for every run (one ladder group).",
        f"- **Machine:** {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device "
        f"`{device}` (native bf16: {cpu_has_native_bf16()}); the two cores were shared with other work, so times "
        f"are indicative. Training took {_minutes(total_train)} in total.",
        f"- **Regenerate:** `{regenerate_command(home, docs_dir, config)}` (reuses the stored runs of group "
        f"`{config.group_name}` in that home; use a fresh `--home` to retrain).",
        "",
        "## Degradation (He et al. 2015, Fig. 6)",
        "",
        f"**Verdict: {verdict['verdict']}.** {verdict['explanation']}",
        "",
        *observations(finals, verdict, peak_losses),
        "| network | params | training error (last tenth, %) | final test error (%) | best test error (%) | "
        "paper test error (%) | peak training loss (logged mean) | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(runs, key=lambda r: (RunSpec.model_validate(r.spec).net.residual,
                                           RunSpec.model_validate(r.spec).net.depth)):
        final = by_name[run.preset]
        depth = final["depth"]
        paper = _fmt(references.get(depth), 2) if final["residual"] else "-"
        lines.append(
            f"| {run.preset} | {parameters[run.preset]:,} | {_fmt(final['train_error'])} | "
            f"{_fmt(final['test_error'])} | "
            f"{_fmt(run.best_test_error)} | {paper} | {_fmt(peak_losses.get(run.preset), 2)} | "
            f"{_minutes(_duration(run))} |"
        )
    lines += [
        "",
        f"![Figure 6 layout: plain nets left, residual nets right]({rel(figures['figure6'])})",
        "",
        f"![Error against depth with the paper's ResNet numbers as stars]({rel(figures['error_vs_depth'])})",
        "",
        "## Lesion study (Veit et al. 2016)",
        "",
        f"Each unit of the trained {', '.join(lesions)} deleted in turn (a residual unit keeps only its shortcut; a "
        "plain unit becomes the identity, or option A's subsample + zero-pad where it changes the shape), then k "
        f"random units deleted for k = 1..{config.lesion_max_k} ({config.lesion_draws} seeded draws each), on "
        f"{config.lesion_images} test images of the subset.",
        "",
        "| network | intact error (%) | mean error, one unit deleted (%) | worst single deletion (%) | "
        + " | ".join(f"k={entry['k']}" for entry in next(iter(lesions.values()))["random"]) + " | time |",
        "|---|---|---|---|" + "---|" * len(next(iter(lesions.values()))["random"]) + "---|",
    ]
    for name, study in lesions.items():
        single = [entry["error"] for entry in study["single"]]
        worst = max(study["single"], key=lambda entry: entry["error"])
        lines.append(
            f"| {name} | {_fmt(study['baseline_error'])} | {_fmt(sum(single) / len(single))} | "
            f"{_fmt(worst['error'])} (unit {worst['unit']}, keeps {worst['kept']}) | "
            + " | ".join(_fmt(entry["mean"]) for entry in study["random"])
            + f" | {_minutes(lesion_seconds.get(name))} |"
        )
    lines += [
        "",
        f"![Error with one unit deleted]({rel(figures['lesion_by_unit'])})",
        "",
        f"![Error with k random units deleted]({rel(figures['lesion_by_k'])})",
        "",
        "## Gradient flow",
        "",
        f"Gradient norm at each unit's input, at initialization (one batch of {config.profile_batch} training images, "
        f"same seed as the runs) and during training (recorded every {config.grad_norm_every} iterations by the "
        "engine).",
        "",
        "| network | norm at unit 1 | norm at the last unit | ratio first/last |",
        "|---|---|---|---|",
    ]
    for name, norms in profiles:
        values = [n for n in norms if n is not None]
        if values:
            lines.append(f"| {name} (init) | {values[0]:.3g} | {values[-1]:.3g} | {values[0] / values[-1]:.3g} |")
    lines += [
        "",
        f"![Gradient norm per unit at initialization]({rel(figures['gradient_profile'])})",
        "",
        f"![Gradient norm per unit during training]({rel(figures['gradient_heatmap'])})",
        "",
        "## Caveats",
        "",
        f"- A short budget on a subset: {config.iterations:,} iterations on {train_images:,} training images,",
        f"  against the paper's {PAPER_ITERATIONS:,} on 45,000. Training error is what Fig. 6 is about; the test",
        "  errors are far above the paper's, as expected with that much less training data.",
        "- One seed per network; differences of a point or two are within run-to-run noise at this budget.",
        "- Lesion errors use a seeded subset of test images; the per-unit curve has a few points of sampling noise.",
        "",
        "Settings as recorded: `" + str({**asdict(config), "data_path": _shown_path(config.data_path)}) + "`",
        "",
    ]
    return "\n".join(lines)
