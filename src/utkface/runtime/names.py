"""Labels from UTKFace file names: `age_gender_race_datetime.jpg.chip.jpg`.

The original download has a few malformed names (no race field, a stray space, a missing dot,
odd datetime lengths). A name is kept when its age and gender are sound; race may be unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from utkface.runtime.errors import UtkfaceError

MAX_AGE = 116
NUM_AGES = MAX_AGE + 1
GENDERS = ("male", "female")  # index = label
RACES = ("White", "Black", "Asian", "Indian", "Others")  # index = label
UNKNOWN_RACE = -1
UNKNOWN_AGE = -1  # `age` of an interval label (an age bin): only age_min..age_max is known
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Leading fields: age, gender and (optionally) race, then whatever the datetime part is.
_NAME = re.compile(r"^\s*(?P<age>\d+)_(?P<gender>\d+)(?:_(?P<race>\d+))?(?:_(?P<rest>.*))?$")


class LabelError(UtkfaceError, ValueError):
    """A file name that carries no usable label; the message says why."""


@dataclass(frozen=True)
class Label:
    """One face's labels. An exact age has `age_min == age_max == age` (filled in from `age`);
    an interval label (an age bin, both ends inclusive) has `age == UNKNOWN_AGE`."""

    age: int
    gender: int
    race: int  # UNKNOWN_RACE when the name has no race field
    age_min: int = UNKNOWN_AGE
    age_max: int = UNKNOWN_AGE
    extra: tuple[tuple[str, str], ...] = ()  # other columns of a labels CSV, for reporting

    def __post_init__(self):
        fill_exact_interval(self)


def fill_exact_interval(label) -> None:
    """Give an exact label (frozen dataclass with `age`, `age_min`, `age_max`) its interval."""
    if label.age != UNKNOWN_AGE and label.age_min == UNKNOWN_AGE:
        object.__setattr__(label, "age_min", label.age)
        object.__setattr__(label, "age_max", label.age)


def parse_name(name: str) -> Label:
    """Parse a UTKFace file name (base name, any directory is ignored).

    Raises `LabelError` with a reason when age or gender cannot be read or are out of range.
    A race field that is missing or out of range is recorded as unknown, not an error.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _NAME.match(base)
    if match is None:
        raise LabelError("name does not start with age_gender_")
    age, gender = int(match["age"]), int(match["gender"])
    if not 0 <= age <= MAX_AGE:
        raise LabelError(f"age {age} outside 0..{MAX_AGE}")
    if gender not in (0, 1):
        raise LabelError(f"gender {gender} is not 0 (male) or 1 (female)")
    # A missing race field ("39_1_2017....jpg") leaves the datetime in `rest`, not in `race`.
    race = int(match["race"]) if match["race"] is not None else UNKNOWN_RACE
    if not 0 <= race < len(RACES):
        race = UNKNOWN_RACE
    return Label(age=age, gender=gender, race=race)


# Age bands used by the dataset summary and every per-group breakdown: (label, low, high).
AGE_BANDS = (
    ("0-2", 0, 2),
    ("3-9", 3, 9),
    ("10-19", 10, 19),
    ("20-29", 20, 29),
    ("30-39", 30, 39),
    ("40-49", 40, 49),
    ("50-59", 50, 59),
    ("60-69", 60, 69),
    ("70+", 70, MAX_AGE),
)


# The coarser bands of the fairness tables (race x band cells stay large enough to rank on val).
FAIRNESS_BANDS = (
    ("0-19", 0, 19),
    ("20-39", 20, 39),
    ("40-59", 40, 59),
    ("60+", 60, MAX_AGE),
)


def band_index(ages, bands=FAIRNESS_BANDS) -> np.ndarray:
    """Each age's position in `bands` (`AGE_BANDS` or `FAIRNESS_BANDS`), as ints."""
    lows = np.array([low for _, low, _ in bands])
    return np.searchsorted(lows, np.asarray(ages), side="right") - 1


def band_ages(age_min, age_max) -> np.ndarray:
    """The age that places a label in a band: the age itself for an exact label, the middle
    (rounded down) of an interval's ends (FairFace's bins each lie inside one `AGE_BANDS` band)."""
    return (np.asarray(age_min, dtype=np.int64) + np.asarray(age_max, dtype=np.int64)) // 2


def age_band(age: int) -> str:
    """The label of the band an age falls into, e.g. `age_band(25) == "20-29"`."""
    for label, low, high in AGE_BANDS:
        if low <= age <= high:
            return label
    raise ValueError(f"age {age} outside 0..{MAX_AGE}")
