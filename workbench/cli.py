"""`workbench ...` (or `python -m workbench ...`): headless use of the workbench.

Options such as --home and --db go before or after the sub-command.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import yaml

from workbench import build_model, summarize
from workbench.errors import WorkbenchError
from workbench.paths import home_dir
from workbench.presets import get_preset, list_presets
from workbench.service.forms import field_choices, field_default, field_help, parse_classes
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec, parse_net, parse_spec
from workbench.sweep_spec import SweepSpec, build_sweep
from workbench.threads import cli_threads, use_threads


def _spec_from_arg(value: str) -> NetSpec:
    path = Path(value)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise WorkbenchError(f"spec file {path} does not exist")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise WorkbenchError(f"spec file {path} must hold a mapping of network spec fields")
        return parse_net(data.get("spec", data))
    return build_model(value).spec


def _format_int(value: int) -> str:
    return f"{value:,}"


def cmd_presets(args: argparse.Namespace) -> int:
    presets = list_presets(args.home)
    if args.json:
        print(json.dumps([{"name": p.name, "source": p.source, "reference_error": p.reference_error,
                           "spec": p.spec.model_dump()} for p in presets], indent=2))
        return 0
    width = max(len(p.name) for p in presets)
    for preset in presets:
        spec = preset.spec
        ref = f"{preset.reference_error:.2f}%" if preset.reference_error is not None else "-"
        if not isinstance(spec, NetSpec):
            print(f"{preset.name:<{width}}  {spec.family:<8} {spec.kind:<11} depth {spec.depth:<5} "
                  f"{spec.outline().removeprefix(f'{spec.family}, ')}, paper error {ref}")
            continue
        print(f"{preset.name:<{width}}  {spec.family:<8} {spec.unit:<10} depth {spec.depth:<5} "
              f"shortcut {spec.shortcut:<4} {spec.placement:<16} paper error {ref}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    spec = _spec_from_arg(args.net)
    summary = summarize(spec, input_size=args.input_size, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if isinstance(spec, NetSpec):
        print(f"{summary['name']}: {spec.family} {spec.unit}, placement {spec.placement}, shortcut {spec.shortcut}")
    else:
        print(f"{summary['name']}: {spec.description()}")
    print(f"  parameters       {_format_int(summary['params'])} ({_format_int(summary['trainable_params'])} trainable)")
    size = summary["input_size"]
    print(f"  multiply-adds    {_format_int(summary['macs'])} per {size}x{size} image")
    print(f"  weighted depth   {summary['depth']} ({summary['units']} units)")
    mebibytes = summary["activation_bytes"] / 2**20
    print(f"  activations      {mebibytes:.1f} MiB at batch {summary['activation_batch_size']}")
    for stage in summary["stages"]:
        shape = "x".join(str(d) for d in stage["output_shape"])
        print(f"  {stage['stage']:<8} {stage['units']:>4} units  out {shape:<12} {_format_int(stage['params'])} params")
    return 0


def _open_store(args: argparse.Namespace):
    from workbench.service import open_store

    return open_store(home_dir(args.home), args.db)


def _service(args: argparse.Namespace):
    """The service layer over this home's store; runs it queues wait for whichever workers serve the store."""
    from workbench.jobs import STALE_AFTER_S, QueueExecutor
    from workbench.service import Workbench

    store = _open_store(args)
    executor = QueueExecutor(store, stale_after_s=getattr(args, "stale_after", STALE_AFTER_S))
    return Workbench(store, executor, args.data_root or None)


def data_and_train_from_args(args: argparse.Namespace) -> tuple[DataSpec, TrainSpec]:
    """The DataSpec and TrainSpec that the run options describe."""
    data = parse_spec(DataSpec, {
        key: value for key, value in {
            "name": args.dataset, "path": args.data_dir, "download": args.download,
            "classes": args.classes, "per_class_cap": args.per_class_cap, "resolution": args.resolution,
            "validation_size": args.validation_size, "seed": args.seed,
        }.items() if value is not None
    })
    budget = {"epochs": args.epochs} if args.iterations is None else {"iterations": args.iterations}
    train = parse_spec(TrainSpec, {
        key: value for key, value in {
            **budget, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "schedule": args.schedule,
            "warmup_iterations": args.warmup, "precision": args.precision, "device": args.device,
            "compile": args.compile, "devices": args.devices, "sync_batchnorm": args.sync_batchnorm,
            "log_every": args.log_every, "eval_every": args.eval_every,
            "grad_norm_every": args.grad_norm_every,
        }.items() if value is not None
    })
    return data, train


def run_spec_from_args(args: argparse.Namespace) -> tuple[RunSpec, str]:
    """The RunSpec and preset name that `train` and `submit` options describe."""
    preset = get_preset(args.preset, args.home)
    data, train = data_and_train_from_args(args)
    transfer = {
        key: value for key, value in {
            "init_from": args.init_from, "finetune": args.finetune, "finetune_stages": args.finetune_stages,
            "head_hidden": args.head_hidden,
        }.items() if value is not None
    }
    run = parse_spec(RunSpec, {"net": preset.spec.model_dump(), "data": data.model_dump(),
                               "train": train.model_dump(), **transfer})
    return run, preset.name


def _submit_from_args(args: argparse.Namespace):
    """Queue the run (or its `--seeds` repeats, as a seed group) that `train`/`submit` options describe; returns
    (service, run ids)."""
    from workbench.service.plans import SEEDS, PlannedRun, with_seeds

    spec, preset = run_spec_from_args(args)
    service = _service(args)
    plan = [PlannedRun(args.name or f"{preset} on {spec.data.name}", spec, preset)]
    group = service.group_name(SEEDS, preset, spec.data) if args.seeds > 1 else None
    return service, service.submit(with_seeds(plan, args.seeds, group=group))


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workbench.jobs.worker import default_worker_id, execute_run

    service, run_ids = _submit_from_args(args)
    store = service.store
    failed = 0
    for run_id in run_ids:
        print(f"run {run_id}", flush=True)
        worker_id = default_worker_id()
        store.claim_run(run_id, worker_id)
        with tqdm(total=None, unit="it", dynamic_ncols=True) as bar:
            def show(state: dict, bar=bar) -> None:
                bar.total = state.get("total_iterations", bar.total)
                bar.n = state.get("iteration", bar.n)
                shown = {k: f"{state[k]:.2f}" for k in ("train_error", "test_error") if state.get(k) is not None}
                bar.set_postfix(shown, refresh=True)

            status = execute_run(store, run_id, worker_id, allowed_roots=args.data_root or None, on_progress=show)
        run = store.get_run(run_id)
        print(f"run {run_id} {status}; {_best_text(run)}")
        if run.error_message and status != "completed":
            print(f"error: {run.error_message}", file=sys.stderr)
        failed += status != "completed"
    return 1 if failed else 0


def cmd_estimate(args: argparse.Namespace) -> int:
    spec, _ = run_spec_from_args(args)
    print(_service(args).estimate(spec).text())
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    _, run_ids = _submit_from_args(args)
    print(" ".join(map(str, run_ids)))
    return 0


def cmd_compare_architectures(args: argparse.Namespace) -> int:
    from workbench.service.plans import ARCHITECTURES, plan_architectures, with_seeds

    data, train = data_and_train_from_args(args)
    service = _service(args)
    group = args.group or service.group_name(ARCHITECTURES, " vs ".join(args.preset), data)
    plan = with_seeds(plan_architectures(args.preset, data, train, group=group, home=args.home), args.seeds)
    run_ids = service.submit(plan)
    print(f"group {group}")
    for run_id, run in zip(run_ids, plan, strict=True):
        print(f"{run_id} {run.name}")
    return 0


def sweep_from_args(args: argparse.Namespace) -> SweepSpec:
    """The SweepSpec that `sweep` options describe: the run options are its base run."""
    if args.seeds > 1:
        raise WorkbenchError("a sweep varies seeds as a parameter: --grid seed=0,1,2 (or --param seed=0..9 with "
                             "--random/--tpe) instead of --seeds")
    base, preset = run_spec_from_args(args)
    method, trials = ("tpe", args.tpe) if args.tpe else ("random", args.random) if args.random else ("grid", None)
    return build_sweep(base, "\n".join(args.grid + args.param), method=method, trials=trials, pruning=args.prune,
                       base_preset=preset, objective=args.objective, prune_after=args.prune_after,
                       parallel=args.parallel, seed=args.sweep_seed)


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = sweep_from_args(args)
    service = _service(args)
    group, run_ids = service.launch_sweep(sweep, args.name)
    later = f"; the workers ask TPE for the other {sweep.trials - len(run_ids)} as results come in" \
        if sweep.method == "tpe" else ""
    print(f"group {group} ({sweep.method} sweep, {sweep.trial_count} trials{later})")
    for run in service.list_runs(group_name=group)[::-1]:
        print(f"{run.id} {run.name}")
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    report = _service(args).sweep_report(args.group)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    state = "finished" if report.finished else "running"
    print(f"sweep {report.group}: {report.sweep.method}, {len(report.trials)} of {report.sweep.trial_count} trials, "
          f"{state}; objective: {report.sweep.objective_label}")
    if report.message:
        print(report.message)
    for trial in sorted(report.trials, key=lambda trial: (trial.value is None, trial.value or 0.0)):
        value = f"{trial.value:6.2f}%" if trial.value is not None else "      -"
        status = "pruned" if trial.pruned else trial.status
        print(f"{trial.run_id:>5}  {status:<11} {value}  {trial.name}")
    print("parameter importance: " + report.importance_note)
    for name, share in report.importance:
        print(f"  {name:<14} {share:.3f}")
    if report.best is not None:
        print(f"best: run {report.best.run_id} ({report.best.name}), {report.best.value:.2f}%; export it with "
              f"`workbench export {report.best.run_id} --format bundle -o best.zip`")
    return 0


def cmd_architectures_report(args: argparse.Namespace) -> int:
    from workbench.service.architectures_report import architectures_report

    command = shlex.join(["python", "-m", "workbench", "architectures-report", "--group", args.group,
                          "--docs", str(args.docs)])
    path = architectures_report(_open_store(args), args.group, args.docs, command)
    print(f"wrote {path}")
    return 0


def _stop_event():
    """An event set by SIGTERM or SIGINT (the worker then checkpoints its run and stops)."""
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def cmd_worker(args: argparse.Namespace) -> int:
    from workbench.jobs.worker import run_worker

    stop = _stop_event()
    if args.run is not None:
        return _work_on_one_run(args, stop)
    store = _open_store(args)
    run_worker(store, args.worker_id, exit_when_idle=args.exit_when_idle, allowed_roots=args.data_root or None,
               stop=stop, stale_after_s=args.stale_after, auto_resume=args.auto_resume, parent_pid=args.parent_pid)
    return 0


def _work_on_one_run(args: argparse.Namespace, stop) -> int:
    """`worker --run ID`: a cluster job's worker. Fails (naming the path) when this node does not see the home
    folder the dispatcher marked, before anything is written there."""
    import os

    from workbench.jobs.worker import default_worker_id, run_one
    from workbench.paths import RunFolder, check_shared_home

    # The job's log is where a cluster user looks: say what the worker does even though the CLI is quiet.
    logging.getLogger("workbench").setLevel(logging.INFO)
    expected_home = os.environ.get("WORKBENCH_HOME_ID")
    if expected_home:
        check_shared_home(args.home, expected_home)
    store = _open_store(args)
    store.get_run(args.run)  # a run deleted while its job waited for a node gets no folder
    _log_to_file(RunFolder.of(store.home, args.run).job_log)
    worker_id = f"{args.job_id}@{default_worker_id()}" if args.job_id else None
    status = run_one(store, args.run, worker_id, allowed_roots=args.data_root or None, stop=stop)
    return 1 if status == "failed" else 0


def _log_to_file(path: Path) -> None:
    """Append this process's log to `path` as well as to its output (only there when the file cannot be written)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        logging.getLogger("workbench").warning("this log is not kept in %s: %s", path, exc)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def cmd_dispatch(args: argparse.Namespace) -> int:
    from workbench.jobs.dispatch import dispatch, make_executor
    from workbench.paths import database_url

    stop = _stop_event()
    store = _open_store(args)
    executor = make_executor(args.executor, store, db_url=database_url(store.home, args.db),
                             ray_address=args.ray_address, workers=args.workers, auto_resume=args.auto_resume,
                             data_roots=args.data_root, stale_after_s=args.stale_after)
    dispatch(executor, store, stop, exit_when_idle=args.exit_when_idle)
    return 0


def _best_text(run) -> str:
    """"best val error 6.80% (test error there 7.90%)" or "best test error 8.75%"."""
    from workbench.service.run_query import best_error

    error, split = best_error(run)
    if error is None:
        return f"best {split} error -"
    at_best = f" (test error there {run.test_error_at_best:.2f}%)" if split == "val" and run.test_error_at_best else ""
    return f"best {split} error {error:.2f}%{at_best}"


def run_summary(run) -> dict:
    """The JSON form of a run for `runs --json`."""
    total = run.total_iterations
    return {
        "id": run.id, "name": run.name, "status": run.status, "preset": run.preset, "dataset": run.dataset,
        "group": run.group_name, "iteration": run.iteration, "total_iterations": total,
        "progress": (run.iteration / total) if total else 0.0, "epoch": run.epoch,
        "best_test_error": run.best_test_error, "last_test_error": run.last_test_error,
        "best_val_error": run.best_val_error, "test_error_at_best": run.test_error_at_best,
        "images_per_s": run.images_per_s, "device": run.device, "error": run.error_message,
        "world_size": run.spec.get("train", {}).get("devices", 1),
        "created_at": run.created_at.isoformat() if run.created_at else None,
    }


def cmd_runs(args: argparse.Namespace) -> int:
    store = _open_store(args)
    store.mark_stale_interrupted(args.stale_after)
    from workbench.service.run_query import best_error_text

    records = store.list_runs(status=args.status)
    if args.json:
        print(json.dumps([run_summary(run) for run in records], indent=2))
        return 0
    for run in records:
        best = best_error_text(run) or "-"
        progress = run.iteration / run.total_iterations if run.total_iterations else 0.0
        print(f"{run.id:>5}  {run.status:<11} {100 * progress:5.1f}%  best {best:<12} {run.name}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print(_service(args).cancel(args.run))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    print(_service(args).resume(args.run))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    print(_service(args).export(args.run, args.format, args.checkpoint, args.output))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    fmt, target = ("csv", args.csv) if args.csv else ("tensorboard", args.tensorboard)
    print(_service(args).export_curves(args.runs, fmt, target, args.metric))
    return 0


def cmd_lesion(args: argparse.Namespace) -> int:
    from workbench.jobs.analyses import LESION

    service = _service(args)
    params = {"draws": args.draws, "max_k": args.max_k, "limit_images": args.limit_images, "seed": args.seed,
              "checkpoint": args.checkpoint, "device": args.device}
    if args.queue:
        print(f"analysis {service.queue_analysis(args.run, LESION, params)} queued; `analyses` shows its status")
        return 0
    analysis = service.run_analysis(args.run, LESION, params)
    if analysis.status != "completed":
        print(f"error: lesion study of run {args.run} {analysis.status}: {analysis.error_message}", file=sys.stderr)
        return 1
    result = analysis.result
    worst = max(result["single"], key=lambda entry: entry["error"])
    print(f"run {args.run}: lesion study stored as analysis {analysis.id}; intact error "
          f"{result['baseline_error']:.2f}% on {result['images']} images; worst single deletion: unit "
          f"{worst['unit']} ({worst['error']:.2f}%)")
    return 0


def cmd_fractal_columns(args: argparse.Namespace) -> int:
    from workbench.jobs.analyses import FRACTAL_COLUMNS

    service = _service(args)
    params = {"limit_images": args.limit_images, "checkpoint": args.checkpoint, "device": args.device}
    analysis = service.run_analysis(args.run, FRACTAL_COLUMNS, params)
    if analysis.status != "completed":
        print(f"error: per-column evaluation of run {args.run} {analysis.status}: {analysis.error_message}",
              file=sys.stderr)
        return 1
    result = analysis.result
    print(f"run {args.run} on {result['images']} test images: all columns joined {result['joined']:.2f}%")
    for row in result["columns"]:
        print(f"  column {row['column']} alone ({row['convs']} convs deep): {row['error']:.2f}%")
    return 0


def analysis_summary(analysis) -> dict:
    """The JSON form of an analysis job for `analyses --json`."""
    return {
        "id": analysis.id, "kind": analysis.kind, "run_id": analysis.run_id, "status": analysis.status,
        "progress": analysis.progress, "error": analysis.error_message,
        "created_at": analysis.created_at.isoformat(),
        "finished_at": analysis.finished_at.isoformat() if analysis.finished_at else None,
    }


def cmd_analyses(args: argparse.Namespace) -> int:
    jobs = [analysis_summary(job) for job in _service(args).analyses(args.run, status=args.status)]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for job in jobs:
        finished = job["finished_at"] or "-"
        print(f"{job['id']:>5}  {job['kind']:<17} run {job['run_id']:<5} {job['status']:<10} "
              f"created {job['created_at']}  finished {finished}")
    return 0


def cmd_cancel_analysis(args: argparse.Namespace) -> int:
    print(_service(args).cancel_analysis(args.analysis))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from workbench.science.reproduction import ReproductionConfig, reproduce

    given = {
        "data_path": args.data, "per_class_cap": args.per_class_cap, "iterations": args.iterations,
        "warmup_iterations": args.warmup, "depths": tuple(args.depths) if args.depths else None,
        "lesion_images": args.lesion_images, "lesion_draws": args.lesion_draws, "lesion_max_k": args.lesion_max_k,
        "seed": args.seed, "group_name": args.group,
    }
    config = ReproductionConfig(**{name: value for name, value in given.items() if value is not None})
    result = reproduce(home_dir(args.home), args.docs, config)
    print(f"{result.verdict['verdict']}: {result.verdict['explanation']}")
    print(f"report: {result.report}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from workbench.paths import file_max_age_hours

    removed = _service(args).clean_old_files(file_max_age_hours(args.older_than))
    print(f"removed {len(removed)} file(s)" + "".join(f"\n  {path}" for path in removed))
    return 0


def _add_run_options(parser: argparse.ArgumentParser, *, several_presets: bool = False) -> None:
    if several_presets:
        parser.add_argument("--preset", required=True, action="append",
                            help="network preset of any family (see `presets`); give it once per network")
    else:
        parser.add_argument("--preset", required=True, help="network preset (see `presets`)")
    parser.add_argument("--dataset", default=field_default(DataSpec, "name"), choices=field_choices(DataSpec, "name"))
    parser.add_argument("--data-dir", default=None, help="archive or folder of the dataset")
    parser.add_argument("--download", action="store_true", default=None, help="download CIFAR when not found")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="the first k classes (5) or class names separated by commas (cat, dog)")
    parser.add_argument("--per-class-cap", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--validation-size", type=int, default=None, help="images held out of train (paper: 5000)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, default=None)
    budget.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--schedule", choices=field_choices(TrainSpec, "schedule"), default=None)
    parser.add_argument("--warmup", type=int, default=None, help=field_help(TrainSpec, "warmup_iterations"))
    parser.add_argument("--precision", choices=field_choices(TrainSpec, "precision"), default=None)
    parser.add_argument("--device", choices=field_choices(TrainSpec, "device"), default=None)
    parser.add_argument("--compile", action="store_true", default=None, help=field_help(TrainSpec, "compile"))
    parser.add_argument("--devices", type=int, default=None, help=field_help(TrainSpec, "devices"))
    parser.add_argument("--sync-batchnorm", action="store_true", default=None,
                        help=field_help(TrainSpec, "sync_batchnorm"))
    parser.add_argument("--log-every", type=int, default=None, help=field_help(TrainSpec, "log_every"))
    parser.add_argument("--eval-every", type=int, default=None, help=field_help(TrainSpec, "eval_every"))
    parser.add_argument("--grad-norm-every", type=int, default=None, help=field_help(TrainSpec, "grad_norm_every"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1,
                        help="repeat the run with N consecutive seeds from --seed, as one seed group")
    if several_presets:
        parser.add_argument("--group", default=None, help="group name (default from the presets and the data)")
        return
    parser.add_argument("--name", default=None)
    parser.add_argument("--init-from", default=None, help="start from a bundle, checkpoint or state_dict file")
    parser.add_argument("--finetune", choices=field_choices(RunSpec, "finetune"), default=None)
    parser.add_argument("--finetune-stages", type=int, default=None, help="last_stages: how many stages train")
    parser.add_argument("--head-hidden", type=int, default=None, help="head: width of an extra hidden layer")


def _add_stale_option(parser: argparse.ArgumentParser) -> None:
    from workbench.jobs import STALE_AFTER_S

    parser.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                        help="a running run without a heartbeat for this long is taken as interrupted "
                             f"(default {STALE_AFTER_S:.0f})")


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (default $WORKBENCH_THREADS, else the share the app "
                             "gave it, else all cores); see workbench/threads.py")


GLOBAL_DEFAULTS = {"home": None, "db": None, "data_root": [], "verbose": False}


def _global_options(parser: argparse.ArgumentParser, defaults: dict | None) -> None:
    """--home, --db, --data-root and -v. Given before the sub-command they take `defaults`; each sub-command
    repeats them with no defaults (`defaults` None), so the same option after it overrides what came before."""
    def default(name: str):
        return argparse.SUPPRESS if defaults is None else defaults[name]

    parser.add_argument("--home", type=Path, default=default("home"),
                        help="home folder (default $WORKBENCH_HOME or ./.workbench)")
    parser.add_argument("--db", default=default("db"), help="database URL (default SQLite in the home folder)")
    parser.add_argument("--data-root", action="append", type=Path, default=default("data_root"),
                        help="a folder datasets may be read from (repeatable; default: anywhere)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default("verbose"),
                        help="log debug messages (default: warnings and errors only)")


class _Commands:
    """`add_parser` that gives every sub-command the global options too."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.commands = parser.add_subparsers(dest="command", required=True)

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        command = self.commands.add_parser(name, **kwargs)
        _global_options(command, None)
        return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    _global_options(parser, GLOBAL_DEFAULTS)
    commands = _Commands(parser)

    presets = commands.add_parser("presets", help="list the network presets")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(handler=cmd_presets)

    summary = commands.add_parser("summary", help="parameters, multiply-adds and depth of a network")
    summary.add_argument("net", help="a preset name or a YAML/JSON spec file")
    summary.add_argument("--input-size", type=int, default=None)
    summary.add_argument("--batch-size", type=int, default=128, help="batch size for the activation memory estimate")
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(handler=cmd_summary)

    train = commands.add_parser("train", help="train in the foreground (stored like any run)")
    _add_run_options(train)
    _add_threads_option(train)
    train.set_defaults(handler=cmd_train)

    submit = commands.add_parser("submit", help="queue a run for the workers; prints its id")
    _add_run_options(submit)
    submit.set_defaults(handler=cmd_submit)

    estimate = commands.add_parser("estimate", help="how long a run would take on a worker here (a few timed "
                                   "steps, cached); the same options as submit")
    _add_run_options(estimate)
    estimate.set_defaults(handler=cmd_estimate)

    architectures = commands.add_parser(
        "compare-architectures",
        help="queue several networks of any family on identical data, data order and seed, as one group")
    _add_run_options(architectures, several_presets=True)
    architectures.set_defaults(handler=cmd_compare_architectures)

    sweep = commands.add_parser(
        "sweep", help="queue a grid, random or TPE search over run settings as one sweep group",
        description="The run options give the base run; --grid/--param give the settings to vary: "
                    "lr, weight_decay, batch_size, depth, shortcut, placement, warmup, seed. --name names the group.")
    _add_run_options(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                       help="a parameter and its values (repeatable); every combination is one trial")
    sweep.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                       help="for --random/--tpe: values to choose from (lr=0.1,0.05) or a range (lr=0.001..0.3:log, "
                            "warmup=0..200); repeatable")
    method = sweep.add_mutually_exclusive_group()
    method.add_argument("--random", type=int, default=None, metavar="N", help="N trials drawn at random")
    method.add_argument("--tpe", type=int, default=None, metavar="N",
                        help="N trials, each chosen by Optuna's TPE from the results so far")
    sweep.add_argument("--objective", choices=field_choices(SweepSpec, "objective"), default=None,
                       help=field_help(SweepSpec, "objective"))
    sweep.add_argument("--prune", action="store_true", help=field_help(SweepSpec, "pruning"))
    sweep.add_argument("--prune-after", type=int, default=None, help=field_help(SweepSpec, "prune_after"))
    sweep.add_argument("--parallel", type=int, default=None, help=field_help(SweepSpec, "parallel"))
    sweep.add_argument("--sweep-seed", type=int, default=None, help=field_help(SweepSpec, "seed"))
    sweep.set_defaults(handler=cmd_sweep)

    sweep_report = commands.add_parser("sweep-report",
                                       help="a sweep's trials, parameter importance and best trial")
    sweep_report.add_argument("group")
    sweep_report.add_argument("--json", action="store_true")
    sweep_report.set_defaults(handler=cmd_sweep_report)

    report = commands.add_parser("architectures-report",
                                 help="write a finished architectures group's comparison (Markdown + figure)")
    report.add_argument("--group", required=True)
    report.add_argument("--docs", type=Path, default=Path("docs") / "architectures")
    report.set_defaults(handler=cmd_architectures_report)

    worker = commands.add_parser("worker", help="a worker process that trains queued runs")
    worker.add_argument("--worker-id", default=None)
    worker.add_argument("--exit-when-idle", action="store_true")
    worker.add_argument("--auto-resume", action="store_true",
                        help="queue interrupted runs again (they continue from their checkpoints)")
    worker.add_argument("--parent-pid", type=int, default=None,
                        help="stop (checkpoint, leave the run interrupted) when this process, its parent, dies")
    worker.add_argument("--run", type=int, default=None, help="execute only this queued run, then exit "
                        "(what a cluster job runs)")
    worker.add_argument("--job-id", default=None, help="the cluster job this worker runs in (shown on the run)")
    _add_stale_option(worker)
    _add_threads_option(worker)
    worker.set_defaults(handler=cmd_worker)

    dispatch = commands.add_parser("dispatch", help="serve the queue without the UI: local workers or Ray jobs")
    dispatch.add_argument("--executor", choices=["local", "ray"], default="local")
    dispatch.add_argument("--ray-address", default=None, metavar="URL",
                          help="the Ray head's dashboard address (http://HOST:8265), for --executor ray")
    dispatch.add_argument("--workers", type=int, default=None, help="local worker processes (default one per GPU)")
    dispatch.add_argument("--auto-resume", action="store_true",
                          help="queue interrupted runs again (they continue from their checkpoints)")
    dispatch.add_argument("--exit-when-idle", action="store_true", help="exit once no run is queued or running")
    _add_stale_option(dispatch)
    dispatch.set_defaults(handler=cmd_dispatch)

    runs = commands.add_parser("runs", help="list runs")
    runs.add_argument("--status", default=None)
    runs.add_argument("--json", action="store_true")
    _add_stale_option(runs)
    runs.set_defaults(handler=cmd_runs)

    cancel = commands.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("run", type=int)
    cancel.set_defaults(handler=cmd_cancel)

    export = commands.add_parser("export", help="export a run's model: bundle, ONNX, torch.export or torchvision")
    export.add_argument("run", type=int)
    export.add_argument("--format", required=True, choices=["bundle", "onnx", "pt2", "torchvision"])
    export.add_argument("--checkpoint", choices=["best", "last"], default="best")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.set_defaults(handler=cmd_export)

    metrics = commands.add_parser("metrics", help="write runs' stored curves as a long CSV or TensorBoard event files")
    metrics.add_argument("runs", type=int, nargs="+", metavar="RUN")
    target = metrics.add_mutually_exclusive_group(required=True)
    target.add_argument("--csv", type=Path, metavar="FILE",
                        help="one row per value: run, run_name, metric, split, iteration, epoch, wall_time, value")
    target.add_argument("--tensorboard", type=Path, metavar="DIR", help="event files, one folder per run")
    metrics.add_argument("--metric", action="append", default=None,
                         help="only this metric (repeatable; default all: error, loss, lr, images_per_s, ...)")
    metrics.set_defaults(handler=cmd_metrics)

    resume = commands.add_parser("resume", help="queue an interrupted, cancelled or failed run again")
    resume.add_argument("run", type=int)
    _add_stale_option(resume)
    resume.set_defaults(handler=cmd_resume)
    lesion = commands.add_parser("lesion", help="lesion study of a trained run (Veit et al. 2016); stores the result")
    lesion.add_argument("run", type=int)
    lesion.add_argument("--draws", type=int, default=3, help="random deletion sets per k")
    lesion.add_argument("--max-k", type=int, default=10, help="delete up to this many random units")
    lesion.add_argument("--limit-images", type=int, default=None, help="use a seeded subset of the test split")
    lesion.add_argument("--seed", type=int, default=0)
    lesion.add_argument("--checkpoint", choices=["best", "last"], default="best")
    lesion.add_argument("--device", choices=field_choices(TrainSpec, "device"), default="auto")
    lesion.add_argument("--queue", action="store_true", help="leave it to the workers instead of running it here")
    lesion.set_defaults(handler=cmd_lesion)
    columns = commands.add_parser(
        "fractal-columns", help="test error of a trained FractalNet per column and joined (Larsson et al. 2016)")
    columns.add_argument("run", type=int)
    columns.add_argument("--limit-images", type=int, default=None, help="use a seeded subset of the test split")
    columns.add_argument("--checkpoint", choices=["best", "last"], default="best")
    columns.add_argument("--device", choices=field_choices(TrainSpec, "device"), default="auto")
    columns.set_defaults(handler=cmd_fractal_columns)
    analyses = commands.add_parser("analyses", help="list analysis jobs (lesion studies, gradient profiles)")
    analyses.add_argument("--run", type=int, default=None, help="only this run's")
    analyses.add_argument("--status", default=None)
    analyses.add_argument("--json", action="store_true")
    analyses.set_defaults(handler=cmd_analyses)
    cancel_analysis = commands.add_parser("cancel-analysis", help="cancel a queued or running analysis")
    cancel_analysis.add_argument("analysis", type=int)
    cancel_analysis.set_defaults(handler=cmd_cancel_analysis)
    reproduce = commands.add_parser(
        "reproduce", help="train a plain/residual depth ladder on CIFAR-10, lesion it, write docs/reproduction.md")
    reproduce.add_argument("--data", type=Path, default=None, help="CIFAR-10 archive (default ../shared/data)")
    reproduce.add_argument("--docs", type=Path, default=Path("docs"), help="where the report and figures go")
    reproduce.add_argument("--per-class-cap", type=int, help="training and test images per class (default 500)")
    reproduce.add_argument("--iterations", type=int, help="training iterations per network (default 3000)")
    reproduce.add_argument("--warmup", type=int, help="linear learning-rate warm-up iterations (default 200)")
    reproduce.add_argument("--depths", type=int, nargs="+", help="ladder depths (default 20 56)")
    reproduce.add_argument("--lesion-images", type=int, help="test images for the lesion study (default 1000)")
    reproduce.add_argument("--lesion-draws", type=int, help="random draws per k (default 2)")
    reproduce.add_argument("--lesion-max-k", type=int, help="largest number of units deleted at once (default 8)")
    reproduce.add_argument("--seed", type=int, help="seed of the subset, data order and init (default 0)")
    reproduce.add_argument("--group", default=None, help="ladder group name (default from the subset and budget)")
    reproduce.set_defaults(handler=cmd_reproduce)
    cleanup = commands.add_parser("cleanup", help="delete uploads and exports older than an age (runs keep theirs)")
    cleanup.add_argument("--older-than", type=float, default=None, metavar="HOURS",
                         help="default $WORKBENCH_FILE_MAX_AGE_HOURS or 168 (a week)")
    cleanup.set_defaults(handler=cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        use_threads(cli_threads(getattr(args, "threads", None)))
        return args.handler(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
