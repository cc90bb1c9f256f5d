"""The structure vocabulary: names the engine knows, their synonyms, laterality, SNOMED CT codes and colours.

Used to recognise what a user typed ("Kidneys", "left  kidney", "liver in CT"), to suggest names for a typo, to
complete names in Slicer, and to name and colour the resulting segments. The data is `data/vocabulary.json`:
one entry per structure (bilateral organs also have a left and a right entry), SNOMED CT type codes only where
Slicer's terminology lists the concept (null otherwise), and category/laterality codes for Slicer's terminology.
Where the Slicer module's own table (MedalS/Logic/MedalSLib/results.py) lists a structure, its codes and colour
here are Slicer's General Anatomy values too, so a segment looks the same with or without the engine.
"""
from __future__ import annotations

import colorsys
import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

VOCABULARY_PATH = Path(__file__).parent / "data" / "vocabulary.json"
_TRAILING_CONTEXT = re.compile(r" (?:in|on) .*$")  # "liver in abdominal ct" → "liver"


def normalize(text: str) -> str:
    """Lower case, punctuation as spaces, runs of spaces collapsed: the form names are compared in."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", str(text).lower()).split())


def singular(text: str) -> str:
    """`text` (normalized) with its last word made singular by common English/Latin rules."""
    head, _, last = text.rpartition(" ")
    if last.endswith(("ss", "us", "is")):  # mass, thalamus, pelvis: already singular
        return text
    for plural, single in (("ies", "y"), ("ae", "a"), ("sses", "ss"), ("ches", "ch"), ("i", "us"), ("s", "")):
        if last.endswith(plural) and len(last) >= len(plural) + 2:
            last = last[: -len(plural)] + single
            break
    return f"{head} {last}" if head else last


@dataclass(frozen=True)
class Entry:
    """One structure: its display name, alternative names and codes.

    sct: (code, meaning) of the SNOMED CT concept, or None when none is recorded.
    anatomy: for lesions, the name of the structure they lie in (Slicer's anatomic region), else None.
    color: RGB 0–255 display colour, or None (then `Vocabulary.color` derives one).
    """

    name: str
    synonyms: tuple[str, ...]
    category: str
    region: str
    laterality: str | None
    modalities: tuple[str, ...]
    sct: tuple[str, str] | None
    anatomy: str | None
    color: tuple[int, int, int] | None

    @classmethod
    def from_dict(cls, values: dict) -> "Entry":
        sct = values.get("sct")
        color = values.get("color")
        return cls(name=values["name"], synonyms=tuple(values.get("synonyms", ())), category=values["category"],
                   region=values.get("region", ""), laterality=values.get("laterality"),
                   modalities=tuple(values.get("modalities", ())),
                   sct=(sct["code"], sct["meaning"]) if sct else None, anatomy=values.get("anatomy"),
                   color=tuple(int(c) for c in color) if color else None)

    @property
    def terms(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


class Vocabulary:
    """Entries indexed by every name and synonym, in normalized and singular form."""

    def __init__(self, entries: list[Entry], categories: dict, laterality: dict):
        self.entries = entries
        self.categories = categories
        self.laterality = laterality
        self._by_term: dict[str, Entry] = {}
        for entry in entries:
            for term in entry.terms:
                self._by_term.setdefault(normalize(term), entry)
        for entry in entries:  # singular forms second, so an exact name always wins
            for term in entry.terms:
                self._by_term.setdefault(singular(normalize(term)), entry)
        self._by_name = {normalize(entry.name): entry for entry in entries}

    @classmethod
    def load(cls, path: Path = VOCABULARY_PATH) -> "Vocabulary":
        data = json.loads(Path(path).read_text())
        if data.get("format") != "medals-vocabulary/1":
            raise ValueError(f"{path}: not a MedalS vocabulary (format {data.get('format')!r})")
        return cls([Entry.from_dict(e) for e in data["entries"]], data.get("categories", {}),
                   data.get("laterality", {}))

    def lookup(self, text: str) -> Entry | None:
        """The entry `text` names (case, spacing, punctuation and plural tolerant; a trailing "in CT"-style
        context is ignored), or None."""
        key = normalize(text)
        for candidate in (key, _TRAILING_CONTEXT.sub("", key)):
            for form in (candidate, singular(candidate)):
                if form in self._by_term:
                    return self._by_term[form]
        return None

    def suggest(self, text: str, n: int = 3) -> list[str]:
        """Up to `n` entry names whose names or synonyms are closest to `text` ("did you mean ...")."""
        matches = difflib.get_close_matches(normalize(text), list(self._by_term), n=4 * n, cutoff=0.6)
        names = []
        for match in matches:
            name = self._by_term[match].name
            if name not in names:
                names.append(name)
        return names[:n]

    def complete(self, prefix: str, limit: int = 10) -> list[str]:
        """Names and synonyms that start with `prefix` (or have a word that does), best first.

        Entry names come before synonyms, whole-term prefixes before word prefixes, shorter before longer.
        """
        key = normalize(prefix)
        if not key:
            return []
        ranked = []
        for entry in self.entries:
            for rank, term in enumerate(entry.terms):
                words = normalize(term)
                if words.startswith(key):
                    ranked.append((min(rank, 1), 0, len(term), term))
                elif f" {key}" in f" {words}":
                    ranked.append((min(rank, 1), 1, len(term), term))
        seen, result = set(), []
        for *_, term in sorted(ranked):
            if term not in seen:
                seen.add(term)
                result.append(term)
        return result[:limit]

    def color(self, name: str) -> tuple[int, int, int]:
        """A stable display colour for `name`: its entry's (see `entry_color`), else one derived from a hash of the
        normalized name."""
        entry = self.lookup(name)
        return self.entry_color(entry) if entry is not None else hashed_color(name)

    def entry_color(self, entry: Entry) -> tuple[int, int, int]:
        """The entry's own colour (or, for a left/right entry, its bilateral entry's), else one hashed from its name."""
        if entry.color:
            return entry.color
        if entry.laterality:
            bilateral = self._by_name.get(normalize(entry.name).removeprefix(entry.laterality + " "))
            if bilateral is not None and bilateral.color:
                return bilateral.color
        return hashed_color(entry.name)


def hashed_color(name: str) -> tuple[int, int, int]:
    """A saturated RGB colour (0–255) fixed by the MD5 of the normalized name: same name, same colour, always."""
    digest = hashlib.md5(normalize(name).encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    saturation = 0.45 + 0.3 * digest[2] / 255
    value = 0.75 + 0.2 * digest[3] / 255
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


@functools.cache
def default_vocabulary() -> Vocabulary:
    """The vocabulary shipped with the engine (loaded once)."""
    return Vocabulary.load()


def lookup(text: str) -> Entry | None:
    return default_vocabulary().lookup(text)


def suggest(text: str, n: int = 3) -> list[str]:
    return default_vocabulary().suggest(text, n)


def complete(prefix: str, limit: int = 10) -> list[str]:
    return default_vocabulary().complete(prefix, limit)


def color(name: str) -> tuple[int, int, int]:
    return default_vocabulary().color(name)


def vocabulary_marks(text: str) -> dict:
    """How a prompt's result is marked: {"in_vocabulary": whether it names a known structure, "suggestions": the
    closest known names when it does not}. The model segments free text too; the mark says it was not checked."""
    known = lookup(text) is not None
    return {"in_vocabulary": known, "suggestions": [] if known else suggest(text)}


def out_of_vocabulary_warning(text: str) -> str | None:
    """One line for a prompt the vocabulary does not know (None when it does), with "did you mean" names."""
    marks = vocabulary_marks(text)
    if marks["in_vocabulary"]:
        return None
    closest = f" (did you mean {' or '.join(repr(name) for name in marks['suggestions'])}?)" \
        if marks["suggestions"] else ""
    return (f"{text!r} is not a structure the vocabulary knows{closest}; it is segmented as free text, unchecked, "
            "and its result is marked out of vocabulary")
