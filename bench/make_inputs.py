#!/usr/bin/python3
"""Draw the PNG inputs of bench/run.sh into a directory (default bench/out/inputs).

  large.png  6000x4000 (24 MP) photographic RGB PNG: a real corpus photo upscaled with Lanczos,
             plus mild Gaussian sensor-like noise, so it compresses like a photo (tens of MB).
  mp100.png  10000x10000 (100,000,000 px, exactly aperture's default pixel limit) RGB PNG, drawn
             smooth (gradients, soft discs, low-frequency waves) so the file stays under the
             default 20 MiB byte limit: the memory check runs with aperture's default limits.
             A PNG decoder's memory does not depend on how well the data compresses.
  mp100p1.png 10000x10001 (one row over the pixel limit): must be refused, not decoded.

Usage: /usr/bin/python3 bench/make_inputs.py PHOTO.jpg [OUTDIR]
Needs Debian's python3-pil and python3-numpy (the pyenv python3 on PATH has no PIL).
Deterministic (fixed seeds); files that already exist are kept.
"""
import os
import sys

import numpy as np
from PIL import Image, ImageOps


def large(photo, path):
    with Image.open(photo) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = ImageOps.fit(im, (6000, 4000), Image.LANCZOS)
    a = np.asarray(im, dtype=np.int16)
    rng = np.random.default_rng(1568)
    a = a + rng.normal(0.0, 2.0, a.shape).round().astype(np.int16)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(path, compress_level=6)


def smooth(w, h, path):
    # Built a band of rows at a time to keep the drawing itself under ~1 GB.
    out = np.empty((h, w, 3), dtype=np.uint8)
    x = np.arange(w, dtype=np.float32)[None, :] / w
    discs = [(0.3, 0.35, 0.18, (250, 210, 90)), (0.72, 0.6, 0.22, (60, 120, 200)),
             (0.5, 0.85, 0.12, (200, 60, 70))]
    band = 500
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        y = np.arange(y0, y1, dtype=np.float32)[:, None] / h
        r = 40 + 150 * y + 40 * np.sin(6.0 * x + 2.0 * y)
        g = 70 + 120 * x + 30 * np.cos(5.0 * y - 3.0 * x)
        b = 200 - 120 * y + 25 * np.sin(9.0 * (x + y))
        chans = [r + 0 * x, g + 0 * y, b]
        for cx, cy, rad, col in discs:
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / rad
            k = np.clip(1.5 - d, 0.0, 1.0)  # soft edge
            for c in range(3):
                chans[c] = chans[c] * (1 - k) + col[c] * k
        out[y0:y1] = np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)
    Image.fromarray(out, "RGB").save(path, compress_level=6)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    photo = sys.argv[1]
    outdir = sys.argv[2] if len(sys.argv) > 2 else "bench/out/inputs"
    os.makedirs(outdir, exist_ok=True)
    Image.MAX_IMAGE_PIXELS = None
    jobs = [("large.png", lambda p: large(photo, p)),
            ("mp100.png", lambda p: smooth(10000, 10000, p)),
            ("mp100p1.png", lambda p: smooth(10000, 10001, p))]
    for name, draw in jobs:
        path = os.path.join(outdir, name)
        if os.path.exists(path):
            continue
        tmp = path + ".tmp.png"
        draw(tmp)
        os.replace(tmp, path)
        print("make_inputs: drew %s (%d bytes)" % (path, os.path.getsize(path)), file=sys.stderr)


if __name__ == "__main__":
    main()
