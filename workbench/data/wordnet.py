"""Words for ImageNet-style class folders named by WordNet ids ("n01440764" is "tench").

A dataset folder's own `LOC_synset_mapping.txt` (ImageNet's "n01440764 tench, Tinca tinca") or `words.txt`
(Tiny ImageNet's "n01440764<TAB>tench, Tinca tinca") is read first; otherwise the shipped
`imagenet_words.tsv`. Offline, no true WordNet-id-to-words list of all 1000 ImageNet classes was available
(torchvision ships the 1000 names in index order, but not their ids), so the shipped file holds only what is
known for certain: the ten Imagenette classes, from the data set's own documentation.
"""

from __future__ import annotations

import re
from pathlib import Path

SHIPPED_WORDS = Path(__file__).with_name("imagenet_words.tsv")
MAPPING_FILES = ("LOC_synset_mapping.txt", "words.txt")
WNID = re.compile(r"^n\d{8}$")


def _read(path: Path) -> dict[str, list[str]]:
    words = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, text = line.strip().partition("\t") if "\t" in line else line.strip().partition(" ")
        if WNID.match(wnid) and text.strip():
            words[wnid] = [word.strip() for word in text.split(",") if word.strip()]
    return words


def class_words(root: Path | None = None) -> dict[str, list[str]]:
    """WordNet id -> its words (first the usual name), from a mapping file in `root` or the shipped one."""
    for name in MAPPING_FILES:
        if root is not None and (root / name).is_file():
            return _read(root / name)
    return _read(SHIPPED_WORDS)


def shown_name(class_name: str, words: dict[str, list[str]]) -> str:
    """"n01440764 (tench)" for a WordNet id with words, else the name as it is."""
    found = words.get(class_name)
    return f"{class_name} ({found[0]})" if found else class_name


def as_folder_names(requested: list[str], folder_names: list[str], words: dict[str, list[str]]) -> list[str]:
    """The class folders that `requested` names, by folder name or by any of its words (any case); a name that
    matches none is kept as it is, for the caller to refuse."""
    by_word = {word.casefold(): wnid for wnid in folder_names for word in words.get(wnid, [])}
    return [name if name in folder_names else by_word.get(name.casefold(), name) for name in requested]
