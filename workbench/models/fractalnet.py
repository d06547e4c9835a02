"""FractalNet (Larsson, Maire & Shakhnarovich 2016, "FractalNet: Ultra-Deep Neural Networks without Residuals").

The fractal expansion rule builds a block of C columns:

    f_1(z) = conv(z)                         conv = conv3x3-BN-ReLU (dropout after the conv)
    f_{C+1}(z) = join(f_C(f_C(z)), conv(z))  join = element-wise mean

Consecutive joins are collapsed into one, as in the paper's figure and the authors' code, so a
block is C columns side by side: column c (1 = shallowest ... C = deepest) is a chain of
2^(c-1) convs, each spanning 2^(C-c) of the block's 2^(C-1) rows, and at every row the columns
whose conv ends there are joined and all continue from the mean. The network is B blocks, each
followed by 2x2 max-pooling, then `fc` (CIFAR: widths 64-128-256-512-512, 32 -> 1 pixels).

Drop-path regularizes the joins during training, on alternating mini-batches:

- local: each join drops each of its inputs with probability p (0.15), keeping at least one;
- global: one column, drawn for the whole mini-batch, is the only path through every block.

At test time all columns are joined, or a single column (`eval_column`, or `forward_features(x,
column=c)`), which the paper shows works almost as well as the whole net.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.network import Network, init_weights
from workbench.spec import FractalNetSpec


class FractalConv(nn.Sequential):
    """The fractal's base layer: conv3x3 (no bias), dropout, BN, ReLU (the order of the authors' Caffe layers)."""

    def __init__(self, in_planes: int, planes: int, dropout: float) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("conv", nn.Conv2d(in_planes, planes, kernel_size=3, stride=1, padding=1, bias=False))
        ]
        if dropout > 0:
            layers.append(("dropout", nn.Dropout(dropout)))
        layers += [("bn", nn.BatchNorm2d(planes)), ("relu", nn.ReLU(inplace=True))]
        super().__init__(OrderedDict(layers))


def local_drop_mask(inputs: int, drop_prob: float) -> list[bool]:
    """Which of a join's inputs survive local drop-path: each is dropped with `drop_prob`, at least one is kept."""
    keep = (torch.rand(inputs) >= drop_prob).tolist()
    if not any(keep):
        keep[int(torch.randint(inputs, ()))] = True
    return keep


def join(inputs: Sequence[torch.Tensor], keep: Sequence[bool] | None = None) -> torch.Tensor:
    """Element-wise mean of the inputs (only those marked in `keep`)."""
    kept = list(inputs) if keep is None else [x for x, k in zip(inputs, keep, strict=True) if k]
    if len(kept) == 1:
        return kept[0]
    return torch.stack(kept).mean(0)


class FractalBlock(nn.Module):
    """One fractal block of `columns` columns from `in_planes` to `planes` channels (spatial size kept)."""

    def __init__(self, in_planes: int, planes: int, columns: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.columns = columns
        self.rows = 2 ** (columns - 1)
        for column in range(1, columns + 1):
            convs = [FractalConv(in_planes if index == 0 else planes, planes, dropout)
                     for index in range(2 ** (column - 1))]
            self.add_module(f"column{column}", nn.Sequential(*convs))

    def column(self, column: int) -> nn.Sequential:
        return getattr(self, f"column{column}")

    def span(self, column: int) -> int:
        """Rows each conv of `column` spans."""
        return 2 ** (self.columns - column)

    def forward(self, x: torch.Tensor, column: int | None = None, local_drop_prob: float = 0.0) -> torch.Tensor:
        """All columns joined row by row (with local drop-path when `local_drop_prob` > 0), or one `column` alone."""
        if column is not None:
            return self.column(column)(x)
        current = [x] * self.columns
        out = x
        for row in range(1, self.rows + 1):
            ending = [c for c in range(1, self.columns + 1) if row % self.span(c) == 0]
            outputs = [self.column(c)[row // self.span(c) - 1](current[c - 1]) for c in ending]
            keep = local_drop_mask(len(outputs), local_drop_prob) if local_drop_prob > 0 and len(outputs) > 1 else None
            out = join(outputs, keep)
            for c in ending:
                current[c - 1] = out
        return out

    def path_counts(self) -> dict[int, int]:
        """{convs on a path: number of paths} through the block's fractal (before joins are collapsed)."""
        counts = {1: 1}
        for _ in range(self.columns - 1):
            doubled: dict[int, int] = {}
            for a, m in counts.items():
                for b, n in counts.items():
                    doubled[a + b] = doubled.get(a + b, 0) + m * n
            doubled[1] = doubled.get(1, 0) + 1
            counts = doubled
        return counts


class FractalNet(Network):
    """A CIFAR FractalNet built from a FractalNetSpec: B fractal blocks, each followed by 2x2 max-pooling."""

    def __init__(self, spec: FractalNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.eval_column = spec.eval_column
        in_planes = spec.in_channels
        for index, (width, dropout) in enumerate(zip(spec.widths, spec.dropout, strict=True), start=1):
            self.add_module(f"block{index}", FractalBlock(in_planes, width, spec.columns, dropout))
            in_planes = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc = nn.Linear(in_planes, spec.num_classes)
        # Mini-batches seen with drop-path, kept in the state_dict so a resumed run alternates on.
        self.register_buffer("drop_path_step", torch.zeros((), dtype=torch.long))
        self._drop_path_batches = 0
        init_weights(self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        stored = state_dict.get(prefix + "drop_path_step")
        if stored is not None:
            self._drop_path_batches = int(stored)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"block{i}", getattr(self, f"block{i}")) for i in range(1, self.spec.blocks + 1)]

    def stage_units(self) -> list[list[nn.Module]]:
        return [[block] for block in self.stages]

    def weighted_depth(self) -> int:
        return self.spec.blocks * 2 ** (self.spec.columns - 1) + 1

    def path_lengths(self) -> list[float]:
        """P(a path through the fractal crosses k convs), k = 0..depth, over every path of every block."""
        total = {0: 1}
        for block in self.stages:
            combined: dict[int, int] = {}
            for a, m in total.items():
                for b, n in block.path_counts().items():
                    combined[a + b] = combined.get(a + b, 0) + m * n
            total = combined
        paths = sum(total.values())
        return [total.get(k, 0) / paths for k in range(max(total) + 1)]

    def drop_path_plan(self) -> tuple[int | None, float]:
        """(global column or None, local drop probability) for the next training mini-batch.

        With drop-path on, mini-batches alternate: local drop-path first, then one global column.
        """
        if not (self.training and self.spec.drop_path):
            return None, 0.0
        step = self._drop_path_batches
        self._drop_path_batches += 1
        self.drop_path_step.fill_(self._drop_path_batches)
        if step % 2 == 1:
            return int(torch.randint(1, self.spec.columns + 1, ())), 0.0
        return None, self.spec.local_drop_prob

    def forward_features(self, x: torch.Tensor, column: int | None = None) -> torch.Tensor:
        """Pooled features through every column joined, or through `column` alone (1..C) in every block."""
        local_drop_prob = 0.0
        if column is None:
            if self.training:
                column, local_drop_prob = self.drop_path_plan()
            else:
                column = self.eval_column
        for block in self.stages:
            x = self.pool(block(x, column=column, local_drop_prob=local_drop_prob))
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
