#!/usr/bin/env bash
# The device benches in one go, for a machine with one CUDA GPU (about 8 minutes on an H200):
#   bench/run_gpu.sh OUT_DIR
# writes OUT_DIR/paper_scale_cuda.json (plan + factorise with the teacher weights on the GPU),
# OUT_DIR/sensitivity_scale_cuda.json (the largest Llama-2 shape whose sensitivity pass fits, bf16
# weights with float32 sums), OUT_DIR/host_transfer_cuda.json (a 7B map to host memory, staged vs
# .cpu()) and OUT_DIR/sensitivity_procs.json (1 vs 2 processes on free CPU cores), each with a .log
# beside it (8 files). Runs from a checkout without installing it (PYTHONPATH=.).
set -uo pipefail
out=${1:?usage: bench/run_gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py bench/bench_paper_scale.py --device cuda --layers 2 --out "$out/paper_scale_cuda.json"; } 2>&1 \
  | tee "$out/paper_scale_cuda.log" || status=1
$py bench/bench_sensitivity_scale.py --device cuda --out "$out/sensitivity_scale_cuda.json" 2>&1 \
  | tee "$out/sensitivity_scale_cuda.log" || status=1
$py bench/bench_host_transfer.py --device cuda --out "$out/host_transfer_cuda.json" 2>&1 \
  | tee "$out/host_transfer_cuda.log" || status=1
$py bench/bench_sensitivity_procs.py --shape smollm2-135m --threads 4 --procs 2 --rounds 3 \
  --out "$out/sensitivity_procs.json" 2>&1 | tee "$out/sensitivity_procs.log" || status=1
exit $status
