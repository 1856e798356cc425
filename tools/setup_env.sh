#!/usr/bin/env bash
# Build (or check) the project's virtual environment with the whole stack:
# torch + open_clip for pomp_core, detectron2 for pomp_det, mmcv/mmseg for pomp_seg.
#
#   bash tools/setup_env.sh            # creates .venv next to this repository
#   POMP_VENV=/path/to/venv bash tools/setup_env.sh
#
# Idempotent: a stamp records the hash of the pinned versions and of this script;
# when it matches and the stack imports, nothing is done. Compiled wheels (mmcv with
# its ops, the patched detectron2) are cached in $POMP_CACHE (default
# ~/.cache/pomp/wheels), outside the work tree, so a rebuilt venv or a CI run on the
# same machine installs them instead of compiling them again. Every download goes
# through pip, so its configured index, mirror and proxy apply (docs/install.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POMP_VENV:-$repo/.venv}"
cache="${POMP_CACHE:-$HOME/.cache/pomp}/wheels"
pins="$repo/requirements/constraints.txt"
python="${PYTHON:-python3}"
stamp="$venv/.pomp-stack-stamp"

log() { printf '[setup_env] %s\n' "$*" >&2; }
pin() { sed -n "s/^$1==//p" "$pins"; }

want_stamp="$(cat "$pins" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
check_stack() {  # full imports: run once after installing
  "$venv/bin/python" - <<'EOF' 2>/dev/null
import detectron2, detectron2.modeling, lvis, mmcv.ops, mmdet, mmengine, mmseg.models, open_clip, pomp_core, torch, xdist
EOF
}
stack_present() {  # cheap: every top-level package is findable, without importing it
  "$venv/bin/python" - <<'EOF' 2>/dev/null
import importlib.util, sys
mods = ["detectron2", "lvis", "mmcv", "mmdet", "mmengine", "mmseg", "open_clip", "pomp_core", "torch", "xdist"]
sys.exit(any(importlib.util.find_spec(m) is None for m in mods))
EOF
}
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] && stack_present; then
  log "environment at $venv is up to date"
  exit 0
fi

start=$SECONDS
mkdir -p "$cache"
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# Everything with a wheel, exactly as pinned (the pins file doubles as the constraints).
log "installing the pinned stack"
grep -vE '^(#|$|mmcv==|pb1-detectron2==)' "$pins" > "$cache/.stack-reqs.txt"
"${pip[@]}" install -q -r "$cache/.stack-reqs.txt" -c "$cache/.stack-reqs.txt" 2>&1 | { grep -v 'is ignored: it is neither' || true; } >&2

# The sdists of the two packages built from source, from pip's configured index (PIP_INDEX_URL,
# pip.conf, a mirror): the venv already holds torch and setuptools, which their metadata needs.
fetch_sdist() {  # name version filename -> path of the unpacked tree
  local name="$1" version="$2" file="$3" work="$cache/src"
  mkdir -p "$work"
  if [[ ! -f "$work/$file" ]]; then
    log "downloading the $name $version sdist"
    "${pip[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" "$name==$version" 2>&1 \
      | { grep -v 'is ignored: it is neither' || true; } >&2
    [[ -f "$work/$file" ]] || { log "pip download did not give $file"; exit 1; }
  fi
  rm -rf "$work/${file%.tar.gz}"
  tar xzf "$work/$file" -C "$work"
  echo "$work/${file%.tar.gz}"
}

progress() {  # label: a log line with the elapsed time every POMP_PROGRESS_S (30) s until killed
  local t0=$SECONDS nap
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "${POMP_PROGRESS_S:-30}" & nap=$!
    wait "$nap"
    log "$1: $((SECONDS - t0)) s elapsed"
  done
}

build_wheel() {  # wheel-glob src-dir note [env...]: build into the cache unless already there
  local glob="$1" src="$2" note="$3"; shift 3
  if ! compgen -G "$cache/$glob" >/dev/null; then
    log "building ${glob%-\*.whl} from source$note; cached in $cache afterwards"
    progress "building ${glob%-\*.whl}" & local ticker=$!
    if ! env "$@" "${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$cache" "$src"; then
      kill "$ticker"; exit 1
    fi
    kill "$ticker"; wait "$ticker" 2>/dev/null || true
  fi
  "${pip[@]}" install -q --no-deps --force-reinstall $(compgen -G "$cache/$glob" | head -1)
}

mmcv_v="$(pin mmcv)"
if ! "$venv/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$mmcv_v'" 2>/dev/null; then
  if ! compgen -G "$cache/mmcv-$mmcv_v-*.whl" >/dev/null; then
    src="$(fetch_sdist mmcv "$mmcv_v" "mmcv-$mmcv_v.tar.gz")"
    # torch >= 2.10 headers need C++20; mmcv 2.1's setup.py hard-codes C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  else
    src=/nonexistent
  fi
  build_wheel "mmcv-$mmcv_v-*.whl" "$src" " with its C++ ops (9 to 30 minutes on 2 cores, by CPU: docs/install.md)" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2
  # mmcv's runtime dependencies (addict, yapf, ...) were skipped by --no-deps.
  "${pip[@]}" install -q addict yapf packaging -c "$cache/.stack-reqs.txt"
fi

d2_v="$(pin pb1-detectron2)"
if ! "$venv/bin/python" -c "import detectron2.modeling, detectron2.model_zoo as z; assert z.get_config_file('COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')" 2>/dev/null; then
  if ! compgen -G "$cache/pb1_detectron2-$d2_v-*.whl" >/dev/null; then
    src="$(fetch_sdist pb1-detectron2 "$d2_v" "pb1-detectron2-$d2_v.tar.gz")"
    # The sdist lacks detectron2/layers/csrc: build pure Python (no rotated-box ops,
    # no deformable conv, no fast COCOeval), and put the model-zoo configs where
    # setup.py looks for them so that they are packaged.
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
    grep -q 'ext_modules=\[\],' "$src/setup.py" || { log "detectron2 setup.py patch did not apply"; exit 1; }
    [[ -d "$src/configs" ]] || mv "$src/detectron2/model_zoo/configs" "$src/configs"
    : > "$src/detectron2/_C.py"
  else
    src=/nonexistent
  fi
  build_wheel "pb1_detectron2-$d2_v-*.whl" "$src" " (pure Python, without its C++ ops)"
  # detectron2's pure-Python dependencies, minus its pinned `black` (only used to
  # pretty-print LazyConfig files) which would downgrade click.
  "${pip[@]}" install -q termcolor yacs tabulate cloudpickle 'fvcore>=0.1.5,<0.1.6' \
    'iopath>=0.1.7,<0.1.10' pydot omegaconf hydra-core -c "$cache/.stack-reqs.txt"
fi

log "installing pomp (editable)"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"

check_stack || { log "the stack does not import; see the errors above"; "$venv/bin/python" -c "import detectron2.modeling, lvis, mmcv.ops, mmdet, mmseg.models, open_clip, pomp_core"; exit 1; }
echo "$want_stamp" > "$stamp"
log "environment ready at $venv in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
