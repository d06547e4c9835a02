"""The bundle format: a zip of `weights.safetensors`, `spec.json`, `metadata.json` and `MODEL_CARD.md`.

Written by `workbench.weights.export.export_bundle`; read here without building a model.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load

from workbench.errors import WorkbenchError
from workbench.spec import NetworkSpec, parse_net
from workbench.weights.limits import check_zip

BUNDLE_FORMAT = "workbench-bundle/1"
WEIGHTS_MEMBER = "weights.safetensors"
SPEC_MEMBER = "spec.json"
METADATA_MEMBER = "metadata.json"
CARD_MEMBER = "MODEL_CARD.md"


def is_bundle(path: Path) -> bool:
    """Whether `path` is a zip holding a bundle's weights and spec."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    return {WEIGHTS_MEMBER, SPEC_MEMBER} <= names


def read_bundle(path: Path) -> tuple[dict[str, torch.Tensor], NetworkSpec, dict]:
    """The state_dict, network spec and metadata stored in a bundle, without building a model.

    Member sizes and compression ratios are checked (see `weights.limits`) before any member is read.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"bundle {path} does not exist")
    if not is_bundle(path):
        raise WorkbenchError(f"{path} is not a workbench bundle (a zip with {WEIGHTS_MEMBER} and {SPEC_MEMBER})")
    check_zip(path, text_members=(SPEC_MEMBER, METADATA_MEMBER, CARD_MEMBER))
    try:
        with zipfile.ZipFile(path) as archive:
            weights = safetensors_load(archive.read(WEIGHTS_MEMBER))
            spec_data = json.loads(archive.read(SPEC_MEMBER))
            names = archive.namelist()
            metadata = json.loads(archive.read(METADATA_MEMBER)) if METADATA_MEMBER in names else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError, ValueError, SafetensorError) as exc:
        raise WorkbenchError(f"bundle {path} is damaged: {exc}; {WEIGHTS_MEMBER} must be a safetensors file and "
                             f"{SPEC_MEMBER} a JSON network spec") from None
    if not isinstance(spec_data, dict):
        raise WorkbenchError(f"bundle {path} is damaged: {SPEC_MEMBER} must hold a JSON object of network fields")
    spec = parse_net(spec_data)
    return weights, spec, metadata
