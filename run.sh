#!/usr/bin/env bash
# Quick start: install the project, train on UTKFace, then evaluate the best checkpoint on the
# test split. The data is $UTKFACE_DATA, or the shared archive beside this checkout.
#
#   ./run.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export UTKFACE_DATA="${UTKFACE_DATA:-../shared/UTKFace.tar.gz}"
# ImageNet weights: torchvision downloads them into $TORCH_HOME; offline, the team's copy is used.
if [ -z "${TORCH_HOME:-}" ] && [ -d ../shared/torch ]; then
    export TORCH_HOME="$(cd ../shared/torch && pwd)"
fi

# Training needs PyTorch: the train extra (the runtime alone is `pip install .`).
python3 -m pip install -e ".[train]"

# The default model (ImageNet MobileNetV2, one head per task, 112 px) with its schedule fitted
# to 41 minutes, so the whole job ends within 45 minutes on a 2-core CPU; selection is on val.
utkface train --data "$UTKFACE_DATA" --time-budget "${UTKFACE_MINUTES:-41}" --out runs/quickstart
# The test split, scored once, with horizontal-flip test-time augmentation.
utkface evaluate --checkpoint runs/quickstart/best.pt --data "$UTKFACE_DATA" --split test --tta
