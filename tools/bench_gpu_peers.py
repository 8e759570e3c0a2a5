#!/usr/bin/env python3
"""Times infnet's CUDA engine next to the public PyTorch model on the same GPU, weights and input, and prints
one table with ratios. Run by tools/gpu_check.sh on the GPU machine:

    python3 tools/bench_gpu_peers.py --infnet .gpu/bin/infnet --batch 1,8,64 --size 352

- the model: the published Inf-Net (tools/public_infnet.py `build_model(None, seed)`: public code, seeded
  random weights), fp32, eval mode, on the GPU;
- PyTorch eager fp32 (NCHW), eager channels_last, and torch.compile (default mode) where it works; timed with
  torch.cuda.synchronize() around each forward, peak memory from torch.cuda.max_memory_allocated();
- infnet: the same state_dict as safetensors, `infnet bench --json --device cuda` (CUDA-event timing of the
  captured graph, peak device memory) as a subprocess.
Before timing, `infnet run --device cuda` on batch 1 is compared with PyTorch's outputs on the GPU.
`--device cpu` runs the same script on the CPU (a smoke test of the script where no GPU exists).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import public_infnet as P  # noqa: E402
from bench_peers import infnet_binary, stats  # noqa: E402


def time_forward(fn, device, warmup, iters):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def worst_rel_l2(got, ref):
    worst = 0.0
    for name, r in zip(P.OUTPUT_NAMES, ref):
        r = r.detach().cpu().numpy().astype(np.float64)
        g = got[name].astype(np.float64)
        worst = max(worst, float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=352)
    ap.add_argument("--batch", default="1,8,64")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--infnet", default=None)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    batches = [int(b) for b in a.batch.split(",")]
    exe = infnet_binary(a.infnet)
    tmp = tempfile.mkdtemp(prefix="infnet-gpu-peers-")
    model = P.build_model(None, seed=a.seed)
    weights = os.path.join(tmp, "infnet.safetensors")
    P.save_state_dict(model, weights)
    model = model.to(dev)
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"

    from safetensors.numpy import load_file, save_file
    x1 = torch.randn(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(a.seed + 1))
    save_file({"input": x1.numpy()}, os.path.join(tmp, "x.safetensors"))
    subprocess.run([exe, "run", "--device", dev, "--weights", weights, "--input", os.path.join(tmp, "x.safetensors"),
                    "--output", os.path.join(tmp, "y.safetensors")], check=True)
    ref = P.forward(model, x1.to(dev))
    print(f"infnet --device {dev} vs PyTorch on {gpu}, batch 1: worst relative L2 {worst_rel_l2(load_file(os.path.join(tmp, 'y.safetensors')), ref):.2e}",
          file=sys.stderr)

    peers = {"PyTorch eager fp32": model}
    peers["PyTorch eager channels_last"] = P.build_model(None, seed=a.seed).to(dev).to(memory_format=torch.channels_last)
    if not a.no_compile:
        try:
            peers["PyTorch torch.compile"] = torch.compile(model)
        except Exception as e:  # noqa: BLE001 — report and go on without it
            print(f"torch.compile unavailable: {e}", file=sys.stderr)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, a.size, a.size, device=dev)
        res = {}
        for name, m in peers.items():
            xi = x.contiguous(memory_format=torch.channels_last) if "channels_last" in name else x
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                with torch.inference_mode(), P.expand_for_any_width():
                    r = stats(time_forward(lambda: m(xi), dev, a.warmup, a.iters), b)
            except Exception as e:  # noqa: BLE001
                print(f"{name} batch {b} failed: {e}", file=sys.stderr)
                continue
            r["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else float("nan")
            res[name] = r
        out = subprocess.run([exe, "bench", "--json", "--device", dev, "--weights", weights, "--size", str(a.size),
                              "--batch", str(b), "--iters", str(a.iters), "--warmup", str(a.warmup)],
                             check=True, capture_output=True, text=True).stdout
        j = json.loads(out.strip().splitlines()[-1])
        res["infnet"] = dict(median_ms=j["median_ms"], p10_ms=j["p10_ms"], p90_ms=j["p90_ms"],
                             images_per_s=j["images_per_s"],
                             peak_mib=(j.get("device_memory_bytes") or 0) / 2**20 or float("nan"))
        rows.append((b, res))
    print(f"device: {gpu}; size {a.size}; iters {a.iters} (warm-up {a.warmup}); torch {torch.__version__}")
    print(f"| batch | engine                        | median ms |      p10 |      p90 | images/s | peak MiB | infnet/peer |")
    print(f"|-------|-------------------------------|-----------|----------|----------|----------|----------|-------------|")
    for b, res in rows:
        mine = res["infnet"]["median_ms"]
        for name, r in res.items():
            ratio = "" if name == "infnet" else f"{mine / r['median_ms']:.2f}×"
            print(f"| {b:>5} | {name:<29} | {r['median_ms']:9.2f} | {r['p10_ms']:8.2f} | {r['p90_ms']:8.2f} | "
                  f"{r['images_per_s']:8.1f} | {r['peak_mib']:8.0f} | {ratio:>11} |")


if __name__ == "__main__":
    main()
