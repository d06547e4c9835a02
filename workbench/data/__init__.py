"""Datasets (CIFAR-10/100, image folders, an embedded synthetic set) and device-side batches."""

from workbench.data.base import Dataset, DatasetInfo, SkippedFiles
from workbench.data.dataset import DatasetShape, check_source, load_dataset
from workbench.data.loader import TrainBatches, eval_batches

__all__ = ["Dataset", "DatasetInfo", "DatasetShape", "SkippedFiles", "TrainBatches", "check_source", "eval_batches",
           "load_dataset"]
