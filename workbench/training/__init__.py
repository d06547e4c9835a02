"""The training engine: fit/evaluate with the paper's recipe, schedules and checkpoints."""

from workbench.training.checkpoint import load_checkpoint, save_checkpoint
from workbench.training.loop import (
    FitResult,
    MemorySink,
    ModelFactory,
    StartingModel,
    TrainingDiverged,
    TrainingSink,
    evaluate,
    fit,
    fresh_model,
)
from workbench.training.schedule import LearningRateSchedule

__all__ = [
    "FitResult",
    "LearningRateSchedule",
    "MemorySink",
    "ModelFactory",
    "StartingModel",
    "TrainingDiverged",
    "TrainingSink",
    "evaluate",
    "fit",
    "fresh_model",
    "load_checkpoint",
    "save_checkpoint",
]
