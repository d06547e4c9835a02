"""Training throughput of the workbench engine next to a textbook PyTorch loop, in the same run.

    python bench/train_throughput.py [--nets resnet20 resnet56 densenet-bc-100 wrn-16-8] [--iterations 40] [--compile]

For each net (a preset of any family), three figures on CIFAR-10 (../shared/data) at batch 128:
- ours: images/s of `workbench.training.fit` (its device-side pipeline and the engine's
  precision: bf16 autocast + channels_last where the CPU supports bf16), logging intervals
  after the first (warm-up) one;
- reference: a textbook loop, torchvision transforms (RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader, fp32, NCHW;
- compute: the same model and precision stepping on one fixed resident batch, so
  1 - ours/compute is the engine's overhead.
With --compile, also the engine with torch.compile: its images/s against eager and what compiling
costs once (wall time of the same iterations, compiled minus eager).
The last line printed is JSON: a list of {"bench", "ours", "reference", "ratio", "unit"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.textbook import textbook_loader  # noqa: E402
from workbench import build_model  # noqa: E402
from workbench.data import load_dataset  # noqa: E402
from workbench.spec import DataSpec, RunSpec, TrainSpec  # noqa: E402
from workbench.training import MemorySink, fit  # noqa: E402
from workbench.training.loop import resolve_channels_last, resolve_precision  # noqa: E402

CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
BATCH = 128


def engine_run(net: str, dataset, iterations: int, compile: bool = False) -> tuple[float, str, float]:
    """Images/s of `fit` after its first logging interval, its precision, and its wall time in seconds."""
    log_every = max(1, iterations // 4)
    run = RunSpec(
        net=build_model(net).spec,
        data=DataSpec(name="cifar10"),
        train=TrainSpec(iterations=iterations, batch_size=BATCH, log_every=log_every, compile=compile),
    )
    sink = MemorySink()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(run, Path(run_dir), sink, dataset=dataset)
    wall = time.perf_counter() - started
    rates = [r["value"] for r in sink.rows if r["name"] == "images_per_s"][1:]
    return float(np.mean(rates)), result.precision, wall



def reference_images_per_s(net: str, dataset, iterations: int, workers: int) -> float:
    loader = textbook_loader(dataset, BATCH, workers)
    torch.manual_seed(0)
    model = build_model(net).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, iterations // 4)
    batches = iter(loader)
    start = None
    for step in range(warmup + iterations):
        if step == warmup:
            start = time.perf_counter()
        images, labels = next(batches)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return iterations * BATCH / (time.perf_counter() - start)


def compute_images_per_s(net: str, iterations: int) -> float:
    device = torch.device("cpu")
    dtype = resolve_precision("auto", device)
    channels_last = resolve_channels_last("auto", device, dtype)
    torch.manual_seed(0)
    model = build_model(net).train()
    images = torch.randn(BATCH, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, iterations // 4)
    start = None
    for step in range(warmup + iterations):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return iterations * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=["resnet20", "resnet56", "densenet-bc-100", "wrn-16-8"])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the reference")
    parser.add_argument("--compile", action="store_true",
                        help="also train with torch.compile: its steady gain and its first-step (compile) cost")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not CIFAR_ARCHIVE.exists():
        sys.exit(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}; this benchmark needs ../shared/data")
    with tempfile.TemporaryDirectory() as home:
        dataset = load_dataset(DataSpec(name="cifar10", path=str(CIFAR_ARCHIVE)), home=Path(home))
    results = []
    for net in args.nets:
        ours, precision, _ = engine_run(net, dataset, args.iterations)
        reference = reference_images_per_s(net, dataset, args.iterations, args.loader_workers)
        compute = compute_images_per_s(net, args.iterations)
        overhead = 1 - ours / compute
        print(f"{net}: engine {ours:.0f} img/s ({precision}), textbook loop {reference:.0f} img/s (fp32, "
              f"{args.loader_workers} loader workers) -> {ours / reference:.2f}x; pure compute {compute:.0f} img/s, "
              f"engine overhead {100 * overhead:.1f}%")
        results.append({"bench": f"train_throughput/{net}", "ours": round(ours, 1), "reference": round(reference, 1),
                        "ratio": round(ours / reference, 3), "unit": "images/s"})
        results.append({"bench": f"train_overhead/{net}", "ours": round(ours, 1), "reference": round(compute, 1),
                        "ratio": round(ours / compute, 3), "unit": "images/s (engine vs pure compute)"})
        if args.compile:
            _, _, eager_wall = engine_run(net, dataset, args.iterations)
            compiled, _, compiled_wall = engine_run(net, dataset, args.iterations, compile=True)
            first_step = compiled_wall - eager_wall
            print(f"{net}: compiled {compiled:.0f} img/s vs eager {ours:.0f} ({compiled / ours:.2f}x); compiling costs "
                  f"about {first_step:.0f} s once (wall time of {args.iterations} iterations, compiled minus eager)")
            results.append({"bench": f"train_compile/{net}", "ours": round(compiled, 1), "reference": round(ours, 1),
                            "ratio": round(compiled / ours, 3), "unit": "images/s (compiled vs eager)",
                            "first_step_cost_s": round(first_step, 1)})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
