#!/usr/bin/env bash
# Regenerates everything derived from protos/: Python messages, gRPC stubs and mypy stubs,
# TypeScript (protoc-gen-es), and the API reference in docs/. Local plugins only.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF=node_modules/.bin/buf
PY=${PYTHON:-.venv/bin/python}
PY_OUT=clients/python
IMAGE=$(mktemp --suffix=.binpb)
trap 'rm -f "$IMAGE"' EXIT

"$BUF" lint
"$BUF" build --as-file-descriptor-set -o "$IMAGE"

# Python: grpc_tools.protoc reads the image buf built, so both tools see the same contract.
rm -rf "$PY_OUT/classwire/api"
mapfile -t FILES < <(cd protos && find classwire -name '*.proto' | LC_ALL=C sort)
"$PY" -m grpc_tools.protoc \
  --descriptor_set_in="$IMAGE" \
  --python_out="$PY_OUT" --grpc_python_out="$PY_OUT" \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  --mypy_out="$PY_OUT" --mypy_grpc_out="$PY_OUT" \
  "${FILES[@]}"
# Regular packages below the `classwire` namespace, so type checkers and tools find them.
find "$PY_OUT/classwire/api" -type d -exec touch {}/__init__.py \;
touch "$PY_OUT/classwire/api/py.typed"

# TypeScript, with the protoc-gen-es installed from package-lock.json.
"$BUF" generate

# The API reference and the events catalogue, from the proto comments.
"$PY" scripts/gen_api_docs.py "$IMAGE" docs
