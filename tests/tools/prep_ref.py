#!/usr/bin/python3
"""
prep_ref.py - test-time helper for the ap_prep() suites (tests/unit/test_prep*.c).

Run with Debian's /usr/bin/python3 (Pillow + numpy); never with another interpreter, so the
references come from the distribution's Pillow and libvips, not from anything we built.

Two jobs:

  manifest KIND JSON
      Flatten one of the corpus' expected*.json files into tab-separated lines a C test can read
      without a JSON parser. One line per file, columns fixed per KIND ("-" = absent, -1 = no
      number). Keys starting with "_" are skipped. Columns:
        formats      path outcome magic mode resize_w resize_h icc_profile frames
        chart        the 18 sRGB patch colours of icc/crafted/chart_*.{png,jpg}, row-major, as
                     "index x y rrggbb" (x, y = patch centre), from _checks.icc_checks
        checks       path reference max_mae how   (formats' _checks: the decoded file against
                     a lossless reference; how = rgb | gray (reference taken to luma) | crop
                     (reference cropped to the file's size, top-left))
        bad          path outcome magic category decl_w decl_h
        orientation  path magic exif_orientation disp_w disp_h resize_w resize_h reference_upright
        photos       path exif_orientation disp_w disp_h resize_w resize_h has_gps has_thumbnail icc
        metadata     path stored_w stored_h canary

  ref OUTDIR SPEC...
      Make reference pixels with tools other than aperture. Each SPEC is "OP|FILE|W|H"; the
      result is written to OUTDIR/<n>.rgb (n = 0, 1, ... in argument order) as tightly packed
      8-bit RGB, and one line "n width height" is printed per SPEC. W and H (0 = keep) resize the
      result with Pillow's LANCZOS (a full Lanczos-3 convolution) when they differ from its size.
      OPs:
        pil      Pillow decode, EXIF orientation applied (ImageOps.exif_transpose), alpha
                 flattened onto white, RGB
        pilraw   the same without applying the orientation
        pilgray  pilraw, then Pillow's convert("L") (ITU-R 601 luma), as RGB
        vips     libvips: `vips copy IN OUT.png` (HEIF/AVIF: libheif applies irot/imir), flattened
        vipsrot  libvips: `vips autorot IN OUT.png` (orientation tag applied), flattened
        cmyk     Pillow decode + convert("RGB") (the naive, profile-less CMYK conversion)
        vipsicc  libvips: `vips icc_transform IN OUT.png srgb --embedded --intent relative`
                 (the embedded ICC profile honoured, relative colorimetric), then flattened/RGB
        icc      the embedded ICC profile honoured, relative colorimetric, to sRGB, then alpha
                 flattened onto white: Pillow's ImageCms (lcms2) for what Pillow opens, libvips
                 (vipsicc) for the rest (HEIF/AVIF). Pillow first because libvips 8.14 skips
                 LUT-based profiles it cannot run "relative" one way (XYB, the multi-chunk TIFF
                 RGB profile), warns, and returns the pixels unconverted.
      A failing SPEC prints "n error <message>" and the script goes on.
"""
import io
import json
import re
import os
import subprocess
import sys
import tempfile

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def col(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "1" if v else "0"
    s = str(v)
    return s.replace("\t", " ").replace("\n", " ") if s else "-"


def wh(v):
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return [col(v[0]), col(v[1])]
    return ["-1", "-1"]


def checks(files):
    """formats/expected.json _checks: MAE of each file's decode against the lossless reference."""
    c = files["_checks"]
    ref = "jpeg/crafted/reference_1024x683.png"
    for key, mae in c["jpeg_crafted_mae_vs_reference"]["values"].items():
        name = key.split(" ")[0]
        how = "gray" if "grayscale reference" in key else "rgb"
        print("\t".join(["jpeg/crafted/" + name, ref, col(mae), how]))
    for name, mae in c["other_mae_vs_reference"].items():
        print("\t".join([name, ref, col(mae), "rgb"]))
    for key, mae in c["lossless_exact"].items():
        if key == "note":
            continue
        how = "crop" if "crop" in key.split(" ", 1)[-1] and " " in key else "rgb"
        print("\t".join([key.split(" ")[0], ref, col(mae), how]))


def manifest(kind, path):
    with open(path, encoding="utf-8") as f:
        files = json.load(f)["files"]
    if kind == "checks":
        checks(files)
        return
    if kind == "chart":
        layout = files["_checks"]["icc_checks"]["chart_patch_layout"]
        colours = re.findall(r"\b[0-9A-F]{6}\b", layout.split(":", 1)[1].split(";")[0])
        for i, c in enumerate(colours):
            print("\t".join([str(i), str(32 + 64 * (i % 6)), str(32 + 64 * (i // 6)), c.lower()]))
        return
    for name, v in files.items():
        if name.startswith("_") or not isinstance(v, dict):
            continue
        if kind == "formats":
            row = [name, v.get("expected_outcome"), v.get("magic"), v.get("mode")]
            row += wh(v.get("after_resize_max1568_wh")) + [v.get("icc_profile"), v.get("frames")]
        elif kind == "bad":
            row = [name, v.get("expected_outcome"), v.get("magic"), v.get("category")]
            row += wh(v.get("declared_wh_pillow") or v.get("declared_wh_libheif"))
        elif kind == "orientation":
            row = [name, v.get("magic"), v.get("exif_orientation", None)]
            row += wh(v.get("displayed_wh")) + wh(v.get("after_resize_max1568_wh"))
            row += [v.get("reference_upright")]
        elif kind == "photos":
            row = [name, v.get("exif_orientation")]
            row += wh(v.get("displayed_wh")) + wh(v.get("after_resize_max1568_wh"))
            row += [bool(v.get("has_gps")), bool(v.get("has_exif_thumbnail")), v.get("icc_profile")]
        elif kind == "metadata":
            row = [name] + wh(v.get("stored_wh")) + [(v.get("canary_strings") or ["CANARY"])[0]]
        else:
            sys.exit("unknown manifest kind " + kind)
        print("\t".join(col(c) for c in row))


def flatten(im):
    """RGB of im, with any transparency composited onto white."""
    if im.mode in ("P", "L", "LA", "RGB", "RGBA", "I", "I;16", "1", "PA") and (
        "transparency" in im.info or im.mode in ("LA", "RGBA", "PA")
    ):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I", "I;16"):
        # 16-bit gray: Pillow's convert("L") clips instead of scaling; scale as decoders do.
        return im.point(lambda v: v / 257).convert("L").convert("RGB")
    return im.convert("RGB")


def pillow_icc(path, tmp):
    """Embedded profile -> sRGB with Pillow's ImageCms; libvips when Pillow cannot open it."""
    try:
        im = Image.open(path)
        im.load()
    except UnidentifiedImageError:
        return one("vipsicc", path, 0, 0, tmp)
    icc = im.info.get("icc_profile")
    if not icc:
        return flatten(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "LA":
        im = flatten(im).convert("L")
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    conv = ImageCms.profileToProfile(im, src, dst, renderingIntent=1, outputMode=out_mode)
    return flatten(conv)


def one(op, path, w, h, tmp):
    if op == "icc":
        im = pillow_icc(path, tmp)
    elif op == "vipsicc":
        out = os.path.join(tmp, "icc.png")
        subprocess.run(["vips", "icc_transform", path, out, "srgb", "--embedded",
                        "--intent", "relative"], check=True, capture_output=True)
        im = flatten(Image.open(out))
    elif op in ("vips", "vipsrot"):
        out = os.path.join(tmp, "copy.png")
        subprocess.run(["vips", "copy" if op == "vips" else "autorot", path, out], check=True,
                       capture_output=True)
        im = flatten(Image.open(out))
    else:
        im = Image.open(path)
        im.load()
        if op == "pil":
            im = ImageOps.exif_transpose(im)
            im = flatten(im)
        elif op == "pilraw":
            im = flatten(im)
        elif op == "pilgray":
            im = flatten(im).convert("L").convert("RGB")
        elif op == "cmyk":
            im = im.convert("RGB")
        else:
            raise ValueError("unknown op " + op)
    if w > 0 and h > 0 and im.size != (w, h):
        im = im.resize((w, h), LANCZOS)
    return im


def ref(outdir, specs):
    with tempfile.TemporaryDirectory() as tmp:
        for n, spec in enumerate(specs):
            try:
                op, path, w, h = spec.split("|")
                im = one(op, path, int(w), int(h), tmp)
                with open(os.path.join(outdir, "%d.rgb" % n), "wb") as f:
                    f.write(im.tobytes())
                print(n, im.size[0], im.size[1])
            except Exception as e:  # report and go on: the C side fails the test
                msg = " ".join(str(e).split()) or type(e).__name__
                print(n, "error", msg[:200])
            sys.stdout.flush()


def main(argv):
    if len(argv) == 4 and argv[1] == "manifest":
        manifest(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "ref":
        ref(argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
