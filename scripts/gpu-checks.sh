#!/usr/bin/env bash
# What this project checks on a CUDA machine, with that machine's own python3 (its PyTorch):
#
#   scripts/gpu-checks.sh tests    the CUDA tests (tests/test_cuda.py)
#   scripts/gpu-checks.sh trace    `workbench bench trace` on the demo model: default prompt and a
#                                  mid-sentence one (batched grid vs one forward per cell)
#   scripts/gpu-checks.sh memit    `workbench bench memit` (on CUDA: a random-weight GPT-J-shaped
#                                  model; serial z timed on the first 32 edits of each size)
#   scripts/gpu-checks.sh all      the three in turn
#
# Logs and JSON go to $OUT (or ./gpu-out). Packages the machine lacks are read from wheels in
# .whl/ (or $WHEELS) when that folder exists (fetched on a connected machine with `pip download`),
# installed into a temporary folder, never into the system. The GPT-J shape needs the GPT-2 tokenizer:
# ../shared/data/gpt2-tokenizer, or .gpu/gpt2-tokenizer, or $TOKENIZER.
set -uo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD"
wheels="${WHEELS-.whl}"                       # WHEELS= (empty): use the packages python3 has
if [ -n "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
  site="$(mktemp -d)"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || { echo "installing $wheels/ failed"; exit 1; }
  export PYTHONPATH="$site:$PWD"
fi
tokenizer="${TOKENIZER:-}"
for d in ../shared/data/gpt2-tokenizer .gpu/gpt2-tokenizer; do
  [ -z "$tokenizer" ] && [ -f "$d/vocab.json" ] && tokenizer="$d"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"

status=0
run_tests() {
  "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.log" 2>&1 || status=1
  tail -n 15 "$out/test_cuda.log"
}
run_trace() {
  "$py" -m workbench bench trace --json "$out/trace.json" > "$out/trace.log" 2>&1 || status=1
  "$py" -m workbench bench trace --prompt "The sport played by Greta Paul Roxwell is" \
    --subject "Greta Paul Roxwell" --json "$out/trace_mid.json" > "$out/trace_mid.log" 2>&1 || status=1
  for f in trace trace_mid; do
    "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], 'batched', round(d['batched_s'],3), 's  loop', round(d['loop_s'],3), 's  ratio', round(d['ratio'],1), ' forwards', d['forwards_batched'], 'vs', d['forwards_loop'])" "$out/$f.json" \
      || tail -n 20 "$out/$f.log"
  done
}
run_memit() {
  local tok=()
  [ -n "$tokenizer" ] && tok=(--tokenizer "$tokenizer")
  "$py" -m workbench bench memit --serial-max 32 "${tok[@]}" --json "$out/memit.json" 2>&1 \
    | grep -v "it/s\]" | tee "$out/memit.log" | tail -n 20
  [ -s "$out/memit.json" ] || status=1
}
case "$what" in
  tests) run_tests ;;
  trace) run_trace ;;
  memit) run_memit ;;
  all) run_tests; run_trace; run_memit ;;
  *) echo "usage: $0 tests|trace|memit|all"; exit 2 ;;
esac
exit $status
