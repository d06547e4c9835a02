"""Input pipeline throughput: CIFAR-10 training batches (crop + flip + normalize, batch 128).

Ours: `TrainBatches` (dataset resident as uint8 on the device, batched tensor augmentation).
Reference: torchvision's `RandomCrop(32, padding=4)`, `RandomHorizontalFlip`, `ToTensor`, `Normalize`
on PIL images through a `DataLoader`, measured with several worker counts; the fastest is the
reference. Both run in the same process on the same data. The last line of output is one JSON
object: {"bench": "input_pipeline", "ours": ..., "reference": ..., "ratio": ..., "unit": "images/s", ...}.

Run: python bench/input_pipeline.py [--device cuda] [--workers 0 1 2] [--threads 1]

On a busy 2-core machine torch's default of 2 spinning OpenMP threads can slow small tensor ops
down by an order of magnitude; `--threads 1` (or OMP_WAIT_POLICY=PASSIVE) shows the pipeline's own
speed. The JSON line records the thread count used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.textbook import textbook_loader  # noqa: E402
from workbench.data import TrainBatches, load_dataset  # noqa: E402
from workbench.spec import DataSpec  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
log = logging.getLogger("bench.input_pipeline")


def load_cifar10():
    archive = SHARED_DATA / "cifar-10-python.tar.gz"
    with tempfile.TemporaryDirectory() as home:
        if archive.is_file():
            return load_dataset(DataSpec(name="cifar10", path=str(archive)), home=Path(home)), "cifar10"
        log.warning("%s not found: measuring on 50,000 synthetic 32x32 images instead", archive)
        return load_dataset(DataSpec(name="synthetic", synthetic_train=50000, synthetic_test=10)), "synthetic"


def measure_ours(data, batch_size: int, device: str, epochs: int) -> float:
    batches = TrainBatches(
        data.train_images,
        data.train_labels,
        batch_size,
        augment="cifar",
        mean=data.info.mean,
        std=data.info.std,
        device=device,
        seed=0,
    )
    warm_up = iter(batches)
    for _ in range(5):
        next(warm_up)
    batches.set_epoch(1)
    synchronize = torch.cuda.synchronize if batches.device.type == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for _, labels in batches:
            seen += labels.shape[0]
    synchronize()
    return seen / (time.perf_counter() - started)


def measure_reference(data, batch_size: int, workers: int, batches: int) -> float:
    loader = textbook_loader(data, batch_size, workers)
    iterator = iter(loader)
    for _ in range(5):  # warm-up, includes worker start-up
        next(iterator)
    started = time.perf_counter()
    seen = 0
    for _ in range(batches):
        _, labels = next(iterator)
        seen += labels.shape[0]
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to try")
    parser.add_argument("--reference-batches", type=int, default=100, help="batches timed per worker count")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of our pipeline to time")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    data, data_name = load_cifar10()
    log.info(
        "data: %s, %d training images; device %s; torch threads %d",
        data_name,
        len(data.train_labels),
        args.device,
        torch.get_num_threads(),
    )
    ours = measure_ours(data, args.batch_size, args.device, args.epochs)
    log.info("ours (TrainBatches on %s): %.0f images/s", args.device, ours)
    reference_by_workers = {}
    for workers in args.workers:
        reference_by_workers[workers] = measure_reference(data, args.batch_size, workers, args.reference_batches)
        log.info(
            "reference (torchvision + DataLoader, num_workers=%d): %.0f images/s",
            workers,
            reference_by_workers[workers],
        )
    best_workers = max(reference_by_workers, key=reference_by_workers.get)
    reference = reference_by_workers[best_workers]
    print(
        json.dumps(
            {
                "bench": "input_pipeline",
                "ours": round(ours, 1),
                "reference": round(reference, 1),
                "ratio": round(ours / reference, 2),
                "unit": "images/s",
                "reference_workers": best_workers,
                "reference_by_workers": {str(k): round(v, 1) for k, v in reference_by_workers.items()},
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "data": data_name,
            }
        )
    )


if __name__ == "__main__":
    main()
