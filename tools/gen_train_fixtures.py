"""Generates the PyTorch golden values for the training tests (tests/train_*.rs).

    /opt/pt/bin/python tools/gen_train_fixtures.py        # → tests/fixtures/train_ops.safetensors, train_step.safetensors

Every value comes from PyTorch autograd; the code behind each case is quoted here. For an op case NAME,
the inputs are stored as `NAME.<input>`, a random upstream gradient as `NAME.dy`, the output as `NAME.y`,
and `NAME.d<input>` = the gradient of `(y * dy).sum()` with respect to that input. All float32, batch 3,
odd sizes.

train_ops.safetensors
  conv_<geom>:  y = F.conv2d(x, w, b, stride=s, padding=(ph, pw), dilation=d)      cfg = [s, ph, pw, d, has_bias]
  bn, bn_relu:  bn = nn.BatchNorm2d(C); bn.train(); y = bn(x)  (resp. F.relu(bn(x)));
                running_mean/running_var *before* as `.rm0`/`.rv0`, after as `.rm`/`.rv`
  relu:         y = F.relu(x)                 sigmoid: y = torch.sigmoid(x)
  add_relu:     y = F.relu(a + b)             mul:     y = a * b
  maxpool:      y = F.max_pool2d(x, 3, 2, 1)
  avgpool3s1:   y = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)(x)
  avgpool3s2:   y = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)(x)
  avgpool2ceil: y = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)(x)
  up_ac2:       y = nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)(x)
  ac_size:      y = F.interpolate(x, size=(13, 6), mode='bilinear', align_corners=True)   (multi-scale rescale)
  interp_S:     y = F.interpolate(x, scale_factor=S, mode='bilinear')                   cfg = [S]
  reverse_att:  y = (-1 * torch.sigmoid(m) + 1).expand(-1, C, -1, -1).mul(x)
  joint_loss:   loss = joint_loss(pred, mask) — the function imported from the public MyTrain_LungInf.py;
                `.loss` and `.dpred` = its gradient
  edge_bce:     loss = torch.nn.BCEWithLogitsLoss()(pred, edges)  (the public script's `BCE`)

train_step.safetensors — the reduced variant TINY with the weights of tests/fixtures/tiny.safetensors
  (tools/public_infnet.py, `build_model(TINY, seed=3)`), one public training step:
      model.train()
      lateral_map_5, lateral_map_4, lateral_map_3, lateral_map_2, lateral_edge = model(images)
      loss = BCE(lateral_edge, edges) + joint_loss(lateral_map_2, gts) + joint_loss(lateral_map_3, gts)
           + joint_loss(lateral_map_4, gts) + joint_loss(lateral_map_5, gts)
      loss.backward()
  stores `images` (2×3×64×64), `masks`, `edges`, `loss`, `grad.<key>` for every parameter, and the BN running
  statistics after the step as `bn_after.<key>`. Then the public recipe's inner loop on one batch at base
  size 96 (`adam.*`): for rate in [0.75, 1, 1.25]: trainsize = int(round(96*rate/32)*32), images / gts /
  edges resized with F.upsample(..., size=(trainsize, trainsize), mode='bilinear', align_corners=True) when
  rate != 1, zero_grad, forward, the loss above, backward, clip_gradient(optimizer, 0.5) (public utils),
  optimizer.step() with torch.optim.Adam(model.parameters(), 1e-4); stores the batch as `adam.images` etc.,
  the three losses as `adam.losses`, each parameter's change over the three steps as `adam.delta.<key>`
  (float16: the changes are ~1e-4, so this keeps ~1e-7 absolute) and the running statistics after them as
  `adam.after.<key>`. Batches are rounded to float16 values and stored as float16 (exact).
"""
import os
import subprocess
import sys
import tempfile
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import public_infnet as P  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def public_training_module():
    """Imports the public MyTrain_LungInf.py (unmodified) for its `joint_loss`, and Code.utils.utils for
    `clip_gradient` / `adjust_lr`. `thop` (FLOP counting, imported at the top of utils.py, unused here) is
    stubbed when absent."""
    P.load_public()
    if "thop" not in sys.modules:
        try:
            import thop  # noqa: F401
        except ImportError:
            stub = types.ModuleType("thop")
            stub.profile = stub.clever_format = lambda *a, **k: None
            sys.modules["thop"] = stub
    repo = os.environ.get("INFNET_PUBLIC_REPO")
    if repo:
        sys.path.insert(0, repo)
    else:
        git = os.environ.get("INFNET_PUBLIC_GIT", P.DEFAULT_GIT)
        root = tempfile.mkdtemp(prefix="infnet-public-train-")
        tar = subprocess.check_output(["git", "--git-dir", git, "archive", "HEAD", "MyTrain_LungInf.py"])
        subprocess.run(["tar", "-x", "-C", root], input=tar, check=True)
        sys.path.insert(0, root)
    import MyTrain_LungInf as T
    import Code.utils.utils as U
    return T, U


def meta():
    _, _, commit = P.load_public()
    return {"torch": torch.__version__, "public_inf_net_commit": commit, "generator": "tools/gen_train_fixtures.py"}


def vjp(t, name, inputs, fn, g):
    """Stores inputs, y = fn(**inputs), a random dy, and d(y·dy)/d(input) for every float input."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves)
    dy = torch.randn(y.shape, generator=g)
    (y * dy).sum().backward()
    for k, v in inputs.items():
        t[f"{name}.{k}"] = v
        t[f"{name}.d{k}"] = leaves[k].grad
    t[f"{name}.y"], t[f"{name}.dy"] = y.detach(), dy


def blob_masks(n, h, w, g):
    """Binary masks with one random ellipse each, so the loss weights have real edges."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    out = torch.zeros(n, 1, h, w)
    for i in range(n):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
        ry, rx = 3 + torch.rand(2, generator=g) * torch.tensor([h / 3, w / 3])
        out[i, 0] = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()
    return out


def edges_of(masks):
    """1 where a mask pixel differs from a 4-neighbour (the same rule as the Rust data loader)."""
    m = F.pad(masks, (1, 1, 1, 1), mode="replicate")
    c = m[:, :, 1:-1, 1:-1]
    diff = (c != m[:, :, :-2, 1:-1]) | (c != m[:, :, 2:, 1:-1]) | (c != m[:, :, 1:-1, :-2]) | (c != m[:, :, 1:-1, 2:])
    return diff.float()


def ops(path, T):
    g = torch.Generator().manual_seed(4321)
    rnd = lambda *s: torch.randn(*s, generator=g)
    t = {}
    # (name, cin, cout, kh, kw, stride, pad_h, pad_w, dil, bias)
    convs = [
        ("conv1x1", 5, 4, 1, 1, 1, 0, 0, 1, False),
        ("conv3x3b", 4, 5, 3, 3, 1, 1, 1, 1, True),
        ("conv3x3s2", 3, 4, 3, 3, 2, 1, 1, 1, False),
        ("conv1x3", 4, 3, 1, 3, 1, 0, 1, 1, False),
        ("conv5x1", 3, 4, 5, 1, 1, 2, 0, 1, False),
        ("conv1x7", 4, 3, 1, 7, 1, 0, 3, 1, False),
        ("conv_dil5", 3, 4, 3, 3, 1, 5, 5, 5, False),
        ("conv5x5", 4, 3, 5, 5, 1, 2, 2, 1, False),
        ("conv1x1b", 5, 1, 1, 1, 1, 0, 0, 1, True),
    ]
    for name, cin, cout, kh, kw, s, ph, pw, d, has_b in convs:
        inputs = {"x": rnd(3, cin, 9, 11), "w": rnd(cout, cin, kh, kw) * 0.3}
        if has_b:
            inputs["b"] = rnd(cout)
        fn = lambda x, w, b=None, s=s, ph=ph, pw=pw, d=d: F.conv2d(x, w, b, stride=s, padding=(ph, pw), dilation=d)
        vjp(t, name, inputs, fn, g)
        t[f"{name}.cfg"] = torch.tensor([s, ph, pw, d, float(has_b)])
    for name, relu in [("bn", False), ("bn_relu", True)]:
        bn = nn.BatchNorm2d(5)
        with torch.no_grad():
            bn.running_mean.copy_(0.2 * rnd(5))
            bn.running_var.copy_(1 + 0.3 * rnd(5).abs())
        t[f"{name}.rm0"], t[f"{name}.rv0"] = bn.running_mean.clone(), bn.running_var.clone()
        bn.train()

        def fn(x, gamma, beta, bn=bn, relu=relu):
            y = F.batch_norm(x, bn.running_mean, bn.running_var, gamma, beta, training=True, momentum=0.1, eps=1e-5)
            return F.relu(y) if relu else y

        vjp(t, name, {"x": rnd(3, 5, 7, 9) * 2 + 0.5, "gamma": 1 + 0.3 * rnd(5), "beta": 0.2 * rnd(5)}, fn, g)
        t[f"{name}.rm"], t[f"{name}.rv"] = bn.running_mean.clone(), bn.running_var.clone()
    vjp(t, "relu", {"x": rnd(3, 2, 5, 7)}, lambda x: F.relu(x), g)
    vjp(t, "sigmoid", {"x": rnd(3, 2, 5, 7) * 2}, lambda x: torch.sigmoid(x), g)
    vjp(t, "add_relu", {"a": rnd(3, 2, 5, 7), "b": rnd(3, 2, 5, 7)}, lambda a, b: F.relu(a + b), g)
    vjp(t, "mul", {"a": rnd(3, 2, 5, 7), "b": rnd(3, 2, 5, 7)}, lambda a, b: a * b, g)
    vjp(t, "maxpool", {"x": rnd(3, 2, 9, 11)}, lambda x: F.max_pool2d(x, 3, 2, 1), g)
    vjp(t, "avgpool3s1", {"x": rnd(3, 2, 9, 11)}, lambda x: nn.AvgPool2d(kernel_size=3, stride=1, padding=1)(x), g)
    vjp(t, "avgpool3s2", {"x": rnd(3, 2, 9, 11)}, lambda x: nn.AvgPool2d(kernel_size=3, stride=2, padding=1)(x), g)
    vjp(t, "avgpool2ceil", {"x": rnd(3, 2, 9, 11)},
        lambda x: nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)(x), g)
    vjp(t, "up_ac2", {"x": rnd(3, 2, 5, 7)},
        lambda x: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(x), g)
    vjp(t, "ac_size", {"x": rnd(3, 2, 9, 11)},
        lambda x: F.interpolate(x, size=(13, 6), mode="bilinear", align_corners=True), g)
    for tag, s, shape in [("0.25", 0.25, (3, 1, 19, 23)), ("0.5", 0.5, (3, 2, 9, 11)), ("2", 2, (3, 2, 5, 7)),
                          ("4", 4, (3, 1, 5, 3)), ("8", 8, (3, 1, 3, 2))]:
        vjp(t, f"interp_{tag}", {"x": rnd(*shape)}, lambda x, s=s: F.interpolate(x, scale_factor=s, mode="bilinear"), g)
        t[f"interp_{tag}.cfg"] = torch.tensor([s])
    vjp(t, "reverse_att", {"m": rnd(3, 1, 5, 7) * 2, "x": rnd(3, 4, 5, 7)},
        lambda m, x: (-1 * torch.sigmoid(m) + 1).expand(-1, 4, -1, -1).mul(x), g)

    pred = (rnd(3, 1, 37, 41) * 2).requires_grad_(True)
    mask = blob_masks(3, 37, 41, g)
    loss = T.joint_loss(pred, mask)
    loss.backward()
    t["joint_loss.pred"], t["joint_loss.mask"] = pred.detach(), mask
    t["joint_loss.loss"], t["joint_loss.dpred"] = loss.detach().reshape(1), pred.grad
    pred = (rnd(3, 1, 37, 41) * 2).requires_grad_(True)
    edges = edges_of(blob_masks(3, 37, 41, g))
    loss = torch.nn.BCEWithLogitsLoss()(pred, edges)
    loss.backward()
    t["edge_bce.pred"], t["edge_bce.edges"] = pred.detach(), edges
    t["edge_bce.loss"], t["edge_bce.dpred"] = loss.detach().reshape(1), pred.grad
    save_file({k: v.detach().clone().float().contiguous() for k, v in t.items()}, path, metadata=meta())


def public_loss(T, outs, gts, edges):
    lateral_map_5, lateral_map_4, lateral_map_3, lateral_map_2, lateral_edge = outs
    BCE = torch.nn.BCEWithLogitsLoss()
    loss5 = T.joint_loss(lateral_map_5, gts)
    loss4 = T.joint_loss(lateral_map_4, gts)
    loss3 = T.joint_loss(lateral_map_3, gts)
    loss2 = T.joint_loss(lateral_map_2, gts)
    loss1 = BCE(lateral_edge, edges)
    return loss1 + loss2 + loss3 + loss4 + loss5


def batch(n, size, g):
    # Rounded to float16 so that the fixture can store the batch in half precision without changing it.
    images = torch.randn(n, 3, size, size, generator=g).half().float()
    masks = blob_masks(n, size, size, g)
    return images, masks, edges_of(masks)


def train_step(path, T, U):
    t = {}
    g = torch.Generator().manual_seed(99)
    model = P.build_model(P.TINY, seed=3)  # the weights of tests/fixtures/tiny.safetensors
    model.train()
    images, masks, edges = batch(2, 64, g)
    with P.expand_for_any_width():
        loss = public_loss(T, model(images), masks, edges)
    loss.backward()
    t["images"], t["masks"], t["edges"], t["loss"] = images, masks, edges, loss.detach().reshape(1)
    for k, p in model.named_parameters():
        t[f"grad.{k}"] = p.grad
    for k, v in model.state_dict().items():
        if "running" in k:
            t[f"bn_after.{k}"] = v

    model = P.build_model(P.TINY, seed=3)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    images, gts, edges = batch(2, 96, g)
    t["adam.images"], t["adam.masks"], t["adam.edges"] = images, gts, edges
    losses = []
    for rate in [0.75, 1, 1.25]:
        optimizer.zero_grad()
        trainsize = int(round(96 * rate / 32) * 32)
        im, gt, ed = images, gts, edges
        if rate != 1:
            im = F.interpolate(images, size=(trainsize, trainsize), mode="bilinear", align_corners=True)
            gt = F.interpolate(gts, size=(trainsize, trainsize), mode="bilinear", align_corners=True)
            ed = F.interpolate(edges, size=(trainsize, trainsize), mode="bilinear", align_corners=True)
        with P.expand_for_any_width():
            loss = public_loss(T, model(im), gt, ed)
        loss.backward()
        U.clip_gradient(optimizer, 0.5)
        optimizer.step()
        losses.append(loss.item())
    t["adam.losses"] = torch.tensor(losses)
    before = P.build_model(P.TINY, seed=3).state_dict()
    for k, v in model.state_dict().items():
        if "running" in k:
            t[f"adam.after.{k}"] = v
        elif v.is_floating_point():
            # Three Adam steps move a weight by at most ~3·lr; the change in float16 keeps ~1e-7 absolute.
            t[f"adam.delta.{k}"] = (v.double() - before[k].double()).half()
    half = lambda k: k.startswith("adam.delta.") or k.split(".")[-1] in ("images", "masks", "edges")
    save_file({k: (v.half() if half(k) else v.float()).detach().clone().contiguous() for k, v in t.items()},
              path, metadata=meta())


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    T, U = public_training_module()
    out = os.path.join(ROOT, "tests", "fixtures")
    ops(os.path.join(out, "train_ops.safetensors"), T)
    train_step(os.path.join(out, "train_step.safetensors"), T, U)
    print(f"wrote {out}/train_ops.safetensors, train_step.safetensors (torch {torch.__version__})")


if __name__ == "__main__":
    main()
