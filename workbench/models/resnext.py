"""ResNeXt (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks").

Bottleneck units whose 3x3 convolution is grouped: cardinality C groups of d channels at the
first stage (doubling per stage), post-activation, 1x1 projection shortcuts where the shape
changes, the stride on the grouped 3x3.

- CIFAR ResNeXt-29 (C x d): a 3x3 stem of 64 channels with BN-ReLU, three stages of three
  units with output widths 256, 512, 1024 (inner widths C*d, 2C*d, 4C*d), global pooling, `fc`.
- ImageNet members are torchvision's `resnext50_32x4d` and friends (groups / width_per_group),
  with torchvision's state_dict keys.
"""

from __future__ import annotations

from workbench.models.resnet import ResNet
from workbench.spec import ResNeXtSpec


class ResNeXt(ResNet):
    """A ResNeXt built from a ResNeXtSpec on the shared residual builder."""

    def __init__(self, spec: ResNeXtSpec) -> None:
        super().__init__(spec, layout=spec.resnet_layout(),
                         unit_options={"groups": spec.cardinality, "base_width": spec.bottleneck_width})
