"""The UTKFace name parser against real names, the archive's malformed ones, and bad ones."""

from __future__ import annotations

import pytest

from utkface.runtime.names import AGE_BANDS, MAX_AGE, UNKNOWN_RACE, LabelError, age_band, parse_name

# (name, age, gender, race): well-formed names copied from the shared archive.
REAL_NAMES = [
    ("1_0_0_20161219140530307.jpg.chip.jpg", 1, 0, 0),
    ("25_1_2_20170104020610884.jpg.chip.jpg", 25, 1, 2),
    ("10_0_4_20161221192738446.jpg.chip.jpg", 10, 0, 4),
    ("100_1_0_20170110183726390.jpg.chip.jpg", 100, 1, 0),
    ("116_1_3_20170120134744096.jpg.chip.jpg", 116, 1, 3),
    ("UTKFace/26_0_1_20170116010114628.jpg.chip.jpg", 26, 0, 1),  # folder is ignored
    ("UTKFace\\45_1_3_20170119171533785.jpg.chip.jpg", 45, 1, 3),  # Windows separator too
    ("20_1_0_20170110.jpg", 20, 1, 0),  # the un-cropped "In-the-wild" naming
]

# The eight malformed names in the shared archive: age and gender are sound, so all are kept.
MALFORMED_KEPT = [
    ("14_0_0_2017011022340900.jpg.chip.jpg", 14, 0, 0),  # 16-digit datetime
    ("24_0_1_20170116220224657 .jpg.chip.jpg", 24, 0, 1),  # stray space
    ("28_1_2_201701161846515488.jpg.chip.jpg", 28, 1, 2),  # 18-digit datetime
    ("38_0_1_201701162330572788.jpg.chip.jpg", 38, 0, 1),  # 18-digit datetime
    ("39_1_20170116174525125.jpg.chip.jpg", 39, 1, UNKNOWN_RACE),  # no race field
    ("55_0_0_20170116232725357jpg.chip.jpg", 55, 0, 0),  # missing dot
    ("61_1_20170109142408075.jpg.chip.jpg", 61, 1, UNKNOWN_RACE),  # no race field
    ("61_1_20170109150557335.jpg.chip.jpg", 61, 1, UNKNOWN_RACE),  # no race field
]

# Names kept with race unknown: the race field is there but not one of the five.
UNKNOWN_RACE_NAMES = [
    ("30_0_5_20170116174525125.jpg.chip.jpg", 30, 0, UNKNOWN_RACE),
    ("30_1_99_20170116174525125.jpg.chip.jpg", 30, 1, UNKNOWN_RACE),
]

# (name, words the reason must contain)
BAD_NAMES = [
    ("", "age_gender"),
    ("README.txt", "age_gender"),
    ("._25_1_2_20170104020610884.jpg.chip.jpg", "age_gender"),  # macOS resource fork
    ("face_1_0_2017.jpg", "age_gender"),
    ("25.jpg", "age_gender"),
    ("-1_0_0_20170104020610884.jpg.chip.jpg", "age_gender"),
    ("25_x_0_20170104020610884.jpg.chip.jpg", "age_gender"),
    ("117_0_0_20170104020610884.jpg.chip.jpg", "age 117 outside 0..116"),
    ("999_1_0_20170104020610884.jpg.chip.jpg", "age 999"),
    ("25_2_0_20170104020610884.jpg.chip.jpg", "gender 2"),
    ("25_3_20170104020610884.jpg.chip.jpg", "gender 3"),
]


@pytest.mark.parametrize(
    "name, age, gender, race", REAL_NAMES + MALFORMED_KEPT + UNKNOWN_RACE_NAMES
)
def test_parse_name_reads_the_labels(name, age, gender, race):
    label = parse_name(name)
    assert (label.age, label.gender, label.race) == (age, gender, race)


@pytest.mark.parametrize("name, reason", BAD_NAMES)
def test_parse_name_rejects_bad_names_with_a_reason(name, reason):
    with pytest.raises(LabelError, match=reason):
        parse_name(name)


def test_age_range_ends_are_inclusive():
    assert parse_name("0_0_0_2017.jpg").age == 0
    assert parse_name(f"{MAX_AGE}_0_0_2017.jpg").age == MAX_AGE


def test_age_bands_cover_every_age_once():
    for age in range(MAX_AGE + 1):
        assert sum(low <= age <= high for _, low, high in AGE_BANDS) == 1, age
    assert [age_band(a) for a in (0, 2, 3, 9, 10, 29, 69, 70, MAX_AGE)] == [
        "0-2", "0-2", "3-9", "3-9", "10-19", "20-29", "60-69", "70+", "70+",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        age_band(MAX_AGE + 1)
