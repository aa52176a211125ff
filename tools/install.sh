#!/usr/bin/env bash
# Set up an isolated environment for ovsam on a fresh machine (idempotent).
#
#   bash tools/install.sh            # create/update .venv
#
# Environment variables:
#   PYTHON             interpreter used to create the venv (default: python3.11, else python3)
#   OVSAM_VENV         virtual environment folder (default: .venv in the repository)
#   OVSAM_WHEEL_CACHE  where the locally built mmcv wheel is kept between installs
#                      (default: $XDG_CACHE_HOME/ovsam/wheels, i.e. ~/.cache/ovsam/wheels)
#   MAX_JOBS           parallel compile jobs for the mmcv build (default: number of cores)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${OVSAM_VENV:-$ROOT/.venv}
CACHE=${OVSAM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ovsam/wheels}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

log() { printf '[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$ROOT/requirements/constraints.txt")

# A stamp of everything that defines the environment: a second run with nothing
# changed only checks that the key imports still work.
STAMP="$VENV/.ovsam-install-stamp"
want=$(cat "$0" setup.py requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && \
   "$PY" -c "import torch, mmcv.ops, mmdet, mmpretrain, open_clip, segment_anything, ovsam" 2>/dev/null; then
  log "environment up to date ($VENV)"
  exit 0
fi

log "build tools"
"${PIP[@]}" --upgrade pip
"${PIP[@]}" -r requirements/build.txt

log "torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
"${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

log "mmengine, openmim"
"${PIP[@]}" mmengine==0.10.7
# openmim -> opendatalab -> openxlab pins setuptools~=60.2, which breaks torch
# and the mmcv build; mim's train/test commands need none of the download stack.
"${PIP[@]}" --no-deps openmim==0.3.9
"${PIP[@]}" Click colorama model-index pandas requests rich tabulate

# mmcv 2.1.0: no wheels on PyPI. Build it once with its CPU ops against the
# installed torch and keep the wheel outside the checkout.
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  tag=$("$PY" -c "import torch, sys; print(f'torch{torch.__version__.split(\"+\")[0]}-py{sys.version_info[0]}{sys.version_info[1]}')")
  wheel_dir="$CACHE/$tag"
  mkdir -p "$wheel_dir"
  wheel=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    log "building mmcv $MMCV_VERSION with CPU ops (about 10-15 min on 2 cores; cached in $wheel_dir)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary mmcv \
      --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    # torch 2.14 headers require C++20; mmcv's setup.py pins older standards.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
    grep -q 'std=c++20' "$work/mmcv-$MMCV_VERSION/setup.py" || { echo "mmcv setup.py: could not switch to C++20" >&2; exit 1; }
    (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA=0 \
       "$PY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation . -w "$work/dist")
    mv "$work"/dist/mmcv-*.whl "$wheel_dir/"
    wheel=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -1)
  else
    log "reusing cached mmcv wheel $wheel"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$wheel"
  # mmcv's own runtime requirements (the wheel was installed without deps).
  "${PIP[@]}" addict packaging Pillow pyyaml yapf opencv-python
fi

log "runtime, test and demo requirements"
"${PIP[@]}" -r requirements/runtime.txt -r requirements/tests.txt -r requirements/optional.txt

log "ovsam (editable)"
"${PIP[@]}" --no-build-isolation --no-deps -e .
# `mim train/test ovsam` looks for the package at site-packages/ovsam (and its
# .mim/{configs,tools}); an editable install has no such folder, so link it.
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -e "$SITE/ovsam" ]; then ln -s "$ROOT/projects/ovsam" "$SITE/ovsam"; fi

"$PY" - <<'PY'
import torch, mmcv, mmdet, mmengine, mmpretrain, open_clip, segment_anything
from mmcv.ops import RoIAlign
import ovsam
x = torch.rand(1, 1, 8, 8)
RoIAlign(2, 1.0)(x, torch.tensor([[0., 0., 0., 4., 4.]]))
print(f"[install] ok: torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmengine {mmengine.__version__}, ovsam {ovsam.__version__}")
PY
echo "$want" > "$STAMP"
