"""The `seed` preset: the seed project's gender CNN, then its age CNN, each trained by
`train.train` in a folder of its own (`gender_model/`, `age_model/`), as the seed saved
`gender_model.keras` and `age_model.keras`.
"""

from __future__ import annotations

import json
from pathlib import Path

from utkface.runtime.atomic import atomic_write
from utkface.training.config import TrainConfig

RUNS = {"seed_gender": "gender_model", "seed_age": "age_model"}


def train_pair(
    train,
    config: TrainConfig,
    dataset,
    out: Path,
    main: bool,
    resume: bool,
    subset: float,
    progress: bool,
    report_test: bool,
    on_step,
) -> dict:
    """Both CNNs, one after the other, each by `train` (`training.train.train`, the one training
    loop, which calls this for `seed`); `main`: this process writes the run's `config.json`.
    Returns each CNN's final metrics under its folder's name."""

    if not resume and main:
        out.mkdir(parents=True, exist_ok=True)  # the whole run's config, for --resume
        atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=2))
    results = {}
    for index, (name, folder) in enumerate(RUNS.items()):
        single = TrainConfig(**{**config.to_dict(), "model": name})
        # A run interrupted in its first CNN never started the second: start it afresh.
        started = index == 0 or (out / folder / "last.pt").is_file()
        results[folder] = train(
            single,
            dataset,
            out / folder,
            resume=resume and started,
            subset=subset,
            progress=progress,
            report_test=report_test,
            on_step=on_step,
        )
    return results
