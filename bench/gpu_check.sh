#!/usr/bin/env bash
# The GPU path in one command, on a machine with CUDA: the CUDA-marked tests (data resident on the GPU,
# bf16 autocast + channels_last, checkpoint/resume, export of a CUDA-trained run), then the throughput
# of ResNet-20/56 against the textbook loop and the input pipeline on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
test -x "$PY" || make .venv/.requirements-installed
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs one')"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
"$PY" -m pytest -m cuda -p no:cacheprovider tests/test_cuda.py
"$PY" bench/train_throughput.py --nets resnet20 resnet56 --iterations 100
"$PY" bench/input_pipeline.py --device cuda
