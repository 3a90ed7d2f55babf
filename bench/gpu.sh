#!/usr/bin/env bash
# GPU benchmark of the core engine (under 5 minutes on one H100/H200): ViT-B/16 random weights,
# bf16 autocast, 224 and 384 px, batch 1 and 64, Chefer at batch 1 and 16, and the HTTP server
# (bench/serve_load.py) when Ray Serve is installed. One JSON object per line, each with
# forward_ms, explain_ms, ratio and the peak GPU memory of each path.
#   bash bench/gpu.sh            (needs torch, timm, safetensors, pillow, opencv, tqdm)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('# gpu:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
for size in 224 384; do
  for batch in 1 64; do
    "$py" bench/explain_overhead.py --model vit_base_patch16_224 --img-size "$size" \
      --batch "$batch" --precision bf16 --repeats 20 --warmup 5 --json
  done
done
# attention returned in fp16 halves the memory of the largest case
"$py" bench/explain_overhead.py --model vit_base_patch16_224 --img-size 384 --batch 64 \
  --precision bf16 --attn-dtype float16 --repeats 20 --warmup 5 --json
# class-specific (Chefer): one forward kept for autograd + one backward to the attention
for batch in 1 16; do
  "$py" bench/explain_overhead.py --model vit_base_patch16_224 --method chefer \
    --batch "$batch" --precision bf16 --repeats 20 --warmup 5 --json
done
# the live camera's frame processor at 30 fps in, ViT-B/16 (target: >= 30 maps per second)
"$py" bench/live.py --model vit-b16 --random-weights --device cuda --seconds 8 --json
"$py" bench/live.py --model vit-b16 --random-weights --device cuda --method class --seconds 8 --json
# the HTTP server against the same model batched in-process (needs ray[serve] on the machine)
if "$py" -c "import ray.serve" 2>/dev/null; then
  "$py" bench/serve_load.py --json --device cuda --precision fp32 --requests 96
else
  echo "# ray[serve] not installed here: skipped bench/serve_load.py"
fi
