"""Named networks: the paper presets in presets/*.yaml plus presets a user saved in the home folder."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from workbench.errors import PresetNotFound, SpecError
from workbench.spec import NetSpec, parse_net

BUILTIN_PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
USER_PRESETS_FILE = "presets.yaml"
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Preset:
    """A named network with where it comes from and the error the paper reports for it."""

    name: str
    spec: NetSpec  # or the spec of another family (DenseNetSpec, ...)
    source: str
    reference_error: float | None
    builtin: bool


def _lookup_key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def _read_presets(path: Path, builtin: bool) -> list[Preset]:
    try:
        entries = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"preset file {path} is not valid YAML: {exc}") from None
    if not isinstance(entries, dict):
        raise SpecError(f"preset file {path} must map preset names to entries")
    presets = []
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "spec" not in entry:
            raise SpecError(f"preset {name!r} in {path} needs a 'spec' mapping")
        try:
            spec = parse_net({**entry["spec"], "name": name})
        except SpecError as exc:
            raise SpecError(f"preset {name!r} in {path}: {exc}") from None
        presets.append(Preset(name, spec, entry.get("source", ""), entry.get("reference_error"), builtin))
    return presets


def _user_presets_path(home: Path | None) -> Path | None:
    if home is None:
        env_home = os.environ.get("WORKBENCH_HOME")
        if not env_home:
            return None
        home = Path(env_home)
    return Path(home) / USER_PRESETS_FILE


def list_presets(home: Path | None = None) -> list[Preset]:
    """Every preset: the built-in ones, then the user's (from <home>/presets.yaml)."""
    presets = []
    for path in sorted(BUILTIN_PRESETS_DIR.glob("*.yaml")):
        presets.extend(_read_presets(path, builtin=True))
    user_file = _user_presets_path(home)
    if user_file is not None and user_file.exists():
        presets.extend(_read_presets(user_file, builtin=False))
    return presets


def get_preset(name: str, home: Path | None = None) -> Preset:
    """Look up a preset by name, ignoring case, dashes and underscores ("plain-56" finds "plain56")."""
    presets = list_presets(home)
    by_key = {_lookup_key(p.name): p for p in presets}
    found = by_key.get(_lookup_key(name))
    if found is None:
        names = [p.name for p in presets]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PresetNotFound(f"unknown preset {name!r}.{hint} Valid presets: {', '.join(names)}")
    return found


def load_preset(name: str, home: Path | None = None) -> NetSpec:
    """The network spec (of any family) of a named preset."""
    return get_preset(name, home).spec


def save_preset(name: str, spec: NetSpec, home: Path, source: str = "saved by the user") -> Preset:
    """Save `spec` under `name` in <home>/presets.yaml; built-in names cannot be overwritten."""
    if not _VALID_NAME.match(name):
        raise SpecError(
            f"preset name {name!r} must start with a letter or digit and use only letters, digits, '.', '-', '_' "
            "(at most 64 characters)"
        )
    builtin_keys = {_lookup_key(p.name) for p in list_presets(None)}
    if _lookup_key(name) in builtin_keys:
        raise SpecError(f"{name!r} is a built-in preset; choose another name")
    path = Path(home) / USER_PRESETS_FILE
    entries = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    entries = {k: v for k, v in entries.items() if _lookup_key(k) != _lookup_key(name)}
    spec_data = spec.model_dump(exclude={"name", "depth"}, exclude_defaults=False)
    entries[name] = {"spec": spec_data, "source": source, "reference_error": None}
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(entries, sort_keys=False))
    tmp.replace(path)
    return get_preset(name, home)
