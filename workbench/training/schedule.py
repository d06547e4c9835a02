"""Learning-rate schedules: the paper's step schedule, cosine, linear warm-up, ResNet-110 warm-up."""

from __future__ import annotations

import math

from workbench.spec import TrainSpec

RESNET110_WARMUP_LR = 0.01
RESNET110_WARMUP_UNTIL_ERROR = 80.0


class LearningRateSchedule:
    """Learning rate as a function of the iteration, plus the state the ResNet-110 warm-up needs.

    Step: divide by 1/gamma at each milestone fraction of the budget (32k and 48k of 64k).
    ResNet-110 warm-up (He et al. 2015, Sec. 4.2): 0.01 until the training error falls below 80%.
    """

    def __init__(self, train: TrainSpec, total_iterations: int) -> None:
        self.train = train
        self.total = total_iterations
        self.boundaries = [round(m * total_iterations) for m in train.milestones]
        self.resnet110_warm = train.resnet110_warmup

    def lr(self, iteration: int) -> float:
        """Learning rate for the step that starts after `iteration` completed steps."""
        train = self.train
        if train.schedule == "step":
            lr = train.lr * train.gamma ** sum(iteration >= b for b in self.boundaries)
        elif train.schedule == "cosine":
            lr = 0.5 * train.lr * (1 + math.cos(math.pi * min(iteration, self.total) / self.total))
        else:
            lr = train.lr
        if iteration < train.warmup_iterations:
            lr *= (iteration + 1) / train.warmup_iterations
        if self.resnet110_warm:
            lr = min(lr, RESNET110_WARMUP_LR)
        return lr

    def observe_train_error(self, error_percent: float) -> None:
        """End the ResNet-110 warm-up once training error is below 80%."""
        if self.resnet110_warm and error_percent < RESNET110_WARMUP_UNTIL_ERROR:
            self.resnet110_warm = False

    def state_dict(self) -> dict:
        return {"resnet110_warm": self.resnet110_warm}

    def load_state_dict(self, state: dict) -> None:
        self.resnet110_warm = bool(state["resnet110_warm"])
