#!/usr/bin/env bash
# Fetch the wheels the lent GPU machine lacks (it has Python 3.12, torch + CUDA, transformers, peft,
# onnxruntime; no pydantic, no network) into .cache/gpu-wheels, to be carried there with the working tree
# (`carry: [".cache/gpu-wheels"]`, 64 MiB at most). Run on a machine that reaches the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/gpu-wheels
rm -rf "$dest" && mkdir -p "$dest"
# what slimdeploy imports beyond the GPU machine's stack (pyproject [project.dependencies] less torch,
# transformers, peft, tokenizers, safetensors, numpy, which are there)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$dest" \
  pydantic pydantic-core annotated-types typing-inspection typing-extensions \
  typer click shellingham rich markdown-it-py mdurl pygments pyyaml psutil gguf \
  matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six \
  pytest pytest-timeout pluggy iniconfig
python -m pip wheel -q --no-deps -w "$dest" .   # slimdeploy itself (pure Python)
du -sh "$dest"
ls "$dest"
