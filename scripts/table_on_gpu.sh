#!/usr/bin/env bash
# `abd table` on a CUDA machine whose python3 already has torch, without network: the other dependencies
# come as wheels in .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection, mlxtend).
# Usage (from the repository root): LIMIT=540 bash scripts/table_on_gpu.sh --out results/table --workers 16
# Runs stop after LIMIT seconds; finished runs stay in their folders (reused by the next `abd table`), and
# $OUT/table.tgz (when OUT is set) holds the results folder.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
start=$(date +%s)
timeout "${LIMIT:-540}" python3 -c 'import sys; from abd.cli import main; sys.exit(main())' table --device cuda "$@"
echo "table: exit $? after $(( $(date +%s) - start )) s"
if [ -n "${OUT:-}" ]; then
    out_dir=$(python3 -c 'import sys; a = sys.argv[1:]; print(a[a.index("--out") + 1])' "$@")
    tar czf "$OUT/table.tgz" "$out_dir"
    ls -la "$OUT"
fi
