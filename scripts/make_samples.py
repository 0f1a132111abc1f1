#!/usr/bin/python3
"""Draw the sample images `make run` preprocesses. Everything is drawn here: no third-party
image is committed or downloaded. Needs Debian's python3-pil (run with /usr/bin/python3).

Usage: make_samples.py OUTDIR
"""
import math
import os
import sys

from PIL import Image, ImageDraw, ImageFont


def photo(path):
    # A 12 MP "phone photo": smooth sky gradient, a sun, hills, stored sideways with EXIF
    # orientation 6 and camera metadata, as phones write them.
    w, h = 4032, 3024
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(0, h, 4):
        for x in range(0, w, 4):
            r = int(90 + 100 * y / h)
            g = int(140 + 80 * y / h + 20 * math.sin(x / 300))
            b = int(230 - 60 * y / h)
            for dy in range(4):
                for dx in range(4):
                    px[x + dx, y + dy] = (r, g, b)
    d = ImageDraw.Draw(img)
    d.ellipse((2900, 400, 3500, 1000), fill=(255, 220, 90))
    for i in range(6):
        d.polygon([(i * 800 - 400, h), (i * 800 + 400, 1700 + (i % 3) * 200), (i * 800 + 1200, h)],
                  fill=(40 + 20 * i, 120 + 10 * i, 50))
    d.text((100, 100), "aperture sample", fill=(0, 0, 0))
    # Sensor-like noise, so the file is as large as a real phone photo (a few MB).
    noise = Image.effect_noise((w, h), 60).convert("RGB")
    img = Image.blend(img, noise, 0.12)
    # Store it rotated so that orientation 6 (rotate 90 CW to display) shows it upright.
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6          # Orientation
    exif[0x010F] = "Sample"   # Make
    exif[0x0110] = "Phone"    # Model
    exif[0x010E] = "private description that must not leave"  # ImageDescription
    stored.save(path, "JPEG", quality=92, exif=exif.tobytes())


def logo(path):
    # A transparent PNG logo: alpha must be flattened onto white.
    img = Image.new("RGBA", (1600, 900), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((100, 100, 1500, 800), radius=120, fill=(30, 90, 200, 200))
    d.ellipse((600, 250, 1000, 650), fill=(250, 250, 250, 255))
    d.text((700, 430), "APERTURE", fill=(30, 30, 30, 255))
    img.save(path, "PNG")


def font(size):
    # DejaVu (Debian fonts-dejavu-core) at a size OCR reads; Pillow's bitmap font otherwise.
    for f in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(f, size)
        except OSError:
            pass
    return ImageFont.load_default()


def document(path):
    # An A4 invoice at 300 dpi with wide margins: the local provider's invoice_extraction reads
    # it, and --trim / --gray have work to do.
    w, h = 2480, 3508
    img = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(img)
    big, body = font(72), font(44)
    d.text((300, 300), "Acme Office Supplies Ltd.", fill=0, font=big)
    d.text((300, 420), "12 Harbour Street, Dublin", fill=0, font=body)
    d.text((300, 600), "INVOICE", fill=0, font=big)
    d.text((300, 720), "Invoice No: INV-2026-0042", fill=0, font=body)
    d.text((300, 790), "Date: 2026-11-02", fill=0, font=body)
    y = 950
    total = 0.0
    for i in range(12):
        price = (i + 1) * 12.5
        total += price
        d.text((300, y), f"Item {i + 1:02d}  widget, blue", fill=0, font=body)
        d.text((1800, y), f"{price:8.2f} EUR", fill=0, font=body)
        y += 70
    d.text((300, y + 80), "TOTAL", fill=0, font=big)
    d.text((1700, y + 80), f"{total:.2f} EUR", fill=0, font=big)
    img.save(path, "PNG")


def banner(path):
    # A wide WebP banner: a format users send that browsers produce.
    w, h = 3000, 1000
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    for x in range(0, w, 10):
        d.rectangle((x, 0, x + 10, h), fill=(x * 255 // w, 80, 255 - x * 255 // w))
    d.text((100, 450), "aperture banner", fill=(255, 255, 255))
    img.save(path, "WEBP", quality=85)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "samples"
    os.makedirs(out, exist_ok=True)
    for name, fn in (("photo_12mp_orient6.jpg", photo), ("logo_alpha.png", logo),
                     ("document_a4.png", document), ("banner.webp", banner)):
        p = os.path.join(out, name)
        if not os.path.exists(p):
            fn(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
