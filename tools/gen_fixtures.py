"""Generates the PyTorch golden values that the Rust tests compare against.

    python tools/gen_fixtures.py                 # ops + tiny model → tests/fixtures/ (committed)
    python tools/gen_fixtures.py full DIR        # published-size model at 352×352 → DIR (used by tests/full_size.rs)

Every value comes from PyTorch itself; the code that produced each one is quoted next to it here:

ops.safetensors — for each case `NAME`, inputs `NAME.x` (and more) and the output `NAME.y`:
  conv cases:      y = F.conv2d(x, w, b, stride=s, padding=(ph, pw), dilation=d)        cfg = [s, ph, pw, d]
  conv_bn:         y = bn(conv(x)) with nn.Conv2d(bias=False) + nn.BatchNorm2d in eval mode (eps 1e-5)
  maxpool:         y = F.max_pool2d(x, 3, 2, 1)
  avgpool3s2:      y = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)(x)   (Bottle2neck 'stage' pool)
  avgpool3s1:      y = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)(x)
  avgpool2ceil:    y = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)(x)  (downsample path)
  up_ac2:          y = nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)(x)  (decoder)
  interp_S:        y = F.interpolate(x, scale_factor=S, mode='bilinear')   (align_corners=False; S in cfg)
  reverse_att:     y = (-1 * torch.sigmoid(m) + 1).expand(-1, C, -1, -1).mul(x)
tiny.safetensors — weights of the reduced variant TINY (tools/public_infnet.py) built from the public
  classes, with `num_batches_tracked`; tiny_io.safetensors — `input` (2×3×64×96, randn) and the five maps of
  `lateral_map_5, lateral_map_4, lateral_map_3, lateral_map_2, lateral_edge = model(input)` (public forward).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import public_infnet as P  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def meta():
    _, _, commit = P.load_public()
    return {"torch": torch.__version__, "public_inf_net_commit": commit, "generator": "tools/gen_fixtures.py"}


def ops(path):
    g = torch.Generator().manual_seed(1234)
    rnd = lambda *s: torch.randn(*s, generator=g)
    t = {}
    # (name, cin, cout, kh, kw, stride, pad_h, pad_w, dil): every conv geometry Inf-Net uses.
    convs = [
        ("conv1x1", 5, 7, 1, 1, 1, 0, 0, 1),
        ("conv3x3", 6, 5, 3, 3, 1, 1, 1, 1),
        ("conv3x3s2", 5, 9, 3, 3, 2, 1, 1, 1),
        ("conv1x3", 7, 6, 1, 3, 1, 0, 1, 1),
        ("conv3x1", 6, 7, 3, 1, 1, 1, 0, 1),
        ("conv1x5", 5, 6, 1, 5, 1, 0, 2, 1),
        ("conv5x1", 6, 5, 5, 1, 1, 2, 0, 1),
        ("conv1x7", 5, 6, 1, 7, 1, 0, 3, 1),
        ("conv7x1", 6, 5, 7, 1, 1, 3, 0, 1),
        ("conv_dil3", 5, 6, 3, 3, 1, 3, 3, 3),
        ("conv_dil5", 6, 5, 3, 3, 1, 5, 5, 5),
        ("conv_dil7", 5, 6, 3, 3, 1, 7, 7, 7),
        ("conv5x5", 9, 7, 5, 5, 1, 2, 2, 1),
        ("conv3x3s2_stem", 3, 8, 3, 3, 2, 1, 1, 1),
    ]
    for name, cin, cout, kh, kw, s, ph, pw, d in convs:
        x, w, b = rnd(3, cin, 13, 17), rnd(cout, cin, kh, kw) * 0.3, rnd(cout)
        t[f"{name}.x"], t[f"{name}.w"], t[f"{name}.b"] = x, w, b
        t[f"{name}.cfg"] = torch.tensor([s, ph, pw, d], dtype=torch.float32)
        t[f"{name}.y"] = F.conv2d(x, w, b, stride=s, padding=(ph, pw), dilation=d)
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        conv.weight.copy_(rnd(5, 6, 3, 3) * 0.3)
        bn.weight.copy_(1 + 0.3 * rnd(5)); bn.bias.copy_(0.2 * rnd(5))
        bn.running_mean.copy_(0.3 * rnd(5)); bn.running_var.copy_(1 + 0.4 * rnd(5).abs())
    bn.eval()
    x = rnd(3, 6, 13, 17)
    t["conv_bn.x"], t["conv_bn.w"] = x, conv.weight.detach().clone()
    for k in ["weight", "bias", "running_mean", "running_var"]:
        t[f"conv_bn.bn_{k}"] = getattr(bn, k).detach().clone()
    with torch.no_grad():
        t["conv_bn.y"] = bn(conv(x))

    x = rnd(3, 5, 13, 17)
    t["maxpool.x"], t["maxpool.y"] = x, F.max_pool2d(x, 3, 2, 1)
    t["avgpool3s2.x"], t["avgpool3s2.y"] = x, nn.AvgPool2d(kernel_size=3, stride=2, padding=1)(x)
    t["avgpool3s1.x"], t["avgpool3s1.y"] = x, nn.AvgPool2d(kernel_size=3, stride=1, padding=1)(x)
    t["avgpool2ceil.x"], t["avgpool2ceil.y"] = x, nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)(x)

    x = rnd(3, 4, 11, 13)
    t["up_ac2.x"], t["up_ac2.y"] = x, nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(x)
    # Scale factors Inf-Net uses, on sizes that are not multiples of the factor.
    for tag, s, shape in [("0.25", 0.25, (3, 2, 45, 37)), ("0.125", 1 / 8, (3, 2, 45, 37)), ("0.5", 0.5, (3, 3, 13, 17)),
                          ("2", 2, (3, 3, 13, 17)), ("4", 4, (3, 1, 7, 9)), ("8", 8, (3, 1, 5, 7)),
                          ("16", 16, (3, 1, 3, 5)), ("32", 32, (3, 1, 3, 4))]:
        x = rnd(*shape)
        t[f"interp_{tag}.x"], t[f"interp_{tag}.y"] = x, F.interpolate(x, scale_factor=s, mode="bilinear")
        t[f"interp_{tag}.cfg"] = torch.tensor([s], dtype=torch.float64).float()

    m, x = rnd(3, 1, 7, 9) * 2, rnd(3, 5, 7, 9)
    t["reverse_att.m"], t["reverse_att.x"] = m, x
    t["reverse_att.y"] = (-1 * torch.sigmoid(m) + 1).expand(-1, 5, -1, -1).mul(x)
    save_file({k: v.detach().clone().contiguous() for k, v in t.items()}, path, metadata=meta())


def model_fixture(spec, weights_path, io_path, shape, seed):
    model = P.build_model(spec, seed=seed)
    P.save_state_dict(model, weights_path)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))
    outs = P.forward(model, x)
    t = {"input": x}
    t.update({n: o.contiguous() for n, o in zip(P.OUTPUT_NAMES, outs)})
    save_file(t, io_path, metadata=meta())


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if len(sys.argv) >= 2 and sys.argv[1] == "full":
        out = sys.argv[2]
        os.makedirs(out, exist_ok=True)
        model_fixture(None, os.path.join(out, "full.safetensors"), os.path.join(out, "full_io.safetensors"), (1, 3, 352, 352), 5)
        print(f"wrote {out}/full.safetensors and full_io.safetensors (torch {torch.__version__}, public commit {meta()['public_inf_net_commit']})")
        return
    out = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    ops(os.path.join(out, "ops.safetensors"))
    model_fixture(P.TINY, os.path.join(out, "tiny.safetensors"), os.path.join(out, "tiny_io.safetensors"), (2, 3, 64, 96), 3)
    print(f"wrote {out} (torch {torch.__version__}, public commit {meta()['public_inf_net_commit']})")


if __name__ == "__main__":
    main()
