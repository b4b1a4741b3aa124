#!/usr/bin/env bash
# One prepared device check (run from the repo root on a CUDA machine):
#   the CUDA-marked tests, a few AMP training steps of VGG16-BN at 448 through the real
#   `spine-dfl train` loop (filter-bank init on CUDA included), and the benchmarks.
# Results (JSON and logs) go to $OUT (default ./gpu_out). Each step is time-boxed so one
# slow step cannot eat the others. Wheels for packages the machine lacks may be placed
# in .whl/ (installed into /tmp/site, the project itself is used from the source tree).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step cuda_tests 120 python3 -m pytest -q -m cuda tests/test_filter_init.py tests/test_model.py -p no:cacheprovider
step bench_train_vgg16_448 90 python3 benchmarks/train_step.py --backbone vgg16_bn --size 448 --batch 16 --steps 10 --rounds 2 --device cuda
step bench_train_resnet50_448 90 python3 benchmarks/train_step.py --backbone resnet50 --size 448 --batch 32 --steps 10 --rounds 2 --device cuda
step bench_train_resnet18_112 60 python3 benchmarks/train_step.py --backbone resnet18 --size 112 --batch 32 --steps 10 --rounds 2 --device cuda
step bench_filter_init_cuda 60 python3 benchmarks/filter_init.py --device cuda
step synth 60 python3 -m spine_dfl synth "$OUT/../cohort" --patients 24 --seed 0
step train_vgg16_448_amp 150 python3 -m spine_dfl train "$OUT/../cohort/manifest.csv" --config dfl_vgg16_448 \
  --out /tmp/run_vgg --no-report --set model.pretrained=none --set train.epochs=2 --set train.max_steps_per_epoch=8 \
  --set data.cache=none --set data.workers=8
cp /tmp/run_vgg/metrics.csv "$OUT/train_vgg16_metrics.csv" 2>/dev/null
cp /tmp/run_vgg/filter_init.json "$OUT/train_vgg16_filter_init.json" 2>/dev/null
step bench_score 150 python3 benchmarks/score_throughput.py --sizes 500 5000 --device cuda --workers 12 --batch-size 64
echo done
