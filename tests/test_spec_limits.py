"""Field bounds of the specs: each refused with the field, the range and, where it helps, the reason."""

import pytest

from workbench.errors import SpecError
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec, parse_spec

TINY = {"blocks": [1, 1, 1], "widths": [4, 8, 16]}


@pytest.mark.parametrize(("model", "data", "expected"), [
    (NetSpec, {**TINY, "widths": [4] * 7, "blocks": [1] * 7}, "a net has 1 to 6 stages"),
    (NetSpec, {**TINY, "in_channels": 65}, "in_channels must be between 1 and 64"),
    (NetSpec, {"depth": 2006}, "has 600); depth 2,006 needs 1,002"),
    (TrainSpec, {"epochs": float("inf")}, "epochs must be above 0 and at most 10,000"),
    (TrainSpec, {"weight_decay": float("nan")}, "weight_decay must be between 0 and 1"),
    (TrainSpec, {"seed": -1}, "seed must be between 0 and 9,223,372,036,854,775,807 (a signed 64-bit integer)"),
    (TrainSpec, {"log_every": 0}, "log_every must be between 1 and 10,000,000"),
    (TrainSpec, {"warmup_iterations": 10**8}, "warmup_iterations must be between 0 and 10,000,000"),
    (DataSpec, {"classes": []}, "classes must be between 1 and 100,000; got 0"),
    (DataSpec, {"resolution": 4096}, "resolution must be between 8 and 1,024"),
    (DataSpec, {"synthetic_train": 10**6}, "synthetic_train must be between 1 and 200,000 (images are generated"),
    (DataSpec, {"name": "folder", "path": "pets\0"}, "path contains a NUL byte"),
    (RunSpec, {"net": TINY, "init_from": "a.pt", "finetune": "head", "head_hidden": 10**6},
     "head_hidden must be between 1 and 4,096"),
    (RunSpec, {"net": TINY, "init_from": "a.pt", "finetune": "last_stages", "finetune_stages": 7},
     "finetune_stages must be between 1 and 6"),
    (RunSpec, {"net": TINY, "init_from": "a\0.pt"}, "init_from contains a NUL byte"),
])
def test_out_of_range_fields_say_the_range(model, data, expected):
    with pytest.raises(SpecError) as raised:
        parse_spec(model, data)
    assert expected in str(raised.value)


def test_the_deepest_nets_of_the_papers_are_within_the_limits():
    assert NetSpec(depth=1202).units == 600
    assert NetSpec(unit="bottleneck", depth=1001, placement="full_preact", shortcut="B").units == 333
