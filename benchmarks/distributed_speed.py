"""Data-parallel overhead: the step time of ``fit(..., distributed=True)`` on W ranks or
devices against one, and the bytes each step communicates.

Run (about 4 minutes on a 2-core CPU)::

    python benchmarks/distributed_speed.py --json distributed_speed.json
    python benchmarks/distributed_speed.py --device cuda --devices 1 2 4 8   # a GPU host

Network: the paper's (784-300-300-40 gated MLPs, VampPrior with K = 500, Bernoulli, Adam
5e-4), global minibatch ``--batch-size`` (100) split over the W shards (strong scaling),
``--num-train`` synthetic binary images (no validation set), ``--epochs`` epochs; the step
time is the median over epochs 2.. of the epoch's seconds (``fit``'s history) over its
steps, so it contains everything a step does: the ELBO on the shard, backward, the
all-reduce, the divergence checks, Adam.

- **pyro**: ``torchrun --standalone --nproc_per_node W`` of this script (gloo on a CPU, one
  thread per process; nccl on CUDA, one device per process). On a CPU also one process with
  W threads: the single-process run that uses the same cores. The all-reduce is also timed
  alone (median of 20, on a bucket of the step's size). Bytes per step: the one
  all-reduce bucket (every gradient, a has-gradient flag per parameter, the loss and a
  failure count, float32) and what each rank sends of it in a ring all-reduce,
  2 (W - 1) / W of the bucket.
- **numpyro**: one process over W devices (``XLA_FLAGS=--xla_force_host_platform_device_count=W``
  on a CPU, ``CUDA_VISIBLE_DEVICES`` on a GPU). Bytes per step: the operands of the
  collectives in XLA's compiled epoch (parsed from its HLO; the step body is compiled once
  and runs once per step).

Scaling efficiency is ``t_1 / (W * t_W)``. The machine's load average is recorded: on a
shared machine the numbers move with it.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

K, LATENT, HIDDEN, INPUT, LR = 500, 40, (300, 300), 784, 5e-4


def _data(num_train):
    rng = np.random.default_rng(0)
    return (rng.random((num_train, INPUT)) < rng.random(INPUT) * 0.5).astype(np.float32)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _step_time(history, num_steps):
    seconds = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    return statistics.median(seconds) / num_steps


# ---------------------------------------------------------------------------------- workers
def worker_pyro(args):
    import pyro
    import torch

    import ppl_vae.pyro as pv
    import ppl_vae.pyro.distributed as pd
    from ppl_vae.guides.vae_pyro import vae_guide
    from ppl_vae.models.vae_pyro import vae_model

    distributed = "RANK" in os.environ
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pd.local_device(args.device)
    if distributed:
        pd.initialize(device)
    pyro.set_rng_seed(0)
    encoder, decoder = pv.Encoder(INPUT, LATENT, HIDDEN), pv.Decoder(LATENT, INPUT, HIDDEN)
    prior = pv.LearnedVampPrior(encoder, K, INPUT)
    for module in (encoder, decoder, prior):
        module.to(device)
    model = partial(vae_model, decoder=decoder, prior=prior)
    guide = partial(vae_guide, encoder=encoder)
    result = pv.fit(model, guide, _data(args.num_train), num_epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=LR, device=device,
                    progress=False, distributed=distributed)
    world = pd.num_shards()
    params = list(pyro.get_param_store().values())
    bucket = 4 * (sum(p.numel() for p in params) + len(params) + 2) if world > 1 else 0
    all_reduce = None
    if world > 1:  # the communication alone: the step's all-reduce of a bucket that size
        flat = torch.zeros(bucket // 4, device=device)
        times = []
        for _ in range(20):
            pd.barrier()
            t0 = time.perf_counter()
            pd.all_reduce_sum(flat)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        all_reduce = statistics.median(times)
    if pd.is_main_process():
        steps = -(-args.num_train // args.batch_size)
        print("RESULT " + json.dumps({
            "backend": "pyro", "shards": world, "threads_per_shard": torch.get_num_threads(),
            "step_seconds": _step_time(result.history, steps),
            "all_reduce_seconds": all_reduce,
            "bytes_per_step": {"all_reduce_bucket": bucket,
                               "sent_per_rank": int(bucket * 2 * (world - 1) / world)},
            "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else _cpu_name()),
            "epoch_seconds": [h["seconds"] for h in result.history]}), flush=True)


def _collective_bytes(hlo):
    """Bytes of the results of each kind of collective in a compiled HLO module."""
    sizes = {"f32": 4, "f64": 8, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1}
    op = re.compile(r"^\s*\S+ = (.*?) (all-reduce|all-gather|reduce-scatter|collective-permute|"
                    r"all-to-all)(?:-start)?\(")
    totals = {}
    for line in hlo.splitlines():
        match = op.match(line)
        if match is None:
            continue
        types, kind = match.groups()
        for dtype, dims in re.findall(r"\b(f32|f64|s32|u32|bf16|f16|pred)\[([\d,]*)\]", types):
            numel = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            totals[kind] = totals.get(kind, 0) + numel * sizes[dtype]
    return totals


def worker_numpyro(args):
    import jax
    import jax.numpy as jnp
    import optax
    from jax import random
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    import ppl_vae.numpyro as pv
    import ppl_vae.numpyro.distributed as pd
    from ppl_vae.guides.vae_numpyro import vae_guide
    from ppl_vae.models.vae_numpyro import vae_model
    from ppl_vae.numpyro.training import _annealed, _epoch_fn

    world = len(jax.devices())
    k = random.split(random.PRNGKey(0), 4)
    encoder = pv.Encoder(INPUT, LATENT, HIDDEN, rng_key=k[0])
    decoder = pv.Decoder(LATENT, INPUT, HIDDEN, rng_key=k[1])
    prior = pv.LearnedVampPrior(encoder, K, INPUT, rng_key=k[2])
    model = partial(vae_model, decoder=decoder, prior=prior)
    guide = partial(vae_guide, encoder=encoder)
    data = _data(args.num_train)
    result = pv.fit(k[3], model, guide, data, num_epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=LR, progress=False,
                    distributed=world > 1)
    collectives = {}
    if world > 1:  # what XLA communicates: the collectives of the same compiled epoch
        svi = SVI(_annealed(model), _annealed(guide), optax_to_numpyro(optax.adam(LR)),
                  Trace_ELBO())  # fit's programs: under the KL warm-up handler
        x = jnp.asarray(data)
        state = svi.init(k[3], x[:args.batch_size], _kl_weight=jnp.asarray(1.0))
        mesh = pd.mesh()
        state, x = pd.replicate((state, x), mesh)
        fn = _epoch_fn(svi, args.num_train, args.batch_size, 1e9, False, mesh)
        hlo = fn.lower(state, k[3], jnp.asarray(1.0), x).compile().as_text()
        collectives = _collective_bytes(hlo)
    steps = -(-args.num_train // args.batch_size)
    print("RESULT " + json.dumps({
        "backend": "numpyro", "shards": world, "step_seconds": _step_time(result.history, steps),
        "bytes_per_step": collectives,
        "device": _cpu_name() if jax.devices()[0].platform == "cpu"
        else jax.devices()[0].device_kind,
        "epoch_seconds": [h["seconds"] for h in result.history]}), flush=True)


# ----------------------------------------------------------------------------------- driver
def _launch(cmd, env):
    env = dict(os.environ, **env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", choices=["pyro", "numpyro", "both"], default="both")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2],
                   help="numbers of ranks / devices to time")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=100, help="the global minibatch")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", choices=["pyro", "numpyro"], default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "pyro":
        return worker_pyro(args)
    if args.worker == "numpyro":
        return worker_numpyro(args)

    script = str(Path(__file__).resolve())
    common = ["--batch-size", str(args.batch_size), "--num-train", str(args.num_train),
              "--epochs", str(args.epochs), "--device", args.device]
    cpu = args.device == "cpu"
    runs = []
    threads = ["--threads", "1"] if cpu else []
    for w in args.devices:
        if args.backend in ("pyro", "both"):
            if w == 1:  # one process, no process group
                cmd = [sys.executable, script, "--worker", "pyro", *threads, *common]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", str(w), script, "--worker", "pyro", *threads,
                       *common]
            runs.append(_launch(cmd, {"OMP_NUM_THREADS": "1"} if cpu else {}))
            print(json.dumps(runs[-1]), flush=True)
            if cpu and w > 1:  # the single process that uses the same cores
                runs.append(_launch([sys.executable, script, "--worker", "pyro", "--threads",
                                     str(w), *common], {"OMP_NUM_THREADS": str(w)}))
                print(json.dumps(runs[-1]), flush=True)
        if args.backend in ("numpyro", "both"):
            env = ({"XLA_FLAGS": f"--xla_force_host_platform_device_count={w}",
                    "JAX_PLATFORMS": "cpu"} if cpu else
                   {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(w)))})
            runs.append(_launch([sys.executable, script, "--worker", "numpyro", *common], env))
            print(json.dumps(runs[-1]), flush=True)
    for backend in ("pyro", "numpyro"):
        base = [r for r in runs if r["backend"] == backend and r["shards"] == 1
                and r.get("threads_per_shard", 1) == 1]
        for r in runs:  # shards of one thread each (or one GPU each) against one of them
            if r["backend"] == backend and base and r.get("threads_per_shard", 1) == 1:
                r["efficiency"] = base[0]["step_seconds"] / (r["shards"] * r["step_seconds"])
    report = {"machine": {"cpu": _cpu_name(),
                          "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                          "when": time.strftime("%Y-%m-%d %H:%M")},
              "settings": vars(args), "runs": runs}
    print()
    print("| backend | shards | threads each | step ms | all-reduce ms | efficiency | "
          "bytes per step |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        comm = r.get("all_reduce_seconds")
        print(f"| {r['backend']} | {r['shards']} | {r.get('threads_per_shard', '-')} | "
              f"{1e3 * r['step_seconds']:.1f} | {'-' if comm is None else f'{1e3 * comm:.1f}'} "
              f"| {r.get('efficiency', float('nan')):.2f} | {json.dumps(r['bytes_per_step'])} |")
    print(f"\ndevice: {runs[0]['device']}; load average {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
