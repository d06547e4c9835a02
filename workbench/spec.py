"""Validated specs: a network, a dataset, a training recipe, and a run that ties them together.

Specs are plain data (JSON/YAML round-trip); models, datasets and training loops are built
only from them, and every stored run keeps its full spec so it can be rebuilt exactly.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator

from workbench.errors import SpecError

Family = Literal["cifar", "imagenet"]
UnitKind = Literal["basic", "bottleneck"]
Placement = Literal["post", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact"]
Shortcut = Literal["A", "B", "C", "none"]

PLACEMENTS: dict[str, str] = {
    "post": "original: conv-BN-ReLU-conv-BN, add, ReLU (He 2015)",
    "bn_after_add": "BN after addition (He 2016, Fig. 4b)",
    "relu_before_add": "ReLU before addition (He 2016, Fig. 4c)",
    "relu_only_preact": "ReLU-only pre-activation (He 2016, Fig. 4d)",
    "full_preact": "full pre-activation: BN-ReLU-conv, add (He 2016, Fig. 4e)",
}
SHORTCUTS: dict[str, str] = {
    "A": "identity; zero-padding + stride-2 subsampling where the shape changes (no parameters)",
    "B": "identity; 1x1 projection where the shape changes",
    "C": "1x1 projection on every unit",
    "none": "no shortcut (the plain twin)",
}
IMAGENET_DEPTHS: dict[int, tuple[UnitKind, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
DEFAULT_WIDTHS: dict[str, list[int]] = {"cifar": [16, 32, 64], "imagenet": [64, 128, 256, 512]}
CONVS_PER_UNIT: dict[str, int] = {"basic": 2, "bottleneck": 3}

# Bounds on every number a user types; docs/limits.md says why each one is where it is.
MAX_UNITS = 1000  # residual units in all stages; ResNet-1202, the deepest net in the papers, has 600
MAX_STAGES = 6
MAX_WIDTH = 4096  # base width of a stage; the widest preset stage is 512 (x4 in bottlenecks)
MAX_IN_CHANNELS = 64
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_IMAGE_SIZE = 1024  # pixels: input size of a net and resolution of an image folder
MAX_SEED = 2**63 - 1  # seeds are stored as signed 64-bit integers
MAX_EPOCHS = 10_000  # the paper's CIFAR recipe is about 182 epochs
MAX_ITERATIONS = 10_000_000  # the paper's CIFAR recipe is 64,000, its ImageNet recipe 600,000
MAX_BATCH_SIZE = 65_536
MAX_SYNTHETIC_IMAGES = 200_000  # about 600 MB of 32x32 images held in the worker's memory
MAX_DEVICES = 256  # data-parallel processes of one run, all on one machine (checked against it before queueing)


def _check_range(what: str, value: float | None, low: float, high: float, why: str = "") -> None:
    """ValueError naming the field, the allowed range and (when given) why the bound is there."""
    if value is not None and not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{what} must be between {low:,} and {high:,}{reason}; got {value:,}")


def _nearest_depths(depth: int, step: int, base: int = 2) -> str:
    below = max(step + base, depth - (depth - base) % step)
    above = below + step if below <= depth else below
    return f"{below} and {above}" if below != above else str(below)


class NetSpec(BaseModel):
    """The single description of a network. Either `depth` or `blocks` fixes the units per stage."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["resnet"] = Field(default="resnet", description="network family; stored runs without it are resnets")
    name: str = "custom"
    family: Family = "cifar"
    unit: UnitKind = "basic"
    depth: int | None = Field(default=None, description="weighted layers; resolves `blocks` when given")
    blocks: list[int] | None = Field(default=None, description="residual units per stage")
    widths: list[int] | None = Field(default=None, description="base width of each stage")
    bottleneck_stride: Literal["3x3", "1x1"] = "3x3"
    placement: Placement = "post"
    shortcut: Shortcut = "A"
    zero_init_residual: bool = False
    stochastic_depth: float = Field(default=0.0, description="drop probability of the last unit; linear decay")
    num_classes: int = 10
    input_size: int | None = None
    in_channels: int = 3

    @model_validator(mode="after")
    def _resolve(self) -> NetSpec:
        if self.widths is None:
            self.widths = list(DEFAULT_WIDTHS[self.family])
        if self.input_size is None:
            self.input_size = 32 if self.family == "cifar" else 224
        if not 1 <= len(self.widths) <= MAX_STAGES:
            raise ValueError(f"a net has 1 to {MAX_STAGES} stages (one width each); got {len(self.widths)}")
        if any(not 1 <= w <= MAX_WIDTH for w in self.widths):
            raise ValueError(f"widths must be between 1 and {MAX_WIDTH:,} channels per stage (the widest preset "
                             f"stage has 512); got {self.widths}")
        if self.blocks is None:
            if self.depth is None:
                raise ValueError(
                    "give either depth (for example 20, 56, 110) or blocks per stage (for example [3, 3, 3])"
                )
            self.blocks = self._blocks_from_depth(self.depth)
        if len(self.blocks) != len(self.widths):
            raise ValueError(
                f"blocks has {len(self.blocks)} stages but widths has {len(self.widths)}; give one width per stage"
            )
        if any(b < 1 for b in self.blocks):
            raise ValueError(f"every stage needs at least one unit; got blocks {self.blocks}")
        if sum(self.blocks) > MAX_UNITS:
            asked = f"depth {self.depth:,} needs" if self.depth is not None else "these blocks give"
            raise ValueError(f"at most {MAX_UNITS:,} residual units in all stages (ResNet-1202, the deepest net in "
                             f"the papers, has 600); {asked} {sum(self.blocks):,} (blocks {self.blocks})")
        derived = 2 + CONVS_PER_UNIT[self.unit] * sum(self.blocks)
        if self.depth is not None and self.depth != derived:
            raise ValueError(
                f"depth {self.depth} does not match blocks {self.blocks}, which give {derived} layers; "
                "give only one of them"
            )
        self.depth = derived
        self._check_combinations()
        return self

    def _blocks_from_depth(self, depth: int) -> list[int]:
        stages = len(self.widths)
        if self.family == "imagenet" and self.widths == DEFAULT_WIDTHS["imagenet"]:
            if depth not in IMAGENET_DEPTHS:
                valid = ", ".join(str(d) for d in IMAGENET_DEPTHS)
                raise ValueError(f"ImageNet-style nets come in depths {valid}; {depth} is not one (or give blocks)")
            unit, blocks = IMAGENET_DEPTHS[depth]
            if unit != self.unit:
                raise ValueError(f"ImageNet depth {depth} uses {unit} units, not {self.unit}; set unit: {unit}")
            return list(blocks)
        per_unit = CONVS_PER_UNIT[self.unit]
        step = per_unit * stages
        if depth < step + 2 or (depth - 2) % step:
            raise ValueError(
                f"{self.family.upper() if self.family == 'cifar' else 'Custom'}-style {self.unit} nets with "
                f"{stages} stages have {step}n+2 layers; {depth} is not one; the nearest are "
                f"{_nearest_depths(depth, step)}"
            )
        return [(depth - 2) // step] * stages

    def _check_combinations(self) -> None:
        _check_range("num_classes", self.num_classes, 1, MAX_CLASSES, "ImageNet-21k has 21,841")
        _check_range("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ValueError(f"stochastic_depth is a drop probability in [0, 1); got {self.stochastic_depth}")
        if self.shortcut == "none" and self.stochastic_depth > 0:
            raise ValueError("stochastic depth drops residual branches and needs shortcuts; plain nets cannot use it")
        if self.shortcut == "none" and self.zero_init_residual:
            raise ValueError("zero-init of the last BN would cut the signal in a plain net; turn it off")
        if self.zero_init_residual and self.placement == "bn_after_add":
            raise ValueError("placement bn_after_add has no BN on the residual branch to zero-initialise")
        if self.shortcut == "A":
            inplanes = self.widths[0]
            expansion = 4 if self.unit == "bottleneck" else 1
            for stage, width in enumerate(self.widths, start=1):
                if width * expansion < inplanes:
                    raise ValueError(
                        f"option A pads channels with zeros and cannot shrink them (stage {stage}: "
                        f"{inplanes} -> {width * expansion}); use shortcut B or C"
                    )
                inplanes = width * expansion
        min_size = self.total_stride
        if self.input_size < min_size:
            raise ValueError(
                f"input_size {self.input_size} is below this net's total stride {min_size}; use at least {min_size}"
            )
        _check_range("input_size", self.input_size, min_size, MAX_IMAGE_SIZE, "pixels; ImageNet nets use 224")

    @property
    def expansion(self) -> int:
        return 4 if self.unit == "bottleneck" else 1

    @property
    def total_stride(self) -> int:
        stem = 4 if self.family == "imagenet" else 1
        return stem * 2 ** (len(self.widths) - 1)

    @property
    def units(self) -> int:
        return sum(self.blocks)

    @property
    def residual(self) -> bool:
        """Whether the net adds shortcuts around its units (False for the plain twin)."""
        return self.shortcut != "none"

    @property
    def stage_count(self) -> int:
        return len(self.blocks)

    def outline(self) -> str:
        return f"{self.family}, {self.unit} units, blocks {self.blocks}"

    def description(self) -> str:
        return (f"A {self.depth}-layer {self.family}-style network ({self.unit} units, shortcut {self.shortcut}, "
                f"placement {self.placement})")


# ---------------------------------------------------------------- the other families
#
# Each family is one spec class with a `kind` tag; NetSpec (kind "resnet") is the default, so
# stored runs from before the tag existed still validate as resnets.

DENSENET_IMAGENET: dict[int, tuple[int, list[int]]] = {
    121: (32, [6, 12, 24, 16]),
    161: (48, [6, 12, 36, 24]),
    169: (32, [6, 12, 32, 32]),
    201: (32, [6, 12, 48, 32]),
}


def _layout_error(exc: ValidationError) -> ValueError:
    err = exc.errors()[0]
    return ValueError(str(err["msg"]).removeprefix("Value error, "))


class _FamilySpec(BaseModel):
    """Fields every network family shares, and the checks that go with them."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    name: str = "custom"
    num_classes: int = 10
    input_size: int | None = None
    in_channels: int = 3

    def _check_common(self, family: str = "cifar") -> None:
        if self.input_size is None:
            self.input_size = 32 if family == "cifar" else 224
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1; got {self.num_classes}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1; got {self.in_channels}")
        min_size = self.total_stride
        if self.input_size < min_size:
            raise ValueError(
                f"input_size {self.input_size} is below this net's total stride {min_size}; use at least {min_size}"
            )

    @property
    def total_stride(self) -> int:
        raise NotImplementedError

    @property
    def residual(self) -> bool:
        """Whether the net adds shortcuts around its units."""
        return True

    @property
    def stage_count(self) -> int:
        """Stages of the built network (the unit of per-stage gradient norms and of partial fine-tuning)."""
        blocks = self.blocks
        return blocks if isinstance(blocks, int) else len(blocks)

    @property
    def units(self) -> int:
        """Units of the built network in forward order (dense layers, residual units, fractal or RiR blocks)."""
        blocks = self.blocks
        return blocks if isinstance(blocks, int) else sum(blocks)


def _positive_list(name: str, values: list[int]) -> None:
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive numbers; got {values}")


class DenseNetSpec(_FamilySpec):
    """DenseNet (Huang et al. 2017). `bottleneck: true` makes it a DenseNet-BC (compression defaults to 0.5)."""

    kind: Literal["densenet"] = "densenet"
    family: Family = "cifar"
    depth: int | None = Field(default=None, description="weighted layers; resolves `blocks` when given")
    blocks: list[int] | None = Field(default=None, description="dense layers per dense block")
    growth_rate: int | None = Field(default=None, description="k: channels each dense layer adds (CIFAR 12)")
    bottleneck: bool | None = Field(default=None, description="1x1 conv of bn_size*k channels before each 3x3 (B)")
    compression: float | None = Field(default=None, description="theta of the transitions (C: 0.5); 1 keeps all")
    bn_size: int = Field(default=4, description="bottleneck width in multiples of k")
    init_features: int | None = Field(default=None, description="channels of the first conv (16, or 2k for BC)")
    drop_rate: float = Field(default=0.0, description="dropout after each dense layer's last conv")

    @model_validator(mode="after")
    def _resolve(self) -> DenseNetSpec:
        imagenet = self.family == "imagenet"
        if self.bottleneck is None:
            self.bottleneck = imagenet
        if self.compression is None:
            self.compression = 0.5 if self.bottleneck else 1.0
        if self.blocks is None:
            if self.depth is None:
                raise ValueError(
                    "give either depth (for example 40, 100, 250) or dense layers per block (for example [12, 12, 12])"
                )
            self.blocks = self._blocks_from_depth(self.depth)
        elif self.growth_rate is None and imagenet and self.depth in DENSENET_IMAGENET:
            self.growth_rate = DENSENET_IMAGENET[self.depth][0]
        if self.growth_rate is None:
            self.growth_rate = 32 if imagenet else 12
        _positive_list("blocks", self.blocks)
        derived = self.convs_per_layer * sum(self.blocks) + len(self.blocks) + 1
        if self.depth is not None and self.depth != derived:
            raise ValueError(
                f"depth {self.depth} does not match blocks {self.blocks}, which give {derived} layers; "
                "give only one of them"
            )
        self.depth = derived
        if self.init_features is None:
            self.init_features = 2 * self.growth_rate if (self.bottleneck or imagenet) else 16
        if self.growth_rate < 1 or self.bn_size < 1 or self.init_features < 1:
            raise ValueError("growth_rate, bn_size and init_features must be at least 1")
        if not 0.0 < self.compression <= 1.0:
            raise ValueError(f"compression is the share of channels a transition keeps, in (0, 1]; got "
                             f"{self.compression}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate is a dropout probability in [0, 1); got {self.drop_rate}")
        self._check_common(self.family)
        return self

    def _blocks_from_depth(self, depth: int) -> list[int]:
        if self.family == "imagenet":
            if depth not in DENSENET_IMAGENET:
                valid = ", ".join(str(d) for d in DENSENET_IMAGENET)
                raise ValueError(
                    f"ImageNet-style DenseNets come in depths {valid}; {depth} is not one (or give blocks)"
                )
            growth, blocks = DENSENET_IMAGENET[depth]
            if not self.bottleneck:
                raise ValueError(f"ImageNet DenseNet-{depth} is a DenseNet-BC; set bottleneck: true")
            if self.growth_rate is None:
                self.growth_rate = growth
            return list(blocks)
        step = 3 * self.convs_per_layer
        if depth < step + 4 or (depth - 4) % step:
            raise ValueError(
                f"CIFAR-style {self.variant} nets with 3 dense blocks have {step}n+4 layers; {depth} is not one; "
                f"the nearest are {_nearest_depths(depth, step, base=4)}"
            )
        return [(depth - 4) // step] * 3

    @property
    def convs_per_layer(self) -> int:
        return 2 if self.bottleneck else 1

    @property
    def variant(self) -> str:
        compressed = self.compression is not None and self.compression < 1
        suffix = ("B" if self.bottleneck else "") + ("C" if compressed else "")
        return "DenseNet" + (f"-{suffix}" if suffix else "")

    @property
    def total_stride(self) -> int:
        stem = 4 if self.family == "imagenet" else 1
        return stem * 2 ** (len(self.blocks) - 1)

    @property
    def residual(self) -> bool:
        return False

    def outline(self) -> str:
        return f"{self.family}, {self.variant}, k={self.growth_rate}, dense blocks {self.blocks}"

    def description(self) -> str:
        return (f"A {self.depth}-layer {self.family}-style {self.variant} (growth rate {self.growth_rate}, dense "
                f"layers per block {self.blocks}, compression {self.compression:g})")


class WideResNetSpec(_FamilySpec):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016); ImageNet members follow torchvision's wide_resnet.

    `depth` follows the paper's naming (CIFAR 6n+4, counting the three 1x1 projections); the
    summary's weighted depth counts the longest path instead (6n+2, stem and fc included).
    """

    kind: Literal["wide_resnet"] = "wide_resnet"
    family: Family = "cifar"
    depth: int | None = Field(default=None, description="weighted layers (CIFAR: 6n+4); resolves `blocks`")
    blocks: list[int] | None = Field(default=None, description="units per group")
    widen_factor: int | None = Field(default=None, description="k: widths 16k/32k/64k (CIFAR 10, ImageNet 2)")
    dropout: float = Field(default=0.0, description="dropout between the two convs of a unit (paper: 0.3)")

    @model_validator(mode="after")
    def _resolve(self) -> WideResNetSpec:
        imagenet = self.family == "imagenet"
        if self.widen_factor is None:
            self.widen_factor = 2 if imagenet else 10
        if self.widen_factor < 1:
            raise ValueError(f"widen_factor must be at least 1; got {self.widen_factor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout is a probability in [0, 1); got {self.dropout}")
        if self.blocks is None:
            if self.depth is None:
                raise ValueError(
                    "give either depth (for example 16, 28, 40) or units per group (for example [4, 4, 4])"
                )
            self.blocks = self._blocks_from_depth(self.depth)
        _positive_list("blocks", self.blocks)
        derived = (3 * sum(self.blocks) + 2) if imagenet else (2 * sum(self.blocks) + len(self.blocks) + 1)
        if self.depth is not None and self.depth != derived:
            raise ValueError(
                f"depth {self.depth} does not match blocks {self.blocks}, which give {derived} layers; "
                "give only one of them"
            )
        self.depth = derived
        self._check_common(self.family)
        return self

    def _blocks_from_depth(self, depth: int) -> list[int]:
        if self.family == "imagenet":
            bottleneck_depths = [d for d, (unit, _) in IMAGENET_DEPTHS.items() if unit == "bottleneck"]
            if depth not in bottleneck_depths:
                valid = ", ".join(str(d) for d in bottleneck_depths)
                raise ValueError(f"ImageNet-style wide ResNets come in depths {valid}; {depth} is not one")
            return list(IMAGENET_DEPTHS[depth][1])
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(
                f"CIFAR-style wide ResNets with 3 groups have 6n+4 layers; {depth} is not one; the nearest are "
                f"{_nearest_depths(depth, 6, base=4)}"
            )
        return [(depth - 4) // 6] * 3

    @property
    def total_stride(self) -> int:
        stem = 4 if self.family == "imagenet" else 1
        return stem * 2 ** (len(self.blocks) - 1)

    def resnet_layout(self) -> NetSpec:
        """The residual layout this net shares with NetSpec's builder (stem, units, shortcuts)."""
        k = self.widen_factor
        if self.family == "imagenet":
            data = {"family": "imagenet", "unit": "bottleneck", "blocks": self.blocks,
                    "widths": [64 * 2**i for i in range(len(self.blocks))], "shortcut": "B"}
        else:
            data = {"family": "cifar", "unit": "basic", "blocks": self.blocks,
                    "widths": [16 * k * 2**i for i in range(len(self.blocks))], "placement": "full_preact",
                    "shortcut": "B"}
        try:
            return NetSpec(name=self.name, num_classes=self.num_classes, input_size=self.input_size,
                           in_channels=self.in_channels, **data)
        except ValidationError as exc:
            raise _layout_error(exc) from None

    def outline(self) -> str:
        return f"{self.family}, WRN-{self.depth}-{self.widen_factor}, blocks {self.blocks}"

    def description(self) -> str:
        unit = "bottleneck units with a doubled inner width" if self.family == "imagenet" else \
            "pre-activation basic units"
        drop = f", dropout {self.dropout:g}" if self.dropout else ""
        return f"A {self.family}-style wide ResNet WRN-{self.depth}-{self.widen_factor} ({unit}{drop})"


class ResNeXtSpec(_FamilySpec):
    """ResNeXt (Xie et al. 2017): bottleneck units whose 3x3 conv has `cardinality` groups of `bottleneck_width`."""

    kind: Literal["resnext"] = "resnext"
    family: Family = "cifar"
    depth: int | None = Field(default=None, description="weighted layers (CIFAR: 9n+2); resolves `blocks`")
    blocks: list[int] | None = Field(default=None, description="units per stage")
    cardinality: int | None = Field(default=None, description="C: groups of the 3x3 conv (CIFAR 8, ImageNet 32)")
    bottleneck_width: int | None = Field(default=None, description="d: channels per group at the first stage")
    widths: list[int] | None = Field(default=None, description="base width (planes) of each stage; outputs are x4")
    zero_init_residual: bool = False

    @model_validator(mode="after")
    def _resolve(self) -> ResNeXtSpec:
        imagenet = self.family == "imagenet"
        if self.cardinality is None:
            self.cardinality = 32 if imagenet else 8
        if self.bottleneck_width is None:
            self.bottleneck_width = 4 if imagenet else 64
        if self.cardinality < 1 or self.bottleneck_width < 1:
            raise ValueError("cardinality and bottleneck_width must be at least 1")
        if self.widths is None:
            self.widths = [64, 128, 256, 512] if imagenet else [64, 128, 256]
        _positive_list("widths", self.widths)
        if int(min(self.widths) * self.bottleneck_width / 64) < 1:
            least = math.ceil(64 / min(self.widths))
            raise ValueError(
                f"bottleneck_width {self.bottleneck_width} leaves no channels per group at width {min(self.widths)} "
                f"(each group gets width * d / 64); use a bottleneck_width of at least {least}"
            )
        if self.blocks is None:
            if self.depth is None:
                raise ValueError("give either depth (for example 29 or 50) or units per stage (for example [3, 3, 3])")
            self.blocks = self._blocks_from_depth(self.depth)
        _positive_list("blocks", self.blocks)
        derived = 3 * sum(self.blocks) + 2
        if self.depth is not None and self.depth != derived:
            raise ValueError(
                f"depth {self.depth} does not match blocks {self.blocks}, which give {derived} layers; "
                "give only one of them"
            )
        self.depth = derived
        self._check_common(self.family)
        self.resnet_layout()
        return self

    def _blocks_from_depth(self, depth: int) -> list[int]:
        stages = len(self.widths)
        if self.family == "imagenet" and stages == 4:
            bottleneck_depths = [d for d, (unit, _) in IMAGENET_DEPTHS.items() if unit == "bottleneck"]
            if depth not in bottleneck_depths:
                valid = ", ".join(str(d) for d in bottleneck_depths)
                raise ValueError(f"ImageNet-style ResNeXts come in depths {valid}; {depth} is not one (or give blocks)")
            return list(IMAGENET_DEPTHS[depth][1])
        step = 3 * stages
        if depth < step + 2 or (depth - 2) % step:
            raise ValueError(
                f"ResNeXts with {stages} stages have {step}n+2 layers; {depth} is not one; the nearest are "
                f"{_nearest_depths(depth, step)}"
            )
        return [(depth - 2) // step] * stages

    @property
    def total_stride(self) -> int:
        stem = 4 if self.family == "imagenet" else 1
        return stem * 2 ** (len(self.widths) - 1)

    def resnet_layout(self) -> NetSpec:
        try:
            return NetSpec(name=self.name, family=self.family, unit="bottleneck", blocks=self.blocks,
                           widths=self.widths, shortcut="B", zero_init_residual=self.zero_init_residual,
                           num_classes=self.num_classes, input_size=self.input_size, in_channels=self.in_channels)
        except ValidationError as exc:
            raise _layout_error(exc) from None

    def outline(self) -> str:
        return f"{self.family}, ResNeXt {self.cardinality}x{self.bottleneck_width}d, blocks {self.blocks}"

    def description(self) -> str:
        return (f"A {self.depth}-layer {self.family}-style ResNeXt ({self.cardinality}x{self.bottleneck_width}d: "
                f"bottleneck units with a grouped 3x3 conv)")


class FractalNetSpec(_FamilySpec):
    """FractalNet (Larsson et al. 2016): B fractal blocks of C columns, each followed by a 2x2 max-pool.

    Columns are numbered 1 (one conv, the shallowest) to C (2^(C-1) convs, the deepest).
    """

    kind: Literal["fractalnet"] = "fractalnet"
    family: Literal["cifar"] = "cifar"
    depth: int | None = Field(default=None, description="convs on the deepest column: blocks * 2^(columns-1)")
    blocks: int = Field(default=5, description="B: fractal blocks, each followed by a 2x2 max-pool")
    columns: int | None = Field(default=None, description="C: columns of each block (3 gives 20 layers for B=5)")
    widths: list[int] | None = Field(default=None, description="channels of each block (CIFAR: 64-128-256-512-512)")
    dropout: list[float] | None = Field(default=None, description="dropout of each block (paper: 0, .1, .2, .3, .4)")
    drop_path: bool = Field(default=False, description="local and global drop-path on alternating mini-batches")
    local_drop_prob: float = Field(default=0.15, description="local drop-path: each join drops each input")
    eval_column: int | None = Field(default=None, description="evaluate with this single column (None: all joined)")

    @model_validator(mode="after")
    def _resolve(self) -> FractalNetSpec:
        if self.blocks < 1:
            raise ValueError(f"blocks must be at least 1; got {self.blocks}")
        rows_per_column = [self.blocks * 2 ** (c - 1) for c in range(1, 9)]
        if self.columns is None:
            if self.depth is None:
                raise ValueError(f"give either depth (for {self.blocks} blocks: "
                                 f"{', '.join(map(str, rows_per_column[:5]))}) or columns (for example 3)")
            if self.depth not in rows_per_column:
                below = max([d for d in rows_per_column if d <= self.depth], default=rows_per_column[0])
                above = min([d for d in rows_per_column if d > self.depth], default=rows_per_column[-1])
                raise ValueError(
                    f"FractalNets with {self.blocks} blocks have {self.blocks}*2^(C-1) layers; {self.depth} is not "
                    f"one; the nearest are {below} and {above}"
                )
            self.columns = int(math.log2(self.depth // self.blocks)) + 1
        if not 1 <= self.columns <= 8:
            raise ValueError(f"columns must be between 1 and 8; got {self.columns}")
        derived = self.blocks * 2 ** (self.columns - 1)
        if self.depth is not None and self.depth != derived:
            raise ValueError(f"depth {self.depth} does not match {self.blocks} blocks of {self.columns} columns, "
                             f"which give {derived} layers; give only one of them")
        self.depth = derived
        if self.widths is None:
            self.widths = [min(64 * 2**i, 512) for i in range(self.blocks)]
        if self.dropout is None:
            self.dropout = [0.0] * self.blocks
        _positive_list("widths", self.widths)
        for name, values in (("widths", self.widths), ("dropout", self.dropout)):
            if len(values) != self.blocks:
                raise ValueError(f"{name} has {len(values)} entries for {self.blocks} blocks; give one per block")
        if any(not 0.0 <= p < 1.0 for p in self.dropout):
            raise ValueError(f"dropout rates are probabilities in [0, 1); got {self.dropout}")
        if not 0.0 <= self.local_drop_prob < 1.0:
            raise ValueError(f"local_drop_prob is a probability in [0, 1); got {self.local_drop_prob}")
        if self.eval_column is not None and not 1 <= self.eval_column <= self.columns:
            raise ValueError(f"eval_column must be a column between 1 and {self.columns}; got {self.eval_column}")
        self._check_common()
        return self

    @property
    def total_stride(self) -> int:
        return 2**self.blocks

    @property
    def residual(self) -> bool:
        return False

    def outline(self) -> str:
        return f"{self.family}, FractalNet B={self.blocks} C={self.columns}, widths {self.widths}"

    def description(self) -> str:
        drop = ", drop-path" if self.drop_path else ""
        return (f"A {self.depth}-layer FractalNet ({self.blocks} blocks of {self.columns} columns, joins by "
                f"element-wise mean{drop})")


class RiRSpec(_FamilySpec):
    """ResNet in ResNet (Targ et al. 2016): residual blocks of generalized residual blocks with two streams.

    `widths` are the total channels of a stage, split equally between the residual stream (with
    shortcuts) and the transient stream (without).
    """

    kind: Literal["rir"] = "rir"
    family: Literal["cifar"] = "cifar"
    depth: int | None = Field(default=None, description="weighted layers: 2 + layers_per_block * RiR blocks")
    blocks: list[int] | None = Field(default=None, description="RiR blocks per stage")
    widths: list[int] = Field(default=[96, 192, 384], description="channels of each stage (both streams together)")
    layers_per_block: int = Field(default=2, description="generalized residual blocks inside each RiR block")

    @model_validator(mode="after")
    def _resolve(self) -> RiRSpec:
        _positive_list("widths", self.widths)
        if any(w % 2 for w in self.widths):
            raise ValueError(f"widths are split equally between the two streams and must be even; got {self.widths}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be at least 1; got {self.layers_per_block}")
        step = self.layers_per_block
        stages = len(self.widths)
        if self.blocks is None:
            if self.depth is None:
                raise ValueError("give either depth (for example 18) or RiR blocks per stage (for example [2, 3, 3])")
            if self.depth < step * stages + 2 or (self.depth - 2) % step:
                raise ValueError(
                    f"RiR nets with {step} generalized residual blocks per RiR block have {step}n+2 layers; "
                    f"{self.depth} is not one; the nearest are {_nearest_depths(self.depth, step)}"
                )
            units = (self.depth - 2) // step
            self.blocks = [units // stages + (1 if i >= stages - units % stages else 0) for i in range(stages)]
        _positive_list("blocks", self.blocks)
        if len(self.blocks) != len(self.widths):
            raise ValueError(
                f"blocks has {len(self.blocks)} stages but widths has {len(self.widths)}; give one width per stage"
            )
        derived = 2 + step * sum(self.blocks)
        if self.depth is not None and self.depth != derived:
            raise ValueError(
                f"depth {self.depth} does not match blocks {self.blocks}, which give {derived} layers; "
                "give only one of them"
            )
        self.depth = derived
        self._check_common()
        return self

    @property
    def total_stride(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def outline(self) -> str:
        return f"{self.family}, RiR blocks {self.blocks}, widths {self.widths}"

    def description(self) -> str:
        return (f"A {self.depth}-layer ResNet in ResNet ({sum(self.blocks)} RiR blocks of {self.layers_per_block} "
                f"generalized residual blocks, widths {self.widths})")


SPEC_CLASSES: dict[str, type[BaseModel]] = {
    "resnet": NetSpec,
    "densenet": DenseNetSpec,
    "wide_resnet": WideResNetSpec,
    "resnext": ResNeXtSpec,
    "fractalnet": FractalNetSpec,
    "rir": RiRSpec,
}
KINDS: dict[str, str] = {
    "resnet": "ResNet and its plain twin (He et al. 2015, 2016)",
    "densenet": "DenseNet (Huang et al. 2017)",
    "wide_resnet": "Wide ResNet (Zagoruyko & Komodakis 2016)",
    "resnext": "ResNeXt (Xie et al. 2017)",
    "fractalnet": "FractalNet (Larsson et al. 2016)",
    "rir": "ResNet in ResNet (Targ et al. 2016)",
}


def net_kind(value: Any) -> str:
    """The family tag of a network spec or its data; data without one is a resnet (runs stored before families)."""
    if isinstance(value, dict):
        return value.get("kind", "resnet")
    return getattr(value, "kind", "resnet")


NetworkSpec = Annotated[
    Annotated[NetSpec, Tag("resnet")]
    | Annotated[DenseNetSpec, Tag("densenet")]
    | Annotated[WideResNetSpec, Tag("wide_resnet")]
    | Annotated[ResNeXtSpec, Tag("resnext")]
    | Annotated[FractalNetSpec, Tag("fractalnet")]
    | Annotated[RiRSpec, Tag("rir")],
    Discriminator(
        net_kind,
        custom_error_type="network_kind",
        custom_error_message=f"kind must be one of {', '.join(SPEC_CLASSES)}",
    ),
]
NETWORK_SPEC_TYPES = tuple(SPEC_CLASSES.values())
_NETWORK_ADAPTER: TypeAdapter = TypeAdapter(NetworkSpec)


class DataSpec(BaseModel):
    """Which dataset to train on and how to prepare it."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["synthetic", "cifar10", "cifar100", "folder"] = "synthetic"
    path: str | None = Field(default=None, description="archive or folder; None means the default location")
    download: bool = False
    classes: int | list[str] | None = Field(default=None, description="folder: first k classes or a list of names")
    per_class_cap: int | None = None
    resolution: int | None = Field(default=None, description="folder: training resolution (for example 64)")
    split_fraction: float = Field(default=0.2, description="folder without train/val: share held out for test")
    validation_size: int = Field(default=0, description="images held out of train as a validation split")
    synthetic_train: int = 10000
    synthetic_test: int = 2000
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.path is not None and "\0" in self.path:
            raise ValueError("path contains a NUL byte, which no file name can hold; type the path again")
        _check_range("per_class_cap", self.per_class_cap, 1, MAX_ITERATIONS)
        _check_range("resolution", self.resolution, 8, MAX_IMAGE_SIZE, "pixels")
        if not 0.0 < self.split_fraction < 1.0:
            raise ValueError(f"split_fraction must be between 0 and 1; got {self.split_fraction}")
        _check_range("validation_size", self.validation_size, 0, MAX_ITERATIONS)
        count = len(self.classes) if isinstance(self.classes, list) else self.classes
        _check_range("classes", count, 1, MAX_CLASSES)
        for field in ("synthetic_train", "synthetic_test"):
            _check_range(field, getattr(self, field), 1, MAX_SYNTHETIC_IMAGES,
                         "images are generated and held in the worker's memory")
        if self.name == "synthetic" and self.validation_size >= self.synthetic_train:
            raise ValueError(f"validation_size {self.validation_size:,} leaves no training images: the synthetic "
                             f"training set has {self.synthetic_train:,}; use fewer")
        _check_range("seed", self.seed, 0, MAX_SEED, "a signed 64-bit integer")
        return self


def parse_spec(model: type[BaseModel], data: dict) -> BaseModel:
    """Validate `data` as `model`, turning pydantic's report into one readable SpecError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        raise SpecError(f"invalid {model.__name__}: " + "; ".join(problems)) from None


def parse_net(data: Any) -> BaseModel:
    """A network spec of any family from its data (a missing `kind` means resnet), as one readable SpecError."""
    if isinstance(data, NETWORK_SPEC_TYPES):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"a network spec is a mapping of fields; got {type(data).__name__}")
    kind = net_kind(data)
    if kind not in SPEC_CLASSES:
        raise SpecError(f"unknown network kind {kind!r}; choose one of {', '.join(SPEC_CLASSES)}")
    return parse_spec(SPEC_CLASSES[kind], data)


def parse_net_json(text: str) -> BaseModel:
    """A network spec of any family from its JSON (the Build tab's spec box)."""
    return parse_net(json.loads(text))


class TrainSpec(BaseModel):
    """The training recipe; the defaults are the paper's CIFAR recipe (He et al. 2015, Sec. 4.2)."""

    model_config = ConfigDict(extra="forbid")

    epochs: float | None = Field(default=None, description="budget in epochs (or give iterations)")
    iterations: int | None = Field(default=None, description="budget in iterations (the paper: 64000)")
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[float] = Field(default=[0.5, 0.75], description="step schedule: fractions of the budget")
    gamma: float = 0.1
    warmup_iterations: int = Field(default=0, description="linear warm-up from 0 over this many iterations")
    resnet110_warmup: bool = Field(default=False, description="lr 0.01 until training error < 80%, then lr")
    eval_every: int | None = Field(default=None, description="extra evaluation every N iterations")
    log_every: int = Field(default=20, description="training metrics averaged over N iterations")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = Field(default=False, description="torch.compile the model (slow start, faster steps)")
    devices: int = Field(default=1, description="data-parallel processes for this run: GPUs (NCCL), else CPU "
                                                 "processes (gloo); each takes batch/N of every batch")
    sync_batchnorm: bool = Field(default=False, description="with several devices: batch statistics over the "
                                                              "whole batch instead of each device's share")
    seed: int = 0
    grad_norm_every: int = Field(default=0, description="record per-unit input gradient norms every N iterations")

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if self.epochs is None and self.iterations is None:
            self.epochs = 1
        if self.epochs is not None and self.iterations is not None:
            raise ValueError("give the budget either in epochs or in iterations, not both")
        if self.epochs is not None and not 0 < self.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be above 0 and at most {MAX_EPOCHS:,} (the paper's CIFAR recipe is "
                             f"about 182); got {self.epochs:g}")
        _check_range("iterations", self.iterations, 1, MAX_ITERATIONS, "the paper's CIFAR recipe is 64,000")
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if not 0 < self.lr <= 10:
            raise ValueError(f"lr must be in (0, 10]; got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        _check_range("weight_decay", self.weight_decay, 0, 1, "the paper uses 0.0001")
        if any(not 0 < m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones are increasing fractions of the budget in (0, 1); got {self.milestones}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1]; got {self.gamma}")
        for field in ("warmup_iterations", "grad_norm_every"):
            _check_range(field, getattr(self, field), 0, MAX_ITERATIONS)
        _check_range("log_every", self.log_every, 1, MAX_ITERATIONS)
        _check_range("eval_every", self.eval_every, 1, MAX_ITERATIONS)
        _check_range("seed", self.seed, 0, MAX_SEED, "a signed 64-bit integer")
        _check_range("devices", self.devices, 1, MAX_DEVICES, "processes on one machine")
        if self.batch_size % self.devices:
            raise ValueError(f"batch_size {self.batch_size} does not split over {self.devices} devices (each takes "
                             f"an equal share of every batch); use a multiple of {self.devices}")
        if self.devices > 1 and self.device == "mps":
            raise ValueError("devices: Apple MPS is one device; train on several with cuda or cpu")
        return self

    def total_iterations(self, batches_per_epoch: int) -> int:
        """The budget in iterations for a loader with this many batches per epoch."""
        if self.iterations is not None:
            return self.iterations
        return max(1, round(self.epochs * batches_per_epoch))


class RunSpec(BaseModel):
    """Everything needed to rebuild a run exactly: network, data and training recipe."""

    model_config = ConfigDict(extra="forbid")

    net: NetworkSpec
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    init_from: str | None = Field(default=None, description="checkpoint, bundle or state_dict file to start from")
    finetune: Literal["all", "last_stages", "head"] | None = Field(
        default=None, description="with init_from: train everything, the last stage(s) and head, or a new head only"
    )
    finetune_stages: int = Field(default=1, description="last_stages: how many final stages train")
    head_hidden: int | None = Field(default=None, description="head mode: width of one extra hidden layer")

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        if self.finetune is not None and self.init_from is None:
            raise ValueError(f"fine-tuning mode {self.finetune!r} needs init_from: the model to start from")
        if self.head_hidden is not None and (self.finetune != "head" or self.head_hidden < 1):
            raise ValueError("head_hidden is a positive width and only applies to fine-tuning mode 'head'")
        _check_range("head_hidden", self.head_hidden, 1, MAX_WIDTH, "a width, like a stage's")
        _check_range("finetune_stages", self.finetune_stages, 1, MAX_STAGES)
        if self.init_from is not None and "\0" in self.init_from:
            raise ValueError("init_from contains a NUL byte, which no file name can hold")
        return self
