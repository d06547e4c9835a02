"""Training and the input pipeline on a shared machine: idle, and beside N CPU-bound competitors.

    python bench/contention.py [--nets resnet20 resnet56] [--competitors 0 1 2] [--iterations 30]

Competitors are `python -c "while True: pass"` processes. Each figure is measured in a fresh process,
so the thread settings it starts with are the ones it keeps:
- engine: `workbench.training.fit` under the workbench's thread policy (`workbench/threads.py`:
  passive OpenMP waits, all cores for one worker);
- textbook: the textbook loop (torchvision transforms through a DataLoader, fp32) with torch's defaults;
- pipeline: our device-side batches (policy) against the DataLoader reference (defaults);
- two workers: two engine processes side by side, each with half the cores, summed, against one alone.
Targets (issue 17): with N = cores competitors the pipeline >= 10x the DataLoader and the engine >= 1.5x
the textbook loop; with one competitor the engine >= 45% of its idle figure; two workers >= 90% of one.
The last line is JSON: a list of {"bench", "ours", "reference", "ratio", "unit"}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.threads import available_cores, child_env  # noqa: E402

DEFAULTS_ENV = {key: value for key, value in os.environ.items()
                if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "WORKBENCH_THREADS")}


def measure(kind: str, net: str, iterations: int) -> float:
    """One figure, in this process (called in a child by `measured`)."""
    import torch

    from bench.input_pipeline import load_cifar10, measure_ours, measure_reference
    from bench.train_throughput import engine_run, reference_images_per_s

    data, _ = load_cifar10()
    if kind == "engine":
        return engine_run(net, data, iterations)[0]
    if kind == "textbook":
        return reference_images_per_s(net, data, iterations, workers=2)
    if kind == "pipeline":
        return measure_ours(data, 128, "cpu", epochs=1)
    if kind == "dataloader":
        return measure_reference(data, 128, workers=2, batches=60)
    raise SystemExit(f"unknown measure {kind!r} (torch {torch.__version__})")


def start_measure(kind: str, net: str, iterations: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, __file__, "--measure", kind, "--nets", net, "--iterations", str(iterations)]
    return subprocess.Popen(command, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)


def result_of(process: subprocess.Popen) -> float:
    out, _ = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise SystemExit(f"a measurement failed (exit code {process.returncode})")
    return float(out.strip().splitlines()[-1])


def measured(kind: str, net: str, iterations: int, env: dict[str, str]) -> float:
    return result_of(start_measure(kind, net, iterations, env))


@contextmanager
def competitors(count: int):
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--competitors", type=int, nargs="+", default=None,
                        help="competitor counts (default 0, 1 and the number of cores)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(measure(args.measure, args.nets[0], args.iterations))
        return
    cores = available_cores()
    levels = args.competitors or sorted({0, 1, cores})
    policy = child_env(cores, DEFAULTS_ENV)
    half = child_env(max(1, cores // 2), DEFAULTS_ENV)
    figures: dict[tuple[str, str, int], float] = {}
    for level in levels:
        with competitors(level):
            for net in args.nets:
                for kind, env in (("engine", policy), ("textbook", DEFAULTS_ENV)):
                    figures[kind, net, level] = measured(kind, net, args.iterations, env)
                    print(f"{level} competitors  {net:<9} {kind:<10} {figures[kind, net, level]:8.0f} images/s",
                          flush=True)
            for kind, env in (("pipeline", policy), ("dataloader", DEFAULTS_ENV)):
                figures[kind, "-", level] = measured(kind, "-", args.iterations, env)
                print(f"{level} competitors  {'-':<9} {kind:<10} {figures[kind, '-', level]:8.0f} images/s", flush=True)
    pair_net = args.nets[0]
    pair = [start_measure("engine", pair_net, args.iterations, half) for _ in range(2)]
    together = sum(result_of(process) for process in pair)
    alone = measured("engine", pair_net, args.iterations, policy)
    print(f"two workers side by side ({pair_net}): {together:.0f} images/s together, {alone:.0f} one alone",
          flush=True)

    results = []
    for level in levels:
        for net in args.nets:
            ours, reference = figures["engine", net, level], figures["textbook", net, level]
            results.append({"bench": f"contention/{net}/{level}-competitors/engine-vs-textbook", "ours": round(ours, 1),
                            "reference": round(reference, 1), "ratio": round(ours / reference, 3),
                            "unit": "images/s"})
            if level:
                idle = figures.get(("engine", net, 0))
                if idle:
                    results.append({"bench": f"contention/{net}/{level}-competitors/engine-vs-idle",
                                    "ours": round(ours, 1), "reference": round(idle, 1),
                                    "ratio": round(ours / idle, 3), "unit": "images/s"})
        ours, reference = figures["pipeline", "-", level], figures["dataloader", "-", level]
        results.append({"bench": f"contention/input-pipeline/{level}-competitors", "ours": round(ours, 1),
                        "reference": round(reference, 1), "ratio": round(ours / reference, 2), "unit": "images/s"})
    results.append({"bench": f"contention/{pair_net}/two-workers-vs-one", "ours": round(together, 1),
                    "reference": round(alone, 1), "ratio": round(together / alone, 3), "unit": "images/s"})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
