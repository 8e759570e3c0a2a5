#!/usr/bin/env python3
"""Training speed and peak memory of infnet next to PyTorch CPU training of the same model, one table.

    /opt/pt/bin/python tools/bench_train_peers.py --threads 2 --size 352 --batch 2,4 --steps 3 --rounds 2

- the model: the published Inf-Net (tools/public_infnet.py, `build_model(None, seed)`: the public code with
  seeded random weights), fp32, train mode; its state_dict is written as safetensors for infnet;
- the batch: images N×3×S×S ~ N(0, 1) (already "normalised"), masks one random ellipse per image and
  edges their 4-neighbour boundary (tools/gen_train_fixtures.py `batch`), the same tensors for both;
- one step = what the public MyTrain_LungInf.py does per scale: zero_grad, forward, the public loss
  (BCEWithLogits on lateral_edge + the public `joint_loss` on the four maps, imported unmodified),
  backward, `clip_gradient(optimizer, 0.5)` (public utils), Adam(lr 1e-4) step;
- PyTorch: torch.set_num_threads(N), interop threads 1, in its own subprocess;
- infnet: `infnet bench-train --json` in its own subprocess (built with `cargo build --release` first if
  the binary is missing);
- each engine runs `--warmup` untimed steps then `--steps` timed ones and reports the median; engines
  alternate over `--rounds` rounds (the machine may be shared) and each keeps its best median. Peak RSS is
  the process's high-water mark (ru_maxrss / VmHWM), the largest over rounds.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_peers import cpu_model, infnet_binary  # noqa: E402  (one copy of the machine and binary lookups)


def torch_worker(a):
    """One PyTorch measurement; prints one JSON line. Runs in a fresh process so ru_maxrss is its own."""
    import torch
    from safetensors.torch import load_file
    import gen_train_fixtures as G
    import public_infnet as P

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    T, U = G.public_training_module()
    model = P.build_model(None, a.seed)
    model.load_state_dict(load_file(a.weights_file), strict=True)
    model.train()
    b = load_file(a.batch_file)
    images, gts, edges = b["images"], b["masks"], b["edges"]
    optimizer = torch.optim.Adam(model.parameters(), a.lr)
    times, losses = [], []
    for k in range(a.warmup + a.steps):
        t = time.perf_counter()
        optimizer.zero_grad()
        outs = model(images)
        loss = G.public_loss(T, outs, gts, edges)
        loss.backward()
        U.clip_gradient(optimizer, 0.5)
        optimizer.step()
        dt = time.perf_counter() - t
        if k >= a.warmup:
            times.append(dt)
        losses.append(float(loss))
    times_sorted = sorted(times)
    n = len(times_sorted)
    med = times_sorted[n // 2] if n % 2 else 0.5 * (times_sorted[n // 2 - 1] + times_sorted[n // 2])
    print(json.dumps(dict(engine="pytorch", batch=images.shape[0], threads=torch.get_num_threads(), step_s=times,
                          median_s=med, images_per_s=images.shape[0] / med,
                          peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, losses=losses)))


def last_json(out):
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in output:\n{out}")


def run_pytorch(a, weights, batch_file):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--threads", str(a.threads),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--seed", str(a.seed), "--lr", str(a.lr),
           "--weights-file", weights, "--batch-file", batch_file]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    return last_json(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)


def run_infnet(a, exe, weights, batch_file):
    cmd = [exe, "bench-train", "--weights", weights, "--batch", batch_file, "--threads", str(a.threads),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--lr", str(a.lr), "--json"]
    return last_json(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=352)
    ap.add_argument("--batch", default="2,4", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; each engine keeps its best")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--engines", default="pytorch,infnet")
    ap.add_argument("--infnet", help="infnet binary (default: target/release/infnet, built if missing)")
    ap.add_argument("--json", help="also write all results here")
    # Internal: the PyTorch measurement subprocess.
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights-file", help=argparse.SUPPRESS)
    ap.add_argument("--batch-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        return torch_worker(a)

    import torch
    from safetensors.torch import save_file
    import gen_train_fixtures as G
    import public_infnet as P

    engines = [e for e in a.engines.split(",") if e]
    batches = [int(b) for b in a.batch.split(",") if b]
    exe = infnet_binary(a.infnet) if "infnet" in engines else None
    tmp = tempfile.mkdtemp(prefix="infnet-bench-train-")
    weights = os.path.join(tmp, "weights.safetensors")
    P.save_state_dict(P.build_model(None, a.seed), weights)
    files = {}
    for n in batches:
        g = torch.Generator().manual_seed(1000 + n)
        images, masks, edges = G.batch(n, a.size, g)
        files[n] = os.path.join(tmp, f"batch{n}.safetensors")
        save_file({"images": images.contiguous(), "masks": masks.contiguous(), "edges": edges.contiguous()}, files[n])

    best = {}
    for r in range(a.rounds):
        for n in batches:
            order = engines if r % 2 == 0 else engines[::-1]
            for e in order:
                res = run_pytorch(a, weights, files[n]) if e == "pytorch" else run_infnet(a, exe, weights, files[n])
                print(f"round {r + 1} {e:8s} batch {n}: median {res['median_s']:.3f} s/step, "
                      f"{res['images_per_s']:.3f} images/s, peak RSS {res['peak_rss_mib']:.0f} MiB, "
                      f"losses {[round(x, 4) for x in res['losses']]}", file=sys.stderr, flush=True)
                k = (e, n)
                if k not in best or res["median_s"] < best[k]["median_s"]:
                    rss = max(res["peak_rss_mib"], best[k]["peak_rss_mib"]) if k in best else res["peak_rss_mib"]
                    best[k] = dict(res, peak_rss_mib=rss)
                else:
                    best[k]["peak_rss_mib"] = max(best[k]["peak_rss_mib"], res["peak_rss_mib"])

    print(f"# {cpu_model()}, {a.threads} threads, {a.size}×{a.size}, torch {torch.__version__}, "
          f"{a.warmup} warm-up + {a.steps} timed steps, best of {a.rounds} alternating rounds")
    print("| engine | batch | median s/step | images/s | peak RSS MiB | infnet/PyTorch images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in batches:
        for e in engines:
            if (e, n) not in best:
                continue
            b = best[(e, n)]
            ratio = ""
            if e == "infnet" and ("pytorch", n) in best:
                ratio = f"{b['images_per_s'] / best[('pytorch', n)]['images_per_s']:.2f}"
            print(f"| {e} | {n} | {b['median_s']:.3f} | {b['images_per_s']:.3f} | {b['peak_rss_mib']:.0f} | {ratio} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([dict(v, engine=k[0], batch=k[1]) for k, v in best.items()], f, indent=1)


if __name__ == "__main__":
    main()
