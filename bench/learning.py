"""Learning is real on CIFAR-10: ResNet-20, one epoch of the paper's recipe on the full training set.

    python bench/learning.py [--epochs 1] [--net resnet20]

Target: at least 40% test accuracy after one epoch (the reference figure). The last line printed
is JSON: {"bench", "ours", "reference", "ratio", "unit"}.
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

from workbench import build_model  # noqa: E402
from workbench.data import load_dataset  # noqa: E402
from workbench.spec import DataSpec, RunSpec, TrainSpec  # noqa: E402
from workbench.training import MemorySink, fit  # noqa: E402

CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
TARGET_ACCURACY = 40.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="resnet20")
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not CIFAR_ARCHIVE.exists():
        sys.exit(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}; this benchmark needs ../shared/data")
    data_spec = DataSpec(name="cifar10", path=str(CIFAR_ARCHIVE))
    with tempfile.TemporaryDirectory() as home:
        dataset = load_dataset(data_spec, home=Path(home))
        run = RunSpec(net=build_model(args.net).spec, data=data_spec,
                      train=TrainSpec(epochs=args.epochs, log_every=50))
        started = time.perf_counter()
        result = fit(run, Path(home) / "run", MemorySink(), dataset=dataset)
        elapsed = time.perf_counter() - started
    accuracy = 100.0 - result.last_error
    print(f"{args.net}, {args.epochs:g} epoch(s) on CIFAR-10 ({result.precision}): test accuracy {accuracy:.2f}% "
          f"in {elapsed:.0f} s (target {TARGET_ACCURACY:.0f}%)")
    print(json.dumps({"bench": f"learning/{args.net}_{args.epochs:g}_epoch_cifar10", "ours": round(accuracy, 2),
                      "reference": TARGET_ACCURACY, "ratio": round(accuracy / TARGET_ACCURACY, 3),
                      "unit": "% test accuracy (reference: the target)"}))


if __name__ == "__main__":
    main()
