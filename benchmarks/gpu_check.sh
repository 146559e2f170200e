#!/usr/bin/env bash
# The GPU check, for a lent CUDA machine: install the carried wheels into a temporary target (nothing on the
# machine changes), run the `cuda` tests and a compress of the demo on --device cuda --dtype bf16 (no vLLM
# stages), and print one summary line per check. Budget: 8 minutes on one H100.
#   local:  bash benchmarks/make_gpu_wheels.sh
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".cache/gpu-wheels"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}; mkdir -p "$out"
target=$(mktemp -d)
summary() { printf '%-34s %s\n' "$1" "$2" | tee -a "$out/summary.txt"; }
: > "$out/summary.txt"

python - <<'PY' 2>&1 | tee "$out/env.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for mod in ("transformers", "peft", "onnxruntime", "pydantic", "typer", "vllm"):
    try:
        print(mod, __import__(mod).__version__)
    except Exception as exc:
        print(mod, "missing:", type(exc).__name__)
PY

# the machine's torch/transformers/peft stay; only what is missing comes from the carried wheels
if ls .cache/gpu-wheels/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target "$target" .cache/gpu-wheels/*.whl > "$out/install.txt" 2>&1 \
    && summary "install carried wheels" "ok ($(ls .cache/gpu-wheels | wc -l) wheels)" \
    || summary "install carried wheels" "FAILED (see install.txt)"
else
  summary "install carried wheels" "none carried (run benchmarks/make_gpu_wheels.sh first)"
fi
export PYTHONPATH="$PWD:$target${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 SLIMDEPLOY_CACHE="$target/cache"
python -c "import slimdeploy, torch; assert torch.cuda.is_available()" 2>"$out/import.txt" \
  && summary "import slimdeploy, CUDA visible" "ok" || summary "import slimdeploy, CUDA visible" "FAILED: $(tail -1 "$out/import.txt")"

# each cuda test on its own line: which stage breaks is the answer this check exists for
timeout 300 python -m pytest -q -p no:cacheprovider -o addopts="" -m cuda tests/test_cuda.py -rA \
  > "$out/pytest.txt" 2>&1
for t in $(grep -oE '^(PASSED|FAILED|ERROR|SKIPPED)[^ ]* tests/test_cuda.py::[^ ]+' "$out/pytest.txt" | awk '{print $1"|"$2}'); do
  summary "${t#*::}" "${t%%|*}"
done
summary "cuda tests (pytest)" "$(tail -1 "$out/pytest.txt")"

t0=$(date +%s)
timeout 240 python -m slimdeploy --quiet compress --recipe benchmarks/gpu-check.yaml --device cuda --dtype bf16 \
  --out "$out/compress" > "$out/compress.txt" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
  summary "compress demo (cuda, bf16)" "ok in $(( $(date +%s) - t0 )) s: $(python -c "import json;s=json.load(open('$out/compress/report.json'))['summary'];print(s['perplexity'])")"
else
  summary "compress demo (cuda, bf16)" "FAILED rc=$rc: $(tail -1 "$out/compress.txt")"
fi
rm -rf "$out/compress/"*.safetensors  # the result files come back, not the weights
