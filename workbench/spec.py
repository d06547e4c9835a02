"""Validated specs: a network, a dataset, a training recipe, and a run that ties them together.

Specs are plain data (JSON/YAML round-trip); models, datasets and training loops are built
only from them, and every stored run keeps its full spec so it can be rebuilt exactly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


def _check_range(what: str, value: float | None, low: float, high: float, why: str = "") -> None:
    """ValueError naming the field, the allowed range and (when given) why the bound is there."""
    if value is not None and not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{what} must be between {low:,} and {high:,}{reason}; got {value:,}")


def _nearest_depths(depth: int, step: int) -> str:
    below = max(step + 2, depth - (depth - 2) % step)
    above = below + step if below <= depth else below
    return f"{below} and {above}" if below != above else str(below)


class NetSpec(BaseModel):
    """The single description of a network. Either `depth` or `blocks` fixes the units per stage."""

    model_config = ConfigDict(extra="forbid")

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
        return self

    def total_iterations(self, batches_per_epoch: int) -> int:
        """The budget in iterations for a loader with this many batches per epoch."""
        if self.iterations is not None:
            return self.iterations
        return max(1, round(self.epochs * batches_per_epoch))


class RunSpec(BaseModel):
    """Everything needed to rebuild a run exactly: network, data and training recipe."""

    model_config = ConfigDict(extra="forbid")

    net: NetSpec
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
