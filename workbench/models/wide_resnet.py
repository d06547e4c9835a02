"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

CIFAR WRN-d-k: a bare 3x3 stem of 16 channels, three groups of n = (d - 4) / 6 pre-activation
basic units of widths 16k, 32k, 64k (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3), a 1x1
projection where the shape changes (the first unit of the first group too, since 16 != 16k),
then BN-ReLU, global average pooling and `fc`. The projection sees the unit's BN-ReLU-activated
input, as in the authors' code.

ImageNet members are torchvision's `wide_resnet50_2` / `wide_resnet101_2`: ResNet-50/101 whose
bottleneck inner width is doubled, with torchvision's state_dict keys.
"""

from __future__ import annotations

from workbench.models.resnet import ResNet
from workbench.spec import WideResNetSpec

CIFAR_STEM_WIDTH = 16


class WideResNet(ResNet):
    """A wide ResNet built from a WideResNetSpec on the shared residual builder."""

    def __init__(self, spec: WideResNetSpec) -> None:
        if spec.family == "imagenet":
            options = {"base_width": 64 * spec.widen_factor, "dropout": spec.dropout}
            super().__init__(spec, layout=spec.resnet_layout(), unit_options=options)
        else:
            super().__init__(spec, layout=spec.resnet_layout(), stem_width=CIFAR_STEM_WIDTH,
                             unit_options={"dropout": spec.dropout})
