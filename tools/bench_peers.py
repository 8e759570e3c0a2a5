#!/usr/bin/env python3
"""Times infnet next to its peers on the same weights and input, and prints one table.

    /opt/pt/bin/python tools/bench_peers.py --threads 2 --size 352 --batch 1 --iters 20

- the model: the published Inf-Net (tools/public_infnet.py, `build_model(None, seed)`: the public code with
  seeded random weights), fp32, eval mode;
- PyTorch eager: channels_last model and input, torch.set_num_threads(N), inference_mode;
- ONNX Runtime: the same model exported with torch.onnx.export (opset 17, TorchScript exporter), CPU
  provider, intra_op_num_threads=N, inter_op 1, ORT_ENABLE_ALL;
- infnet: the same state_dict written as safetensors, `infnet bench --json --device cpu` as a subprocess
  (built with `cargo build --release` first if the binary is missing).

Before timing, infnet's outputs on the same input (`infnet run`) are compared with PyTorch's, so the
table compares engines that compute the same thing. Percentiles use linear interpolation between order
statistics (numpy's default), as `infnet bench` does.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import public_infnet as P  # noqa: E402


def stats(samples_s, batch):
    a = np.asarray(samples_s) * 1e3
    med = float(np.percentile(a, 50))
    return dict(median_ms=med, p10_ms=float(np.percentile(a, 10)), p90_ms=float(np.percentile(a, 90)),
                images_per_s=batch / (med / 1e3))


def time_fn(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def infnet_binary(path):
    if path:
        return path
    exe = os.path.join(ROOT, "target", "release", "infnet")
    if not os.path.exists(exe):
        print("building infnet (cargo build --release) ...", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--bin", "infnet"], cwd=ROOT, check=True)
    return exe


def check_same_outputs(exe, weights, x, ref, tmp):
    """infnet run on x vs PyTorch's outputs: worst relative L2 over the five maps."""
    from safetensors.numpy import load_file, save_file
    xin, xout = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "y.safetensors")
    save_file({"input": x.numpy()}, xin)
    subprocess.run([exe, "run", "--weights", weights, "--input", xin, "--output", xout, "--device", "cpu"], check=True)
    got = load_file(xout)
    worst = 0.0
    for name, r in zip(P.OUTPUT_NAMES, ref):
        r = r.numpy().astype(np.float64)
        g = got[name].astype(np.float64)
        worst = max(worst, float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)))
    return worst


def ort_session(onnx_path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])


def ort_worker(onnx_path, xpath, threads, warmup, iters):
    """Child process: times ORT alone and prints the samples (seconds) as one JSON list."""
    sess = ort_session(onnx_path, threads)
    xn = np.load(xpath)
    print(json.dumps(time_fn(lambda: sess.run(None, {"input": xn}), warmup, iters)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="352", help="comma-separated input sides (multiples of 32)")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--infnet", default=None, help="infnet binary (default: target/release/infnet)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every engine this many times, alternating; report each engine's round with the lowest "
                         "median (on a shared machine this keeps a burst of foreign load from landing on one engine only)")
    ap.add_argument("--skip", default="", help="comma-separated peers to leave out: torch,ort")
    ap.add_argument("--ort-worker", nargs=2, metavar=("ONNX", "NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ort_worker:
        return ort_worker(*args.ort_worker, args.threads, args.warmup, args.iters)
    sizes = [int(s) for s in args.size.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    if args.rounds < 1 or args.iters < 1 or any(s <= 0 or s % 32 for s in sizes) or any(b < 1 for b in batches):
        sys.exit("--iters ≥ 1, sizes positive multiples of 32, batches ≥ 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    exe = infnet_binary(args.infnet)
    model = P.build_model(None, seed=args.seed)
    tmp = tempfile.mkdtemp(prefix="infnet-peers-")
    weights = os.path.join(tmp, "infnet.safetensors")
    P.save_state_dict(model, weights)
    model_cl = model.to(memory_format=torch.channels_last)

    rows = []
    for size in sizes:
        for batch in batches:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1))
            ref = P.forward(model, x)
            err = check_same_outputs(exe, weights, x, ref, tmp)
            print(f"{size}×{size} batch {batch}: infnet vs PyTorch outputs, worst relative L2 {err:.2e}", file=sys.stderr)
            runners = {}
            if "torch" not in skip:
                xc = x.contiguous(memory_format=torch.channels_last)

                def run_torch():
                    with torch.inference_mode():
                        return stats(time_fn(lambda: P.forward(model_cl, xc), args.warmup, args.iters), batch)
                runners["PyTorch eager (channels_last)"] = run_torch
            if "ort" not in skip:
                import onnxruntime as ort
                onnx_path = os.path.join(tmp, f"infnet_{size}_{batch}.onnx")
                with P.expand_for_any_width(), torch.no_grad():
                    torch.onnx.export(model, (x,), onnx_path, opset_version=17, dynamo=False,
                                      input_names=["input"], output_names=P.OUTPUT_NAMES)
                xpath = os.path.join(tmp, f"x_{size}_{batch}.npy")
                np.save(xpath, x.numpy())
                o = ort_session(onnx_path, args.threads).run(None, {"input": x.numpy()})
                e = max(float(np.linalg.norm(a - r.numpy()) / np.linalg.norm(r.numpy())) for a, r in zip(o, ref))
                print(f"{size}×{size} batch {batch}: ONNX Runtime vs PyTorch outputs, worst relative L2 {e:.2e}", file=sys.stderr)
                # In its own process, like infnet: ORT's pool threads keep spinning for a while after a run,
                # which would slow whatever this process times next.
                ort_cmd = [sys.executable, os.path.abspath(__file__), "--ort-worker", onnx_path, xpath,
                           "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup)]

                def run_ort(cmd=ort_cmd, b=batch):
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    return stats(json.loads(out.strip().splitlines()[-1]), b)
                runners["ONNX Runtime (CPU)"] = run_ort
            cmd = [exe, "bench", "--json", "--device", "cpu", "--weights", weights, "--size", str(size), "--batch", str(batch),
                   "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]

            def run_infnet():
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                j = json.loads(out.strip().splitlines()[-1])
                return {k: j[k] for k in ("median_ms", "p10_ms", "p90_ms", "images_per_s")}
            runners["infnet"] = run_infnet
            res = {}
            for rnd in range(args.rounds):
                for name, fn in runners.items():
                    r = fn()
                    print(f"  round {rnd + 1} {name}: median {r['median_ms']:.1f} ms", file=sys.stderr)
                    if name not in res or r["median_ms"] < res[name]["median_ms"]:
                        res[name] = r
            rows.append((size, batch, res))

    best = f"; best of {args.rounds} alternating rounds" if args.rounds > 1 else ""
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; threads {args.threads}; iters {args.iters} "
          f"(warm-up {args.warmup}){best}; torch {torch.__version__}", end="")
    try:
        import onnxruntime as ort
        print(f", onnxruntime {ort.__version__}")
    except ImportError:
        print()
    hdr = f"| {'size':>4} | {'batch':>5} | {'engine':<30} | {'median ms':>9} | {'p10':>8} | {'p90':>8} | {'images/s':>8} | {'infnet/peer':>11} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for size, batch, res in rows:
        mine = res["infnet"]["median_ms"]
        for name, r in res.items():
            ratio = "" if name == "infnet" else f"{mine / r['median_ms']:.2f}×"
            print(f"| {size:>4} | {batch:>5} | {name:<30} | {r['median_ms']:9.1f} | {r['p10_ms']:8.1f} | {r['p90_ms']:8.1f} | "
                  f"{r['images_per_s']:8.2f} | {ratio:>11} |")


if __name__ == "__main__":
    main()
