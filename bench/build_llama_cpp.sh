#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` and `llama-batched-bench` from the llama.cpp sources vendored in the
# llama-cpp-python sdist, so the baseline runs exactly the engine version the gateway links against.
#
# The build lives in a cache outside the repo (it is ~100 MB and minutes of compile on 2 cores) and is
# skipped when both binaries already exist. The last two lines of stdout are always the binary paths:
#   LLAMA_SERVER=/path/to/llama-server
#   LLAMA_BATCHED_BENCH=/path/to/llama-batched-bench
#
# Environment:
#   LLAMA_CPP_PYTHON_VERSION  sdist version to build from (default 0.3.36, the version the gateway pins)
#   LLAMA_CPP_CACHE           cache dir (default ~/.cache/llm-gateway/llama.cpp-<version>)
#   PYTHON                    interpreter whose pip downloads the sdist (default: repo .venv, else python3)
#   JOBS                      parallel compile jobs (default 2: the target machine has 2 cores)
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLAMA_CPP_CACHE:-${HOME}/.cache/llm-gateway/llama.cpp-${VERSION}}"
JOBS="${JOBS:-2}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${REPO_ROOT}/.venv/bin/python" ]] && "${REPO_ROOT}/.venv/bin/python" -m pip --version >/dev/null 2>&1; then
        PYTHON="${REPO_ROOT}/.venv/bin/python"
    else
        PYTHON="python3"
    fi
fi

BUILD_DIR="${CACHE}/build"
SERVER="${BUILD_DIR}/bin/llama-server"
BATCHED="${BUILD_DIR}/bin/llama-batched-bench"

print_paths() {
    echo "LLAMA_SERVER=${SERVER}"
    echo "LLAMA_BATCHED_BENCH=${BATCHED}"
}

if [[ -x "${SERVER}" && -x "${BATCHED}" ]]; then
    echo "llama.cpp binaries already built in ${BUILD_DIR}; skipping build" >&2
    print_paths
    exit 0
fi

mkdir -p "${CACHE}"
SRC_DIR="${CACHE}/src"

if [[ ! -f "${SRC_DIR}/CMakeLists.txt" ]]; then
    SDIST_DIR="${CACHE}/sdist"
    mkdir -p "${SDIST_DIR}"
    SDIST="$(ls "${SDIST_DIR}"/llama_cpp_python-"${VERSION}".tar.gz 2>/dev/null || true)"
    if [[ -z "${SDIST}" ]]; then
        echo "downloading llama-cpp-python==${VERSION} sdist with ${PYTHON} -m pip" >&2
        "${PYTHON}" -m pip download --no-binary :all: --no-deps \
            -d "${SDIST_DIR}" "llama-cpp-python==${VERSION}" >&2
        SDIST="$(ls "${SDIST_DIR}"/llama_cpp_python-"${VERSION}".tar.gz)"
    fi
    echo "extracting vendor/llama.cpp from ${SDIST}" >&2
    TMP_EXTRACT="$(mktemp -d "${CACHE}/extract.XXXXXX")"
    tar -xzf "${SDIST}" -C "${TMP_EXTRACT}"
    rm -rf "${SRC_DIR}"
    mv "${TMP_EXTRACT}/llama_cpp_python-${VERSION}/vendor/llama.cpp" "${SRC_DIR}"
    rm -rf "${TMP_EXTRACT}"
fi

GENERATOR=()
if command -v ninja >/dev/null 2>&1; then
    GENERATOR=(-G Ninja)
fi

echo "configuring llama.cpp in ${BUILD_DIR}" >&2
cmake -S "${SRC_DIR}" -B "${BUILD_DIR}" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >&2

echo "building llama-server and llama-batched-bench with ${JOBS} jobs" >&2
cmake --build "${BUILD_DIR}" --config Release -j "${JOBS}" --target llama-server llama-batched-bench >&2

print_paths
