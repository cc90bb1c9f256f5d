"""Which imaging modality a request is about: the model embeds it (one code for all prompts of a case).

`detect_modality` decides, in order: an explicit choice (validated; aliases accepted) → keywords in the prompts →
the image's intensities → the default "mri". It never raises for prompts or images it cannot read.

The keyword table follows the official one (spec §4.6: per prompt, the first of microscopy, PET, ultrasound,
MRI, CT whose keywords occur; the case takes the most frequent modality over its prompts), with these deviations
to remove its traps:

* keywords match whole words only ("US" in "USB" or "THUS", "EM" in "SYSTEM", "CT" in "ACT" no longer fire);
* acronyms that are also English words or names stay case-sensitive (US, EM, PET, MR); unambiguous ones match in
  any case (ct, mri, flair), as do the spelled-out words;
* "pelvic" is dropped (it made "pelvic bones in CT" an MRI case);
* added: ultrasonography, sonography/sonographic, positron emission, T1-/T2-weighted;
* ties between modalities go to the one of the earlier prompt.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

from .config import MODALITIES
from .errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MODALITY = "mri"
CT_AIR_HU = -500.0
CT_AIR_FRACTION = 0.001
"""An image counts as CT when at least this share of its voxels is at or below CT_AIR_HU (air, or the
−1024/−2048/−3024 padding of CT scanners); no other modality stores values that negative."""

# Priority order of the official detector; (case-sensitive words, case-insensitive words) per modality.
_KEYWORDS = {
    "microscopy": (("EM",), ("microscopy", "microscope", "microscopic", "microscopical", "ultrastructure",
                             "ultrastructural", "light sheet", "light-sheet")),
    "pet": (("PET",), ("positron emission",)),
    "us": (("US",), ("ultrasound", "ultrasonic", "ultrasonography", "sonography", "sonographic",
                     "echocardiography", "echocardiographic")),
    "mri": (("MR", "DWI", "ADC"), ("mri", "magnetic resonance", "diffusion", "flair", "t1-weighted",
                                   "t2-weighted", "t1 weighted", "t2 weighted")),
    "ct": ((), ("ct", "computed tomography", "tomographic", "cross-sectional")),
}


def _whole_words(words: Iterable[str], flags: int = 0) -> re.Pattern | None:
    words = list(words)
    if not words:
        return None
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", flags)


_PATTERNS = {name: (_whole_words(exact), _whole_words(loose, re.IGNORECASE))
             for name, (exact, loose) in _KEYWORDS.items()}

_ALIASES = {
    "ct": "ct", "computed tomography": "ct", "cect": "ct",
    "mri": "mri", "mr": "mri", "magnetic resonance": "mri", "mrt": "mri",
    "us": "us", "ultrasound": "us", "sonography": "us", "echo": "us", "echocardiography": "us",
    "pet": "pet", "positron emission tomography": "pet", "pet/ct": "pet", "pet ct": "pet",
    "microscopy": "microscopy", "em": "microscopy", "electron microscopy": "microscopy",
    "light sheet": "microscopy", "light microscopy": "microscopy",
}


def canonical_modality(name: str) -> str:
    """The canonical modality name (one of MODALITIES) for a name or alias such as "MR", "CT", "ultrasound"."""
    key = " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())
    if key in _ALIASES:
        return _ALIASES[key]
    raise InputError(f"unknown modality {name!r}; valid names: {', '.join(MODALITIES)} "
                     f"(aliases such as MR, CT, ultrasound, EM are accepted)")


def modality_code(name: str) -> int:
    """The model's modality code: the index of the canonical name in MODALITIES."""
    return MODALITIES.index(canonical_modality(name))


def modality_of_prompt(prompt: str) -> str | None:
    """The modality a prompt names by keyword, or None when it names none."""
    for name, patterns in _PATTERNS.items():
        if any(pattern is not None and pattern.search(prompt) for pattern in patterns):
            return name
    return None


def looks_like_ct(image: np.ndarray) -> bool:
    """True when the raw intensities look like Hounsfield units (see CT_AIR_FRACTION)."""
    image = np.asarray(image)
    if image.size == 0 or not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.unsignedinteger):
        return False
    return np.count_nonzero(image <= CT_AIR_HU) >= CT_AIR_FRACTION * image.size


def detect_modality(prompts: Iterable[str], image: np.ndarray | None = None, explicit: str | None = None) -> str:
    """The case's modality: `explicit` if given, else prompt keywords, else the image, else "mri".

    `prompts` are the text prompts of one case; `image` the raw voxels (any shape) before normalisation.
    Only an invalid `explicit` name raises (InputError listing the valid names).
    """
    if explicit is not None and str(explicit).strip():
        return canonical_modality(explicit)
    found = [modality_of_prompt(p) for p in prompts if isinstance(p, str)]
    counts = Counter(name for name in found if name is not None)
    if counts:
        modality = counts.most_common(1)[0][0]  # ties: the first counted, i.e. the earlier prompt
        log.info("modality %s from prompt keywords", modality)
        return modality
    if image is not None and looks_like_ct(image):
        log.info("modality ct from Hounsfield-like intensities")
        return "ct"
    log.info("no modality in the prompts or the image; using %s", DEFAULT_MODALITY)
    return DEFAULT_MODALITY
