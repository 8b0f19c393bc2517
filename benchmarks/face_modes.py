"""What `--faces aligned` and `--faces auto` cost and decide on a labelled collection of crops.

    python3 -m benchmarks.face_modes [--photos ../shared/fairface/fairface-train-40k.zip]
                                     [--count 100] [--skip 1000] [--size 112]

Times `labelled.face_crop` (what `prepare` runs per photo) in this one process on `--count`
photos of the zip or folder, after `--skip` of them: `aligned` only decodes; `auto` first asks
the face detector whether the photo is already a crop (`faces.looks_aligned`) and cuts the face
again where it doubts. Also prints how many photos `auto` kept as they are. Needs dlib (the
`detect` extra) for `auto`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from utkface.data.labelled import face_crop
from utkface.runtime import faces, images
from utkface.runtime.sources import iter_members

FAIRFACE = 40_000  # photos of ../shared/fairface
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "fairface" / "fairface-train-40k.zip"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT, help="zip, .tar.gz or folder")
    parser.add_argument("--count", type=int, default=100, help="photos timed")
    parser.add_argument("--skip", type=int, default=1000, help="photos passed over first")
    parser.add_argument("--size", type=int, default=112, help="crop side in pixels")
    args = parser.parse_args()
    payloads = []
    for member in iter_members(args.photos):
        if member.problem is None:
            payloads.append(member.data)
        if len(payloads) == args.skip + args.count:
            break
    payloads = payloads[args.skip :]
    kept = sum(faces.looks_aligned(images.open_rgb(data))[0] for data in payloads)
    print(f"{args.photos}: {len(payloads)} photos; auto keeps {kept} as they are")
    for mode in ("aligned", "auto"):
        face_crop(payloads[0], args.size, mode)  # load the detector before timing
        start = time.perf_counter()
        for data in payloads:
            try:
                face_crop(data, args.size, mode)
            except images.ImageError:
                pass  # no face or several: `prepare` would skip the photo
        seconds = (time.perf_counter() - start) / len(payloads)
        print(
            f"--faces {mode:8s} {seconds * 1000:7.1f} ms per photo "
            f"({seconds * FAIRFACE / 60:.1f} min for FairFace's {FAIRFACE:,} in one process)"
        )


if __name__ == "__main__":
    main()
