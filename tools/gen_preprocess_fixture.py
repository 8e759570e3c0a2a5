"""Writes tests/fixtures/preprocess.safetensors: small synthetic slices and the network input that the
public Inf-Net test pipeline makes of them, for the Rust preprocessing parity test.

Reference pipeline (Inf-Net `Code/utils/dataloader.py`, `test_dataset`), used verbatim for 8-bit:

    self.transform = transforms.Compose([
        transforms.Resize((self.testsize, self.testsize)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    image = self.rgb_loader(self.images[self.index])   # Image.open(f).convert('RGB')
    image = self.transform(image).unsqueeze(0)

16-bit slices: Pillow's convert('RGB') of mode I;16 clips every value above 255 to 255, which turns
a 16-bit CT slice white. infnet instead divides by 257 and keeps floats; the reference for that is
the same resize in Pillow's float mode F (no uint8 rounding), then /255 and Normalize:

    f = Image.fromarray(arr16.astype(np.float32) / 257, mode='F').resize((size, size), Image.BILINEAR)
    x = (np.asarray(f) / 255 - mean) / std        # per channel, gray replicated

Tensors: `<case>_input` (H×W×C raw sample values as f32), `<case>_expected` (3×S×S f32),
`<case>_bits` ([8.] or [16.]). Run: /opt/pt/bin/python tools/gen_preprocess_fixture.py
(needs torch, numpy, pillow, torchvision; the safetensors file is written by hand, no extra package).
"""
import json
import os
import struct

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

SIZE = 48
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def pil_pipeline_8bit(arr):
    im = Image.fromarray(arr).convert('RGB')
    t = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize(MEAN.tolist(), STD.tolist())])(im)
    return t.numpy().astype(np.float32)


def float_pipeline_16bit(arr):
    f = Image.fromarray(arr.astype(np.float32) / 257, mode='F').resize((SIZE, SIZE), Image.BILINEAR)
    g = np.asarray(f, dtype=np.float32) / 255
    return np.stack([(g - MEAN[c]) / STD[c] for c in range(3)]).astype(np.float32)


def textured(h, w, seed, hi):
    """Smooth structure plus noise and hard edges, so that rounding and antialiasing both matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.3 * np.sin(x / 3.1) * np.cos(y / 4.7) + 0.2 * ((x // 5 + y // 3) % 2)
    v = np.clip(base / 1.2 + 0.08 * rng.standard_normal((h, w)), 0, 1)
    return v * hi


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype='<f4').tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def main():
    out = {}
    # Downscale in both axes (antialiasing support > 1).
    gray8 = textured(101, 75, 1, 255).round().astype(np.uint8)
    # Upscale in both axes.
    rgb8 = np.stack([textured(29, 37, s, 255) for s in (2, 3, 4)], axis=-1).round().astype(np.uint8)
    # Down in x, up in y; values over the whole 16-bit range.
    gray16 = textured(41, 130, 5, 65535).round().astype(np.uint16)
    for name, arr, bits, fn in [('gray8', gray8, 8, pil_pipeline_8bit), ('rgb8', rgb8, 8, pil_pipeline_8bit),
                                ('gray16', gray16, 16, float_pipeline_16bit)]:
        a3 = arr if arr.ndim == 3 else arr[..., None]
        out[f'{name}_input'] = a3.astype(np.float32)
        out[f'{name}_expected'] = fn(arr)
        out[f'{name}_bits'] = np.array([bits], dtype=np.float32)
    path = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'preprocess.safetensors')
    save_safetensors(path, out)
    print(path, os.path.getsize(path), 'bytes')


if __name__ == '__main__':
    torch.manual_seed(0)
    main()
