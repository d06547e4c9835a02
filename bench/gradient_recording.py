"""Cost of recording the gradient norm at every unit's input, in the training engine's own step.

    python bench/gradient_recording.py [--preset resnet56] [--batch 128] [--rounds 12] [--interval 100]

Builds the engine's trainer (same precision and memory format `fit` picks on this machine) on
synthetic CIFAR-sized data and times training steps with recording on every step and off,
interleaved in the same process (ABBA order) so both see the same load; both wall time and the
process's CPU time are reported (the latter is steadier when other work shares the cores). The overhead at an
interval of N steps follows from the per-step cost: (t_off + (t_on - t_off) / N) / t_off.
Target: under 5% at the configured interval. The last line printed is JSON:
[{"bench", "ours", "reference", "ratio", "unit"}, ...].
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.data import load_dataset  # noqa: E402
from workbench.presets import load_preset  # noqa: E402
from workbench.spec import DataSpec, RunSpec, TrainSpec  # noqa: E402
from workbench.training import NullSink  # noqa: E402
from workbench.training.loop import _Trainer  # noqa: E402


def timed_step(trainer: _Trainer, batches, grad_norm_every: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one engine step, recording every `grad_norm_every` steps."""
    trainer.train = trainer.train.model_copy(update={"grad_norm_every": grad_norm_every})
    images, labels = next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step(images, labels, want_grad_norms=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def endless(trainer: _Trainer):
    while True:
        yield from trainer.batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="resnet56")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12, help="ABBA rounds; each times two steps of each kind")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--interval", type=int, default=100, help="the configured grad_norm_every")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        data = DataSpec(synthetic_train=args.batch * 8, synthetic_test=64)
        run = RunSpec(net=load_preset(args.preset), data=data,
                      train=TrainSpec(iterations=10**6, batch_size=args.batch, log_every=10**6))
        trainer = _Trainer(run, home / "run", NullSink(), load_dataset(data, home=home))
        trainer.model.train()
        batches = endless(trainer)
        for _ in range(args.warmup):
            timed_step(trainer, batches, 0)
            timed_step(trainer, batches, 1)
        off: list[float] = []
        on: list[float] = []
        for _ in range(args.rounds):
            off.append(timed_step(trainer, batches, 0))
            on.append(timed_step(trainer, batches, 1))
            on.append(timed_step(trainer, batches, 1))
            off.append(timed_step(trainer, batches, 0))
        precision = str(trainer.autocast_dtype or "fp32").removeprefix("torch.")

    t_off, cpu_off = (statistics.median(times) * 1000 for times in zip(*off, strict=True))
    t_on, cpu_on = (statistics.median(times) * 1000 for times in zip(*on, strict=True))
    t_interval = t_off + (t_on - t_off) / args.interval
    setting = f"{args.preset}, {trainer.device.type}, batch {args.batch}, {precision}"
    results = [
        {"bench": f"step with unit gradient norms every step ({setting}; wall)", "ours": t_on, "reference": t_off,
         "unit": "ms/step"},
        {"bench": f"step with unit gradient norms every step ({setting}; process CPU time)", "ours": cpu_on,
         "reference": cpu_off, "unit": "CPU ms/step"},
        {"bench": f"step with unit gradient norms every {args.interval} steps ({setting}; wall, from the per-step "
                  "cost)", "ours": t_interval, "reference": t_off, "unit": "ms/step"},
    ]
    print(f"{'benchmark':<112} {'ours':>9} {'off':>9} {'ratio':>7}")
    for result in results:
        result["ratio"] = result["ours"] / result["reference"]
        print(f"{result['bench']:<112} {result['ours']:>9.1f} {result['reference']:>9.1f} {result['ratio']:>7.3f}")
    spread = statistics.pstdev(wall for wall, _ in off) * 1000
    print(f"{2 * args.rounds} steps of each kind, medians; wall step time spread (std, recording off) {spread:.1f} ms "
          "(a large spread means the CPU was shared; the process CPU time is then the steadier measure). "
          "Target: overhead under 5% at the configured interval (ratio < 1.05).")
    print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results]))


if __name__ == "__main__":
    main()
