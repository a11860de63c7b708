#!/usr/bin/env bash
# The convHVAE's and PixelHVAE's speed on a CUDA GPU, and the CUDA tests (issue 24, item 5).
#
# Prepared for a lent GPU machine: one call of the device tool, under 8 minutes,
#
#   run(command="bash benchmarks/gpu_conv.sh", carry=[".whl"], timeout_s=540)
#
# or anywhere with CUDA: `bash benchmarks/gpu_conv.sh` (writes to out/gpu_conv/).
# What it does, each step under its own time limit:
#   1. installs ppl_vae (and pyro-ppl from .whl/, which that machine's image lacks);
#   2. `throughput.py conv --device cuda`: both models' training step (batch 100, K = 500,
#      28 x 28) in Pyro, hand-written torch, NumPyro and hand-written JAX, and the
#      importance-sampled log-likelihood's time per test image at 5000 samples, beside the
#      GPU's float32 matrix-product rate (defaults: TF32 as torch and JAX set it);
#   3. the GPU tests of tests/test_conv.py (GPU values against the CPU's), then the file's
#      parity, causality and sampling tests with JAX on the GPU.
#
# Before the call, once, fetch pyro-ppl's wheels here (pure Python), in the repo's root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2
#
# Results: $OUT/gpu_conv.json (the benchmark's figures) and $OUT/gpu_conv.log (everything).
set -uo pipefail
OUT=${OUT:-out/gpu_conv}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # models/ and guides/ install as ppl_vae.models and ppl_vae.guides
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target /tmp/ppl_vae . && export PYTHONPATH=/tmp/ppl_vae${PYTHONPATH:+:$PYTHONPATH}
  $PY -c "import torch, jax, pyro, numpyro, ppl_vae.pyro, ppl_vae.numpyro; \
print('torch', torch.__version__, torch.cuda.get_device_name(0), '| jax', jax.__version__, \
jax.devices(), '| pyro', pyro.__version__, '| numpyro', numpyro.__version__)" || exit 1

  echo "== step and evaluation speed"
  (cd benchmarks && timeout 330 $PY throughput.py conv --device cuda --steps 5 --rounds 5 \
    --eval-images 2 --eval-samples 5000 --json "$OUT/gpu_conv.json") \
    || echo "benchmark: exit $?"

  echo "== GPU tests"
  timeout 100 $PY -m pytest -q -p no:cacheprovider -rs tests/test_conv.py \
    -k "gpu or float64 or causal or ancestral or window" || echo "tests: exit $?"
} 2>&1 | tee "$OUT/gpu_conv.log"
