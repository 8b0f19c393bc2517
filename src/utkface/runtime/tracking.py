"""Faces followed over time: boxes associated into tracks, and each track's smoothed estimate.

    tracker = Tracker()
    ids = tracker.match(time, boxes)                  # a frame with detections: one id per box
    pairs = tracker.predict(time)                     # a frame without: [(id, extrapolated box)]
    estimate = tracker.observe(id, time, box, row)    # row: one face's backend outputs

Association is greedy on IoU between this frame's boxes and each live track's box extrapolated
at constant velocity (pairs taken best first, IoU at least `iou_threshold`); a box left over
starts a new track, and a track unmatched for `max_missed_s` seconds ends, so a face that leaves
and comes back gets a new id. Greedy matching equals the Hungarian assignment whenever the faces
do not overlap each other, which is the case for real faces in a frame; it needs no solver.

Smoothing, per track and reset with it: a running average of the age distribution (`age_probs`,
117 bins) and of the gender logit, weighted `max(1 / n, 1 - exp(-dt / tau_s))` for the n-th
observation `dt` seconds after the previous one: a plain mean of the first observations, then
an exponential average with time constant `tau_s`, so the result does not depend on the frame
rate (a 30 fps video and a camera page sending 3 frames/s smooth over the same time). The
smoothed age, interval and gender are decoded from the averaged distribution exactly as a
model's own is (`model_io.decode_age`; a model without a distribution averages its ages instead).

`SessionStore` holds one tracker per camera session of the web page, bounded in number and
idle time.
"""

from __future__ import annotations

import math
import threading
import time as clock
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from utkface.runtime.errors import OptionError
from utkface.runtime.faces import Box, box_iou
from utkface.runtime.model_io import decode_age, gender_logit


@dataclass
class Estimate:
    """A track's smoothed estimate after an observation."""

    age: float | None = None
    age_low: float | None = None
    age_high: float | None = None
    gender_prob: float | None = None  # P(female), from the averaged logit
    observations: int = 0  # frames averaged so far


@dataclass
class Track:
    id: int
    box: Box
    time: float  # when `box` was seen
    velocity: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # box units per second
    missed_since: float | None = None  # time of the first frame with detections it missed
    observations: int = 0
    last_observed: float | None = None
    average: dict[str, np.ndarray] = field(default_factory=dict)  # running means of the outputs

    def box_at(self, time: float) -> Box:
        dt = time - self.time
        return tuple(b + v * dt for b, v in zip(self.box, self.velocity))


class Tracker:
    """Tracks of one video or camera session (see the module docstring)."""

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_missed_s: float = 1.0,
        tau_s: float = 1.0,
        max_tracks: int = 64,
    ):
        if not 0 < iou_threshold <= 1 or tau_s <= 0 or max_missed_s < 0 or max_tracks < 1:
            raise OptionError("need 0 < iou_threshold <= 1, tau_s > 0, max_missed_s >= 0")
        self.iou_threshold, self.max_missed_s, self.tau_s = iou_threshold, max_missed_s, tau_s
        self.max_tracks = max_tracks
        self.tracks: dict[int, Track] = {}
        self.next_id = 1

    def match(self, time: float, boxes: list[Box]) -> list[int]:
        """Associate a frame's detected boxes with tracks: a track id per box, new ids for boxes
        no track explains. Tracks missing longer than `max_missed_s` end here."""
        live = list(self.tracks.values())
        pairs = sorted(
            (
                (box_iou(track.box_at(time), box), t, b)
                for t, track in enumerate(live)
                for b, box in enumerate(boxes)
            ),
            reverse=True,
        )
        ids: list[int | None] = [None] * len(boxes)
        taken = set()
        for iou, t, b in pairs:
            if iou < self.iou_threshold:
                break
            if t not in taken and ids[b] is None:
                taken.add(t)
                ids[b] = live[t].id
                self._move(live[t], time, boxes[b])
        for t, track in enumerate(live):
            if t not in taken:
                if track.missed_since is None:
                    track.missed_since = time
                if time - track.missed_since > self.max_missed_s:
                    del self.tracks[track.id]
        for b, box in enumerate(boxes):
            if ids[b] is None:
                ids[b] = self._start(time, box)
        return ids

    def predict(self, time: float) -> list[tuple[int, Box]]:
        """Boxes of the tracks seen at the last detection, extrapolated to `time` (for frames
        where the detector does not run)."""
        return [(t.id, t.box_at(time)) for t in self.tracks.values() if t.missed_since is None]

    def observe(self, track_id: int, time: float, box: Box, row: dict) -> Estimate:
        """Add one frame's outputs for a track (keys of `model_io.OUTPUT_NAMES`, one face's
        values) to its running average; returns the smoothed estimate."""
        track = self.tracks[track_id]
        track.observations += 1
        dt = 0.0 if track.last_observed is None else max(0.0, time - track.last_observed)
        track.last_observed = time
        weight = max(1.0 / track.observations, 1.0 - math.exp(-dt / self.tau_s))
        for key, value in _averaged(row).items():
            old = track.average.get(key)
            track.average[key] = value if old is None else old + weight * (value - old)
        return _estimate(track.average, track.observations)

    def _move(self, track: Track, time: float, box: Box) -> None:
        dt = time - track.time
        if dt > 0:
            new = tuple((b - a) / dt for a, b in zip(track.box, box))
            # half new, half old: one jittery detection does not fling the box
            track.velocity = tuple((v + w) / 2 for v, w in zip(track.velocity, new))
        track.box, track.time, track.missed_since = box, time, None

    def _start(self, time: float, box: Box) -> int:
        if len(self.tracks) >= self.max_tracks:  # drop a missing track (else the stalest)
            oldest = min(self.tracks.values(), key=lambda t: (t.missed_since is None, t.time))
            del self.tracks[oldest.id]
        track = Track(self.next_id, box, time)
        self.tracks[track.id] = track
        self.next_id += 1
        return track.id


def _averaged(row: dict) -> dict[str, np.ndarray]:
    """What is averaged for one face: the age distribution when there is one (else the ages),
    and the gender logit."""
    values = {}
    if "age_probs" in row:
        values["age_probs"] = np.asarray(row["age_probs"], np.float64)
    else:
        values.update({k: np.float64(row[k]) for k in ("age", "age_low", "age_high") if k in row})
    if "gender_prob" in row:
        values["gender_logit"] = gender_logit(row["gender_prob"])
    return values


def _estimate(average: dict[str, np.ndarray], observations: int) -> Estimate:
    estimate = Estimate(observations=observations)
    if "age_probs" in average:
        decoded = decode_age(average["age_probs"][None])  # of a (1, 117) distribution
        estimate.age, estimate.age_low, estimate.age_high = (float(value[0]) for value in decoded)
    for key in ("age", "age_low", "age_high"):
        if key in average:
            setattr(estimate, key, float(average[key]))
    if "gender_logit" in average:
        estimate.gender_prob = 1.0 / (1.0 + math.exp(-float(average["gender_logit"])))
    return estimate


class SessionStore:
    """Per-session state for the camera page (e.g. a `video_faces.FaceStream` with its
    tracker), made by `factory` on a session's first frame: at most `max_sessions` are kept
    (the least recently used is dropped) and each is dropped after `idle_s` seconds without a
    frame, so a server's tracking state stays bounded whatever its clients do."""

    def __init__(self, factory: Callable[[], object], max_sessions: int = 32, idle_s: float = 60):
        self.factory, self.max_sessions, self.idle_s = factory, max_sessions, idle_s
        self._sessions: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: str):
        now = clock.monotonic()
        with self._lock:
            for key in [k for k, (_, used) in self._sessions.items() if now - used > self.idle_s]:
                del self._sessions[key]
            state = self._sessions.pop(session, (None, 0.0))[0]
            self._sessions[session] = (state if state is not None else self.factory(), now)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return self._sessions[session][0]

    def __len__(self) -> int:
        return len(self._sessions)
