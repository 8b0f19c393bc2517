"""`utkface predict clip.mp4`: tracked faces of videos to JSONL/CSV rows, track summaries and
annotated copies.

    utkface predict clip.mp4 --checkpoint best.pt --out faces.csv --annotate seen/ --every 2

Rows (`ROW_COLUMNS`), one per frame and face: `source`, `time` (s), `frame`, `track`, `detected`
(the detector's box, else the tracker's), the box, the detector `score`, the frame's own `age`,
`age_low`, `age_high`, `gender`, `gender_prob`, and the track's running estimate `smoothed_*`.
A video that breaks gives its rows up to the damage and then a row with `error`. `--out X.csv`
also writes `X.tracks.csv` (`TRACK_COLUMNS`, one per track: frames, first/last time, the final
smoothed estimate and the spread of the raw ages), likewise for `.jsonl`; both are written
atomically. `--annotate DIR` writes `DIR/<name>.mp4` with each face boxed and labelled with its
track's smoothed estimate.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utkface.runtime.atomic import atomic_open
from utkface.runtime.errors import OptionError
from utkface.runtime.predict import Predictor
from utkface.runtime.predict_output import FILE_SUFFIXES  # the same single-file outputs as photos
from utkface.runtime.results import Prediction, estimate_text
from utkface.runtime.video import VideoError, VideoWriter, probe, read_frames
from utkface.runtime.video_faces import DEFAULT_EVERY, FaceStream, FrameResult

ROW_COLUMNS = (
    "source", "error", "time", "frame", "track", "detected", "left", "top", "right", "bottom",
    "score", "age", "age_low", "age_high", "gender", "gender_prob", "smoothed_age",
    "smoothed_age_low", "smoothed_age_high", "smoothed_gender", "smoothed_gender_prob",
)  # fmt: skip
TRACK_COLUMNS = (
    "source", "track", "frames", "first_time", "last_time", "age", "age_low", "age_high",
    "gender", "gender_prob", "raw_age_sd",
)  # fmt: skip


@dataclass
class VideoSummary:
    videos: int = 0
    failed: int = 0  # videos that could not be read to the end
    frames: int = 0
    rows: int = 0  # faces over all frames
    tracks: int = 0

    def __str__(self) -> str:
        return (
            f"{self.videos} videos, {self.failed} failed, {self.frames} frames, "
            f"{self.rows} faces in {self.tracks} tracks"
        )


@dataclass
class _TrackLog:
    frames: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    ages: list[float] = field(default_factory=list)
    last: dict = field(default_factory=dict)


def predict_videos(
    videos: Sequence[str | os.PathLike],
    predictor: Predictor,
    *,
    out: str | os.PathLike | None = None,
    annotate: str | os.PathLike | None = None,
    every: int = DEFAULT_EVERY,
    max_frames: int | None = None,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> VideoSummary:
    """Run `video_faces.FaceStream` over each video; write rows to `out` and track summaries
        beside it, annotated videos under `annotate`; `report` gets one line per track (default:
    printed); errors go to stderr and into `out`, and the next video goes on."""
    suffix = Path(out).suffix.lower() if out else None
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise OptionError(f"--every and --max-frames must be at least 1, got {every}, {max_frames}")
    if out and suffix not in FILE_SUFFIXES:  # before any work
        raise OptionError(f"--out {out}: unknown suffix; choose one of {', '.join(FILE_SUFFIXES)}")
    report = report or (lambda line: print(line))
    summary = VideoSummary()
    with ExitStack() as stack:
        rows = tracks = None
        if out:
            tracks_path = Path(out).with_suffix(f".tracks{suffix}")
            rows = _Writer(stack.enter_context(_open(out)), ROW_COLUMNS, suffix == ".csv")
            tracks = _Writer(stack.enter_context(_open(tracks_path)), TRACK_COLUMNS, rows.csv)
        for video in videos:
            summary.videos += 1
            logs: dict[int, _TrackLog] = {}
            try:
                for result in _run(video, predictor, annotate, every, max_frames, progress):
                    summary.frames += 1
                    for row in _rows(str(video), result):
                        summary.rows += 1
                        _log(logs.setdefault(row["track"], _TrackLog()), row)
                        if rows:
                            rows.write(row)
            except (VideoError, OSError) as error:
                summary.failed += 1
                print(f"{video}: error: {error}", file=sys.stderr)
                if rows:
                    rows.write({"source": str(video), "error": str(error)})
            summary.tracks += len(logs)
            for track, log in logs.items():
                line = _track_row(str(video), track, log)
                report(_describe(line))
                if tracks:
                    tracks.write(line)
    return summary


def _run(video, predictor, annotate, every, max_frames, progress):
    """FrameResults of one video, written into an annotated copy on the way when asked."""
    info = probe(video)
    total = min(info.frames or max_frames or 0, max_frames or sys.maxsize) or None
    stream = FaceStream(predictor, every=every)
    with ExitStack() as stack:
        writer = None
        if annotate:
            target = Path(annotate) / f"{Path(video).stem}.mp4"
            writer = stack.enter_context(VideoWriter(target, info.fps))
        bar = stack.enter_context(
            tqdm(total=total, desc=Path(video).name, unit="frame", disable=not progress)
        )
        failure = None
        try:
            for frame in read_frames(video, max_frames):
                result = stream.step(frame.image, frame.time)
                if writer:
                    writer.write(_annotated(frame.image, result))
                bar.update()
                bar.set_postfix(faces=len(result.faces), tracks=stream.tracker.next_id - 1)
                yield result
        except VideoError as error:  # the annotated copy keeps the frames before the damage
            failure = error
    if failure:
        raise failure


def _rows(source: str, result: FrameResult):
    for tracked in result.faces:
        face, smooth = tracked.face, tracked.smoothed
        left, top, right, bottom = (round(v, 1) for v in face.box)
        row = {"source": source, "time": round(result.time, 4), "frame": result.frame}
        row.update(track=tracked.track, detected=tracked.detected, left=left, top=top)
        row.update(right=right, bottom=bottom, score=_round(face.score))
        for prefix, estimate in (("", face), ("smoothed_", smooth)):
            for key in ("age", "age_low", "age_high", "gender_prob"):
                row[prefix + key] = _round(getattr(estimate, key))
            row[prefix + "gender"] = estimate.gender
        yield row


def _log(log: _TrackLog, row: dict) -> None:
    if not log.frames:
        log.first_time = row["time"]
    log.frames += 1
    log.last_time, log.last = row["time"], row
    if row["age"] is not None:
        log.ages.append(row["age"])


def _track_row(source: str, track: int, log: _TrackLog) -> dict:
    row = {"source": source, "track": track, "frames": log.frames}
    row.update(first_time=log.first_time, last_time=log.last_time)
    for key in ("age", "age_low", "age_high", "gender", "gender_prob"):
        row[key] = log.last.get("smoothed_" + key)
    row["raw_age_sd"] = _round(float(np.std(log.ages))) if log.ages else None
    return row


def _describe(row: dict) -> str:
    """`clip.mp4 track 2: 3.1-7.9 s, 120 frames: 34 (25-45) female 91%`."""
    keys = ("age", "age_low", "age_high", "gender", "gender_prob")
    return (
        f"{row['source']} track {row['track']}: {row['first_time']:.1f}-{row['last_time']:.1f} s,"
        f" {row['frames']} frames: " + estimate_text(*(row[key] for key in keys))
    )


def _annotated(image: np.ndarray, result: FrameResult) -> np.ndarray:
    """The frame with each face boxed and labelled with its track's smoothed estimate."""
    from PIL import Image

    from utkface.runtime.predict_files import annotate_image

    faces = [tracked.smoothed for tracked in result.faces]
    if not faces:
        return image
    return np.asarray(annotate_image(Image.fromarray(image), Prediction("", faces=faces)))


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _open(path):
    return atomic_open(path, "w", newline="", encoding="utf-8")


class _Writer:
    """Dict rows to JSON lines or CSV (fixed columns; missing ones empty)."""

    def __init__(self, file, columns: Sequence[str], as_csv: bool):
        self.file, self.csv = file, csv.DictWriter(file, columns) if as_csv else None
        if self.csv:
            self.csv.writeheader()

    def write(self, row: dict) -> None:
        if self.csv:
            self.csv.writerow(row)
        else:
            self.file.write(json.dumps(row) + "\n")
