"""What a prediction gives back: `Prediction` per input, `FaceResult` per face, in words.

`fill_face` copies one row of a backend's outputs (the keys of `model_io.OUTPUT_NAMES`) into a
`FaceResult`; `predict.py`, `video_faces.py` and the Ray pipeline all fill faces through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from utkface.runtime.names import GENDERS, RACES


@dataclass
class FaceResult:
    box: tuple[float, float, float, float]  # left, top, right, bottom in the EXIF-rotated image
    age: float | None = None  # expected age in years
    age_low: float | None = None  # 10th percentile of the age distribution
    age_high: float | None = None  # 90th percentile
    gender: str | None = None  # "male" or "female"
    gender_prob: float | None = None  # P(female); confidence in `gender` is max(p, 1 - p)
    race: str | None = None  # most probable of names.RACES (models with a race head)
    race_prob: float | None = None  # probability of `race`
    score: float | None = None  # detector score (> 0 is a face); None for an aligned input

    def text(self) -> str:
        """`34 (25-45) female 91% White`, as the command line and annotated images show it."""
        return estimate_text(
            self.age, self.age_low, self.age_high, self.gender, self.gender_prob, self.race
        )


def estimate_text(
    age: float | None,
    age_low: float | None,
    age_high: float | None,
    gender: str | None,
    gender_prob: float | None,
    race: str | None = None,
) -> str:
    """An estimate in words, `34 (25-45) female 91% White`, leaving out what is None."""
    parts = []
    if age is not None:
        parts.append(f"{age:.0f}")
        if age_low is not None:
            parts.append(f"({age_low:.0f}-{age_high:.0f})")
    if gender_prob is not None:
        parts.append(f"{gender} {max(gender_prob, 1 - gender_prob):.0%}")
    if race is not None:
        parts.append(race)
    return " ".join(parts)


@dataclass
class Prediction:
    source: str  # the path, or "<input N>" for an in-memory image
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None  # why the input could not be used; None when it was
    mode: str | None = None  # "aligned" (the input was the crop) or "detect"
    width: int | None = None
    height: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def fill_face(face: FaceResult, values: dict[str, np.ndarray]) -> None:
    """Copy one row of backend outputs (keys of `model_io.OUTPUT_NAMES`) into `face`."""
    if "age" in values:
        face.age = float(values["age"])
    if "age_low" in values:
        face.age_low, face.age_high = float(values["age_low"]), float(values["age_high"])
    if "gender_prob" in values:
        face.gender_prob = float(values["gender_prob"])
        face.gender = GENDERS[int(face.gender_prob >= 0.5)]
    if "race_prob" in values:
        probs = values["race_prob"]  # (5,)
        face.race, face.race_prob = RACES[int(probs.argmax())], float(probs.max())
