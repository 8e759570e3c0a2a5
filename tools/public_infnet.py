"""Builds Inf-Net models from the *public* PyTorch code (DengPingFan/Inf-Net), unmodified.

The public source is read from a checkout (INFNET_PUBLIC_REPO=/path/to/Inf-Net) or extracted from a bare
clone (INFNET_PUBLIC_GIT=/path/to/repo.git, default ../.mirror/DengPingFan+Inf-Net/repo beside the project)
into a temporary folder and imported from there. Nothing of it is copied into this project.

Two kinds of model:
- `build_model(None)`: the published Inf-Net, `Inf_Net()` exactly as the public class builds it (its
  constructor asks for ImageNet weights from ./Snapshots; we substitute the same Res2Net built with
  pretrained=False and random weights).
- `build_model(spec)`: a reduced variant with fewer blocks and narrower channels. It is assembled from the
  public classes themselves (Res2Net._make_layer with Bottle2neck, BasicConv2d, RFB_modified, aggregation)
  with the public attribute names, and runs the public `Inf_Net.forward`. Only one thing has to be patched
  for narrow variants: the public forward broadcasts the reverse-attention map with a hard-coded
  `x.expand(-1, 2048, -1, -1).mul(x4)` (and 1024, 512); `expand_for_any_width()` lets that expand return the
  1-channel tensor unchanged, and `.mul` then broadcasts it over however many channels the variant has,
  which is the same arithmetic.

All weights are random (seeded) and every BatchNorm gets non-trivial running statistics, so BN folding is
exercised. Models are returned in eval mode.
"""
import contextlib
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GIT = os.path.normpath(os.path.join(HERE, "..", "..", ".mirror", "DengPingFan+Inf-Net", "repo"))

# The reduced variant used by the committed fixtures; `Spec::tiny()` in src/model/synthetic.rs mirrors it.
TINY = dict(blocks=[2, 1, 2, 1], base_width=26, scale=4, planes=[8, 16, 24, 32], stem=[8, 16],
            channel=8, ra=[24, 16, 16], edge=8)

_public = None


def load_public():
    """Imports the public model code. Returns (InfNet_Res2Net module, Res2Net module, commit or path)."""
    global _public
    if _public is not None:
        return _public
    repo = os.environ.get("INFNET_PUBLIC_REPO")
    if repo:
        root, origin = repo, repo
        try:
            origin = subprocess.check_output(["git", "-C", repo, "rev-parse", "HEAD"], text=True).strip()
        except Exception:
            pass
    else:
        git = os.environ.get("INFNET_PUBLIC_GIT", DEFAULT_GIT)
        if not os.path.isdir(git):
            sys.exit(f"public Inf-Net code not found: set INFNET_PUBLIC_REPO (checkout) or INFNET_PUBLIC_GIT (bare clone); tried {git}")
        origin = subprocess.check_output(["git", "--git-dir", git, "rev-parse", "HEAD"], text=True).strip()
        root = tempfile.mkdtemp(prefix="infnet-public-")
        tar = subprocess.check_output(["git", "--git-dir", git, "archive", "HEAD", "Code"])
        subprocess.run(["tar", "-x", "-C", root], input=tar, check=True)
    sys.path.insert(0, root)
    import Code.model_lung_infection.InfNet_Res2Net as infnet_mod
    import Code.model_lung_infection.backbone.Res2Net as res2net_mod
    _public = (infnet_mod, res2net_mod, origin)
    return _public


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * math.sqrt(3.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.25 * (torch.rand(c, generator=g) * 2 - 1))
                m.bias.copy_(0.1 * (torch.rand(c, generator=g) * 2 - 1))
                m.running_mean.copy_(0.1 * (torch.rand(c, generator=g) * 2 - 1))
                m.running_var.copy_(1 + 0.5 * (torch.rand(c, generator=g) * 2 - 1))
                m.num_batches_tracked.fill_(7)


def build_model(spec=None, seed=0):
    infnet_mod, res2net_mod, _ = load_public()
    if spec is None:
        # The public constructor calls res2net50_v1b_26w_4s(pretrained=True), which loads ImageNet weights
        # from disk; build the identical backbone with pretrained=False instead.
        orig = infnet_mod.res2net50_v1b_26w_4s
        infnet_mod.res2net50_v1b_26w_4s = lambda pretrained=False, **kw: orig(pretrained=False, **kw)
        try:
            model = infnet_mod.Inf_Net()
        finally:
            infnet_mod.res2net50_v1b_26w_4s = orig
    else:
        model = _reduced(spec, infnet_mod, res2net_mod)
    _randomize(model, seed)
    return model.eval()


def _reduced(spec, infnet_mod, res2net_mod):
    Res2Net, Bottle2neck = res2net_mod.Res2Net, res2net_mod.Bottle2neck
    BasicConv2d, RFB, Agg = infnet_mod.BasicConv2d, infnet_mod.RFB_modified, infnet_mod.aggregation
    s0, s1 = spec["stem"]
    r = Res2Net.__new__(Res2Net)
    nn.Module.__init__(r)
    r.inplanes, r.baseWidth, r.scale = s1, spec["base_width"], spec["scale"]
    # Same stem layout as Res2Net v1b (three 3×3 convs), narrower.
    r.conv1 = nn.Sequential(
        nn.Conv2d(3, s0, 3, 2, 1, bias=False), nn.BatchNorm2d(s0), nn.ReLU(inplace=True),
        nn.Conv2d(s0, s0, 3, 1, 1, bias=False), nn.BatchNorm2d(s0), nn.ReLU(inplace=True),
        nn.Conv2d(s0, s1, 3, 1, 1, bias=False))
    r.bn1 = nn.BatchNorm2d(s1)
    r.relu = nn.ReLU()
    r.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    p, b = spec["planes"], spec["blocks"]
    r.layer1 = r._make_layer(Bottle2neck, p[0], b[0])
    r.layer2 = r._make_layer(Bottle2neck, p[1], b[1], stride=2)
    r.layer3 = r._make_layer(Bottle2neck, p[2], b[2], stride=2)
    r.layer4 = r._make_layer(Bottle2neck, p[3], b[3], stride=2)
    c1, c2, c3, c4 = (4 * x for x in p)
    ch, (r4, r3, r2), e = spec["channel"], spec["ra"], spec["edge"]

    m = infnet_mod.Inf_Net.__new__(infnet_mod.Inf_Net)
    nn.Module.__init__(m)
    m.resnet = r
    m.rfb2_1, m.rfb3_1, m.rfb4_1 = RFB(c2, ch), RFB(c3, ch), RFB(c4, ch)
    m.ParDec = Agg(ch, 1)
    m.ra4_conv1 = BasicConv2d(c4, r4, kernel_size=1)
    m.ra4_conv2 = BasicConv2d(r4 + e, r4, kernel_size=5, padding=2)
    m.ra4_conv3 = BasicConv2d(r4, r4, kernel_size=5, padding=2)
    m.ra4_conv4 = BasicConv2d(r4, r4, kernel_size=5, padding=2)
    m.ra4_conv5 = BasicConv2d(r4, 1, kernel_size=1)
    m.ra3_conv1 = BasicConv2d(c3, r3, kernel_size=1)
    m.ra3_conv2 = BasicConv2d(r3 + e, r3, kernel_size=3, padding=1)
    m.ra3_conv3 = BasicConv2d(r3, r3, kernel_size=3, padding=1)
    m.ra3_conv4 = BasicConv2d(r3, 1, kernel_size=3, padding=1)
    m.ra2_conv1 = BasicConv2d(c2, r2, kernel_size=1)
    m.ra2_conv2 = BasicConv2d(r2 + e, r2, kernel_size=3, padding=1)
    m.ra2_conv3 = BasicConv2d(r2, r2, kernel_size=3, padding=1)
    m.ra2_conv4 = BasicConv2d(r2, 1, kernel_size=3, padding=1)
    m.edge_conv1 = BasicConv2d(c1, e, kernel_size=1)
    m.edge_conv2 = BasicConv2d(e, e, kernel_size=3, padding=1)
    m.edge_conv3 = BasicConv2d(e, e, kernel_size=3, padding=1)
    m.edge_conv4 = BasicConv2d(e, 1, kernel_size=3, padding=1)
    return m


@contextlib.contextmanager
def expand_for_any_width():
    """See the module docstring: lets the public forward's hard-coded channel expand work for narrow variants."""
    orig = torch.Tensor.expand

    def expand(self, *sizes):
        if len(sizes) == 4 and self.dim() == 4 and self.shape[1] == 1 and sizes[1] in (512, 1024, 2048):
            return self
        return orig(self, *sizes)

    torch.Tensor.expand = expand
    try:
        yield
    finally:
        torch.Tensor.expand = orig


def forward(model, x):
    """The public Inf_Net.forward: (lateral_map_5, _4, _3, _2, lateral_edge)."""
    with torch.no_grad(), expand_for_any_width():
        return model(x)


OUTPUT_NAMES = ["lateral_map_5", "lateral_map_4", "lateral_map_3", "lateral_map_2", "lateral_edge"]


def save_state_dict(model, path, dtype=torch.float32):
    """Saves the state_dict with the public key names (num_batches_tracked kept, as PyTorch checkpoints have it)."""
    from safetensors.torch import save_file
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path)
