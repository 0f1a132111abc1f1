#!/usr/bin/python3
"""Regenerate the drawn seeds of tests/fuzz/corpus (Debian's python3 + PIL, heif-enc, aperture).

Usage: tests/fuzz/make_seeds.py [APERTURE_BINARY]   (default build/aperture)

Every seed is drawn here, tiny (16..32 px), one per decoder path worth reaching: bit depths,
palettes and transparency, interlacing, CMYK, EXIF orientation, metadata, multi-frame, the
compressions of TIFF, the flavours of BMP and WebP. Nothing is copied from the shared corpus
(its files carry their own licences). Some seeds start with an option selector byte (see
fuzz_prep.c) so the trim/gray/encoding paths have seeds too. Crash reproducers (crash-*.bin)
are kept by hand and never touched by this script.
"""
import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib

from PIL import Image, ImageCms, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
APERTURE = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "build",
                                                              "aperture")


def gradient(w=16, h=16, mode="RGB"):
    im = Image.new("RGB", (w, h))
    px = im.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = (x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 127 // (w + h - 2))
    d = ImageDraw.Draw(im)
    d.rectangle([w // 4, h // 4, w // 2, h // 2], fill=(255, 255, 255))
    return im.convert(mode) if mode != "RGB" else im


def with_alpha(im):
    w, h = im.size
    a = Image.new("L", (w, h))
    a.putdata([0 if x < w // 4 else (x * 255 // (w - 1)) for y in range(h) for x in range(w)])
    rgba = im.convert("RGBA")
    rgba.putalpha(a)
    return rgba


def page(w=32, h=24):
    """A 'document': white margins around a dark block, for --trim."""
    im = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(im).rectangle([6, 5, w - 8, h - 6], fill=(20, 30, 40))
    return im


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def pil_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def exif_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    ex[0x010F] = "aperture-seed"
    return ex.tobytes()


def exif_tiff(o):
    """The EXIF block without its "Exif\\0\\0" prefix, as PNG's eXIf chunk holds it."""
    b = exif_orientation(o)
    return b[6:] if b.startswith(b"Exif\0\0") else b


def png_chunk(t, data):
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def png_raw(w, h, bitdepth, colortype, rows, interlace=False, extra=()):
    """A PNG written by hand: 16-bit samples and Adam7 interlacing, which PIL does not write."""

    def pack(pix):  # one row of sample tuples -> bytes
        out = bytearray()
        for p in pix:
            for s in p:
                out += struct.pack(">H", s) if bitdepth == 16 else bytes([s])
        return bytes(out)

    raw = bytearray()
    if not interlace:
        for r in rows:
            raw += b"\0" + pack(r)
    else:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                  (1, 0, 2, 2), (0, 1, 1, 2)]
        for x0, y0, dx, dy in passes:
            for y in range(y0, h, dy):
                sub = [rows[y][x] for x in range(x0, w, dx)]
                if sub:
                    raw += b"\0" + pack(sub)
    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 1 if interlace else 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(extra) +
            png_chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + png_chunk(b"IEND", b""))


def bmp_rle8(w=16, h=16):
    """An 8-bit RLE-compressed BMP (PIL reads RLE but does not write it)."""
    pal = b"".join(bytes([i * 16, 255 - i * 16, (i * 40) & 255, 0]) for i in range(16))
    data = bytearray()
    for y in range(h):
        data += bytes([w // 2, y % 16, w - w // 2, (y + 5) % 16])  # two runs
        data += b"\x00\x00"  # end of line
    data += b"\x00\x01"  # end of bitmap
    off = 14 + 40 + len(pal)
    hdr = struct.pack("<2sIHHI", b"BM", off + len(data), 0, 0, off)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 16, 0)
    return hdr + dib + pal + bytes(data)


def bmp_v5_argb(w=16, h=16, icc=None):
    """A 32-bit BMP with a V5 header, BI_BITFIELDS masks including alpha, and optionally an
    embedded ICC profile: the fields PIL never writes."""
    px = bytearray()
    for y in range(h):
        for x in range(w):
            px += struct.pack("<I", (x * 16 << 24) | (x * 16 << 16) | (y * 16 << 8) | 128)
    off = 14 + 124
    prof = icc or b""
    dib = struct.pack("<IiiHHIIiiII", 124, w, h, 1, 32, 3, len(px), 2835, 2835, 0, 0)
    dib += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    cs = b"DEBM" if icc else b"BGRs"  # 'MBED' / 'sRGB', stored little-endian
    dib += cs + bytes(36) + struct.pack("<III", 0, 0, 0)  # endpoints, gamma
    dib += struct.pack("<IIII", 4, 124 + len(px) if icc else 0, len(prof), 0)
    hdr = struct.pack("<2sIHHI", b"BM", off + len(px) + len(prof), 0, 0, off)
    return hdr + dib + bytes(px) + prof


def bmp_rgb565(w=15, h=9):
    """16-bit 5-6-5 BI_BITFIELDS after a 40-byte header, odd width (row padding)."""
    stride = (w * 2 + 3) // 4 * 4
    px = bytearray()
    for y in range(h):
        row = b"".join(struct.pack("<H", (x * 2 << 11) | (y * 7 << 5) | 31 - x * 2)
                       for x in range(w))
        px += row + bytes(stride - len(row))
    off = 14 + 40 + 12
    hdr = struct.pack("<2sIHHI", b"BM", off + len(px), 0, 0, off)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(px), 0, 0, 0, 0)
    return hdr + dib + struct.pack("<III", 0xF800, 0x07E0, 0x001F) + bytes(px)


def bmp_rle4_os2(w=16, h=8):
    """RLE4 with a delta and a literal; and an OS/2 1.x (12-byte core header) 4-bit image."""
    pal = b"".join(bytes([i * 16, 255 - i * 16, 128, 0]) for i in range(16))
    data = bytearray()
    for y in range(h):
        if y == 3:
            data += b"\x00\x02\x04\x01"  # delta: 4 right, 1 down
            continue
        data += bytes([0, 6]) + bytes([0x12, 0x34, 0x56]) + b"\x00"  # literal, padded
        data += bytes([w - 6, 0xAB]) + b"\x00\x00"
    data += b"\x00\x01"
    off = 14 + 40 + len(pal)
    rle = (struct.pack("<2sIHHI", b"BM", off + len(data), 0, 0, off) +
           struct.pack("<IiiHHIIiiII", 40, w, -h, 1, 4, 2, len(data), 0, 0, 16, 0) + pal + data)
    pal3 = b"".join(bytes([i * 16, 128, 255 - i * 16]) for i in range(16))
    rows = b"".join(bytes([(x * 2 + y) & 0xFF for x in range(w // 2)]) for y in range(h))
    off = 14 + 12 + len(pal3)
    core = (struct.pack("<2sIHHI", b"BM", off + len(rows), 0, 0, off) +
            struct.pack("<IHHHH", 12, w, h, 1, 4) + pal3 + rows)
    return rle, core


def bmp_topdown(im):
    """A 24-bit BMP stored top-down (negative height)."""
    b = bytearray(pil_bytes(im.convert("RGB").transpose(Image.FLIP_TOP_BOTTOM), "BMP"))
    h = struct.unpack_from("<i", b, 22)[0]
    struct.pack_into("<i", b, 22, -h)
    return bytes(b)


def aperture(src_bytes, suffix, fmt, *args):
    """Preprocess with the project's own CLI: clean JPEG/PNG/WebP as aperture writes them."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in" + suffix)
        dst = os.path.join(d, "out")
        with open(src, "wb") as f:
            f.write(src_bytes)
        subprocess.run([APERTURE, "prep", src, "-o", dst, "--format", fmt, "--target", "none",
                        *args], check=True, stdout=subprocess.DEVNULL)
        with open(dst, "rb") as f:
            return f.read()


def heif(im, *args):
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.png"), os.path.join(d, "out.heif")
        im.save(src)
        r = subprocess.run(["heif-enc", "-q", "50", *args, "-o", dst, src],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            return None
        with open(dst, "rb") as f:
            return f.read()


def main():
    os.makedirs(OUT, exist_ok=True)
    g = gradient()
    g32 = gradient(32, 24)

    # PNG: every colour type, low and high bit depths, palette transparency, interlacing, text.
    save("png-rgb8.png", pil_bytes(g, "PNG"))
    save("png-rgba8.png", pil_bytes(with_alpha(g), "PNG"))
    save("png-gray8.png", pil_bytes(g.convert("L"), "PNG"))
    save("png-graya8.png", pil_bytes(with_alpha(g).convert("LA"), "PNG"))
    pal = g.convert("P", palette=Image.ADAPTIVE, colors=16)
    save("png-pal4-trns.png", pil_bytes(pal, "PNG", bits=4, transparency=0))
    rows16 = [[(x * 4369, y * 4369, 65535 - x * 4369, 32768 + y * 2000) for x in range(16)]
              for y in range(16)]
    save("png-rgba16-interlaced.png", png_raw(16, 16, 16, 6, rows16, interlace=True))
    rows_g16 = [[(x * 4096 + y * 16,) for x in range(16)] for y in range(16)]
    save("png-gray16.png", png_raw(16, 16, 16, 0, rows_g16))
    rows_rgb = [[(x * 16, y * 16, 128) for x in range(13)] for y in range(11)]
    text = [png_chunk(b"tEXt", b"Comment\0aperture seed"),
            png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta/>"),
            png_chunk(b"eXIf", exif_tiff(6))]
    save("png-text-exif6.png", png_raw(13, 11, 8, 2, rows_rgb, extra=text))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    save("png-iccp-srgb.png", pil_bytes(g, "PNG", icc_profile=srgb))

    # JPEG: baseline 4:2:0 and 4:4:4, progressive, CMYK (Adobe inverted), EXIF orientation,
    # ICC, a comment. (Gray and orientation 3 come with the option seeds below.)
    save("jpeg-420.jpg", pil_bytes(g32, "JPEG", quality=70))
    save("jpeg-444-progressive.jpg",
         pil_bytes(g32, "JPEG", quality=80, subsampling=0, progressive=True))
    save("jpeg-cmyk.jpg", pil_bytes(g32.convert("CMYK"), "JPEG"))
    save("jpeg-exif6.jpg", pil_bytes(g32, "JPEG", exif=exif_orientation(6)))
    save("jpeg-icc-comment.jpg", pil_bytes(g, "JPEG", icc_profile=srgb, comment=b"seed"))

    # GIF: static with transparency, animated, interlaced, a comment.
    save("gif-trns.gif", pil_bytes(pal, "GIF", transparency=0))
    frames = [gradient(16, 16).convert("P", palette=Image.ADAPTIVE, colors=8),
              gradient(16, 16).rotate(90).convert("P", palette=Image.ADAPTIVE, colors=8)]
    save("gif-anim.gif", pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                   duration=100, loop=0, comment=b"seed"))

    # BMP: 24-bit, 8/4/1-bit palettes, RLE8/RLE4, top-down, OS/2 core header, 16-bit 5-6-5 and
    # 32-bit alpha bit fields, V5 with an embedded profile.
    save("bmp-pal8.bmp", pil_bytes(pal, "BMP"))
    save("bmp-1bit.bmp", pil_bytes(g.convert("1"), "BMP"))
    save("bmp-rle8.bmp", bmp_rle8())
    save("bmp-topdown.bmp", bmp_topdown(g))
    save("bmp-v5-argb32-icc.bmp", bmp_v5_argb(icc=srgb))
    save("bmp-rgb565-odd.bmp", bmp_rgb565())
    rle4, core = bmp_rle4_os2()
    save("bmp-rle4-delta-topdown.bmp", rle4)
    save("bmp-os2-core-4bit.bmp", core)

    # TIFF: compressions, CMYK, 16-bit gray, alpha, G4 bilevel, multi-page, big-endian.
    save("tiff-lzw.tif", pil_bytes(g, "TIFF", compression="tiff_lzw"))
    save("tiff-deflate-rgba.tif", pil_bytes(with_alpha(g), "TIFF", compression="tiff_adobe_deflate"))
    save("tiff-jpeg.tif", pil_bytes(g, "TIFF", compression="jpeg"))
    save("tiff-cmyk-packbits.tif", pil_bytes(g.convert("CMYK"), "TIFF", compression="packbits"))
    save("tiff-gray16.tif", pil_bytes(g.convert("L").convert("I").point(lambda v: v * 257).convert("I;16"), "TIFF"))
    save("tiff-g4.tif", pil_bytes(page().convert("1"), "TIFF", compression="group4"))
    save("tiff-multipage-exif6.tif", pil_bytes(g, "TIFF", save_all=True, append_images=[g32],
                                               tiffinfo={0x0112: 6}))

    # WebP: lossy, lossless with alpha, animated, EXIF orientation.
    save("webp-lossy.webp", pil_bytes(g, "WEBP", quality=50))
    save("webp-lossless-alpha.webp", pil_bytes(with_alpha(g), "WEBP", lossless=True))
    save("webp-anim.webp", pil_bytes(frames[0].convert("RGB"), "WEBP", save_all=True,
                                     append_images=[frames[1].convert("RGB")], duration=100))
    save("webp-exif6.webp", pil_bytes(g, "WEBP", exif=exif_orientation(6)))

    # HEIF (and AVIF where heif-enc has an AV1 encoder).
    h = heif(g)
    if h:
        save("heif.heic", h)
    a = heif(g, "-A")
    if a:
        save("avif.avif", a)

    # Outputs of aperture itself, and option-selector seeds: the first byte is
    # gray 0x40 | trim 0x20 | encoding << 3 | target index (see fuzz_prep.c).
    save("aperture-out.jpg", aperture(pil_bytes(g32, "PNG"), ".png", "jpeg"))
    save("aperture-out-gray.webp", aperture(pil_bytes(g32, "PNG"), ".png", "webp", "--gray"))
    doc = pil_bytes(page(), "PNG")
    save("opt-trim-gray-png.bin", bytes([0x20 | 0x40 | (1 << 3) | 6]) + doc)   # none, png
    save("opt-trim-webp.bin", bytes([0x20 | (2 << 3) | 1]) + pil_bytes(page(), "JPEG"))
    save("opt-q1-nohash-gray-exif3.bin",
         bytes([0x80 | (3 << 3) | 2]) + pil_bytes(g32.convert("L"), "JPEG",
                                                 exif=exif_orientation(3)))
    save("opt-gray-alpha.bin", bytes([0x40 | 5]) + pil_bytes(with_alpha(g), "PNG"))


if __name__ == "__main__":
    main()
