#!/usr/bin/env bash
# Quick start: install the project, train on UTKFace, then evaluate the best checkpoint on the
# test split. The data is $UTKFACE_DATA, or the shared archive beside this checkout.
#
#   ./run.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export UTKFACE_DATA="${UTKFACE_DATA:-../shared/UTKFace.tar.gz}"

python3 -m pip install -e .

# Training flags (model, epochs, image size) are set in `utkface train`'s defaults; see
# `utkface train --help` to change them.
utkface train --data "$UTKFACE_DATA" --out runs/quickstart
utkface evaluate --checkpoint runs/quickstart/best.pt --split test
