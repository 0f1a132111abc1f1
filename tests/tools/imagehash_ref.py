#!/usr/bin/python3
"""
imagehash_ref.py - an independent reference for aperture's pHash and dHash.

Written from the published definitions of the Python `imagehash` library (not from its code), with
Pillow and numpy only (no scipy), so that Debian's stock /usr/bin/python3 can run it:

  gray   = image.convert("L")                      (Pillow: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16)
  phash  = gray.resize((32, 32), LANCZOS); D = DCT-II along axis 0 then axis 1 (scipy.fftpack.dct
           convention: unnormalised, y[k] = 2 * sum x[n] cos(pi k (2n + 1) / 2N)); low = D[:8, :8];
           bits = low > median(low)
  dhash  = gray.resize((9, 8), LANCZOS); bits[r][c] = px[r][c + 1] > px[r][c]

Bits are read row-major, most significant first, and printed as 16 lowercase hex digits (imagehash's
str()).

Usage:
  imagehash_ref.py [--dump DIR] FILE...     hash image files (decoded by Pillow)
  imagehash_ref.py --raw WxHxC FILE...      hash raw 8-bit interleaved pixels (C = 1, 2, 3 or 4);
                                            --raw applies to the files after it, until the next

Prints one line per file, in order: "<phash> <dhash> <width> <height> <channels>". With --dump, the
pixels Pillow decoded are also written to DIR/<n>.raw (n = 0, 1, ... in argument order), as 8-bit
gray (mode L) or RGB, tightly packed, so a caller can hash exactly the same pixels.
"""
import sys

import numpy as np
from PIL import Image

LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def dct_ii(a, axis):
    """Unnormalised DCT-II of a 2-D array along one axis, as scipy.fftpack.dct(a, axis=axis)."""
    n = a.shape[axis]
    k = np.arange(n).reshape(-1, 1)
    i = np.arange(n).reshape(1, -1)
    m = 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2.0 * n))
    return m @ a if axis == 0 else a @ m.T


def pack(bits):
    value = 0
    for b in np.asarray(bits).flatten():
        value = (value << 1) | int(bool(b))
    return "%016x" % value


def phash(gray):
    px = np.asarray(gray.resize((32, 32), LANCZOS), dtype=np.float64)
    low = dct_ii(dct_ii(px, 0), 1)[:8, :8]
    return pack(low > np.median(low))


def dhash(gray):
    px = np.asarray(gray.resize((9, 8), LANCZOS), dtype=np.int32)
    return pack(px[:, 1:] > px[:, :-1])


def from_raw(path, w, h, c):
    data = open(path, "rb").read()
    if len(data) != w * h * c:
        sys.exit("imagehash_ref: '%s' holds %d bytes, expected %d" % (path, len(data), w * h * c))
    a = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    return Image.fromarray(a[:, :, 0] if c == 1 else a, mode)


def main(argv):
    dump, raw, files = None, None, []
    i = 0
    while i < len(argv):
        if argv[i] == "--dump":
            dump, i = argv[i + 1], i + 2
        elif argv[i] == "--raw":
            raw, i = tuple(int(v) for v in argv[i + 1].split("x")), i + 2
        else:
            files.append((argv[i], raw))
            i += 1
    for n, (path, raw) in enumerate(files):
        im = from_raw(path, *raw) if raw else Image.open(path)
        im.load()
        gray = im.convert("L")
        channels = 1 if im.mode in ("L", "LA", "I", "I;16", "1") else 3
        if dump:
            pix = gray if channels == 1 else im.convert("RGB")
            with open("%s/%d.raw" % (dump, n), "wb") as f:
                f.write(pix.tobytes())
        print(phash(gray), dhash(gray), im.size[0], im.size[1], channels)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
