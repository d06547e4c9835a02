"""The training engine: fit/evaluate with the paper's recipe, schedules and checkpoints."""

from workbench.training.checkpoint import load_checkpoint, save_checkpoint
from workbench.training.loop import FitResult, NullSink, TrainingDiverged, TrainingSink, evaluate, fit
from workbench.training.schedule import LearningRateSchedule

__all__ = [
    "FitResult",
    "LearningRateSchedule",
    "NullSink",
    "TrainingDiverged",
    "TrainingSink",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]
