"""System metrics of a worker while it trains: CPU load and memory (psutil), GPU load and memory (nvidia-ml-py).

Sampled from the sink's heartbeat thread every few seconds and stored like any metric, under the
"system" split, so Compare charts them and a run's details show the latest values.
"""

from __future__ import annotations

import logging
import os

import psutil

logger = logging.getLogger(__name__)

SYSTEM_SPLIT = "system"
SAMPLE_EVERY_S = 5.0
SYSTEM_METRICS = ("system/cpu_percent", "system/rss_mb", "system/gpu_util", "system/gpu_mem_mb")


def _gpu_handle():
    """The NVML handle of this process's first visible GPU, or None without CUDA or NVML."""
    try:
        import pynvml
        import torch

        if not torch.cuda.is_available():
            return None
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        return (pynvml.nvmlDeviceGetHandleByUUID(visible) if visible.startswith("GPU-")
                else pynvml.nvmlDeviceGetHandleByIndex(int(visible or 0)))
    except Exception as exc:  # NVML missing or unusable: CPU metrics only
        logger.info("no GPU metrics: %s", exc)
        return None


class SystemSampler:
    """Samples the machine's CPU load, this process's resident memory and, on CUDA, the GPU's load and memory."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        psutil.cpu_percent(None)  # the first call only starts the measuring interval
        self.gpu = _gpu_handle()

    def sample(self) -> dict[str, float]:
        values = {"system/cpu_percent": psutil.cpu_percent(None),
                  "system/rss_mb": self.process.memory_info().rss / 2**20}
        if self.gpu is not None:
            import pynvml

            values["system/gpu_util"] = float(pynvml.nvmlDeviceGetUtilizationRates(self.gpu).gpu)
            values["system/gpu_mem_mb"] = pynvml.nvmlDeviceGetMemoryInfo(self.gpu).used / 2**20
        return values

    def rows(self, iteration: int, epoch: float | None) -> list[dict]:
        """One metric row per sampled value, at the run's current iteration."""
        return [{"iteration": iteration, "epoch": epoch, "split": SYSTEM_SPLIT, "name": name, "value": value}
                for name, value in self.sample().items()]
