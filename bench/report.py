#!/usr/bin/python3
"""Turn bench/run.sh's raw data (bench/out/raw) into the Markdown report it prints.

Usage: /usr/bin/python3 bench/report.py RAW_DIR
Medians throughout; in-process series drop their first (warm-up) image.
"""
import glob
import json
import os
import statistics
import sys

RAW = sys.argv[1] if len(sys.argv) > 1 else "bench/out/raw"
STAGES = ["decode", "color", "resample", "orient", "encode", "hash", "total"]


def path(name):
    return os.path.join(RAW, name)


def read(name):
    try:
        with open(path(name)) as f:
            return f.read()
    except OSError:
        return None


def med(xs):
    return statistics.median(xs) if xs else None


def hyper(name, idx=0):
    """Median ms of result idx of a hyperfine --export-json file, and all runs."""
    t = read(name)
    if t is None:
        return None
    r = json.loads(t)["results"][idx]
    return {"median": r["median"] * 1000, "min": r["min"] * 1000, "max": r["max"] * 1000,
            "runs": len(r["times"]), "exit": sorted(set(r.get("exit_codes") or [0])),
            "cpu": (r["user"] + r["system"]) * 1000}


def inproc_lines(name, ms_of, bytes_of):
    """(median ms, bytes, n) of a per-image text log, first line dropped."""
    t = read(name)
    if t is None:
        return None
    rows = [l.split() for l in t.splitlines() if l.strip().endswith(" ms")]
    rows = rows[1:]
    if not rows:
        return None
    ms = [ms_of(r) for r in rows]
    return {"median": med(ms), "min": min(ms), "max": max(ms), "n": len(ms),
            "bytes": bytes_of(rows[-1])}


def sharp(k):
    return inproc_lines("sharp_%s.txt" % k, lambda r: float(r[-2]), lambda r: int(r[-3]))


def pillow(k, fast):
    return inproc_lines("pillow_%s%s.txt" % ("fast_" if fast else "", k),
                        lambda r: float(r[-2]), lambda r: int(r[-4]))


def aperture(k):
    t = read("ap_inproc_%s.jsonl" % k)
    if t is None:
        return None
    objs = [json.loads(l) for l in t.splitlines() if l.startswith("{")]
    if not objs:
        return None
    if not objs[0].get("ok"):
        return {"error": objs[0].get("message", "?")}
    objs = objs[1:]
    d = {s: med([o["ms"][s] for o in objs]) for s in STAGES}
    d["median"] = d["total"]
    d["min"] = min(o["ms"]["total"] for o in objs)
    d["max"] = max(o["ms"]["total"] for o in objs)
    d["n"] = len(objs)
    o = objs[-1]
    d.update(bytes=o["out_bytes"], w=o["width"], h=o["height"], ow=o["out_width"],
             oh=o["out_height"], scale=o["decode_scale"], orientation=o["orientation"])
    return d


def f1(x):
    return "—" if x is None else "%.1f" % x


def ratio(a, b):
    return "—" if a is None or b is None or b == 0 else "%.2f×" % (a / b)


def kb(x):
    return "—" if x is None else "%.0f" % (x / 1024)


def main():
    keys = []
    for p in sorted(glob.glob(path("ap_inproc_*.jsonl")), key=os.path.getmtime):
        keys.append(os.path.basename(p)[len("ap_inproc_"):-len(".jsonl")])
    out = []
    w = out.append

    w("## Machine and versions\n")
    w("```")
    w((read("env.txt") or "").rstrip())
    w("```\n")

    rows = {}
    for k in keys:
        a = aperture(k)
        ap_proc = hyper("ap_proc_%s.json" % k)
        vp = hyper("vips_proc_%s.json" % k)
        fd = hyper("floor_%s.json" % k, 0)
        fe = hyper("floor_%s.json" % k, 1)
        fm = (read("floor_meta_%s.txt" % k) or "").split()
        vb = read("vips_bytes_%s.txt" % k)
        rows[k] = dict(a=a, ap_proc=ap_proc, vips=vp, fd=fd, fe=fe,
                       floor=(fd["median"] + fe["median"]) if fd and fe else None,
                       floor_scale=fm[0] if fm else None,
                       floor_bytes=int(fm[1]) if len(fm) > 1 else None,
                       vips_bytes=int(vb) if vb else None, sharp=sharp(k),
                       pil_fast=pillow(k, True), pil=pillow(k, False))

    def g(d, f="median"):
        return None if d is None or "error" in d else d.get(f)

    w("## Latency: one thread, median ms per image (long edge 1568, JPEG q78)\n")
    w("In-process: aperture `--json` ms.total, sharp and Pillow their own timers (which also "
      "include reading the file). Process: hyperfine wall time of the whole command.\n")
    w("| image | in → out | aperture in-process | aperture process | codec floor (djpeg + cjpeg) "
      "| vipsthumbnail | sharp | Pillow --fast | Pillow |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for k, r in rows.items():
        a = r["a"]
        if a and "error" in a:
            w("| %s | refused: %s | | | | | | | |" % (k, a["error"]))
            continue
        geo = "%dx%d → %dx%d" % (a["w"], a["h"], a["ow"], a["oh"]) if a else "?"
        fl = "—" if r["floor"] is None else "%.1f (%.1f + %.1f, %s/8)" % (
            r["floor"], r["fd"]["median"], r["fe"]["median"], r["floor_scale"])
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            k, geo, f1(g(a)), f1(g(r["ap_proc"])), fl, f1(g(r["vips"])), f1(g(r["sharp"])),
            f1(g(r["pil_fast"])), f1(g(r["pil"]))))
    w("")
    w("Output bytes (KiB):\n")
    w("| image | aperture | codec floor (cjpeg) | vipsthumbnail | sharp | Pillow --fast | Pillow |")
    w("|---|--:|--:|--:|--:|--:|--:|")
    for k, r in rows.items():
        w("| %s | %s | %s | %s | %s | %s | %s |" % (
            k, kb(g(r["a"], "bytes")), kb(r["floor_bytes"]), kb(r["vips_bytes"]),
            kb(g(r["sharp"], "bytes")), kb(g(r["pil_fast"], "bytes")), kb(g(r["pil"], "bytes"))))
    w("")
    w("Ratios (> 1 means aperture is faster, except the first two, where ≤ 1.15 is the target):\n")
    w("| image | aperture process / floor | aperture in-process / floor | sharp / aperture "
      "(in-process) | vips / aperture (process) | Pillow --fast / aperture | Pillow / aperture |")
    w("|---|--:|--:|--:|--:|--:|--:|")
    for k, r in rows.items():
        ai, ap = g(r["a"]), g(r["ap_proc"])
        w("| %s | %s | %s | %s | %s | %s | %s |" % (
            k, ratio(ap, r["floor"]), ratio(ai, r["floor"]), ratio(g(r["sharp"]), ai),
            ratio(g(r["vips"]), ap), ratio(g(r["pil_fast"]), ai), ratio(g(r["pil"]), ai)))
    w("")
    w("CPU time of the processes (user + sys, mean ms; less sensitive than wall time to other "
      "load on the machine):\n")
    w("| image | aperture process | codec floor | vipsthumbnail | aperture / floor "
      "| vips / aperture |")
    w("|---|--:|--:|--:|--:|--:|")
    for k, r in rows.items():
        ac, vc = g(r["ap_proc"], "cpu"), g(r["vips"], "cpu")
        fc = (r["fd"]["cpu"] + r["fe"]["cpu"]) if r["fd"] and r["fe"] else None
        w("| %s | %s | %s | %s | %s | %s |" % (k, f1(ac), f1(fc), f1(vc), ratio(ac, fc),
                                             ratio(vc, ac)))
    w("")
    w("Spread (min–max ms; n = timed repetitions):\n")
    w("| image | aperture in-process | aperture process | djpeg | cjpeg | vipsthumbnail | sharp "
      "| Pillow --fast | Pillow |")
    w("|---|---|---|---|---|---|---|---|---|")

    def sp(d):
        if d is None or "error" in d:
            return "—"
        return "%.0f–%.0f (n=%d)" % (d["min"], d["max"], d.get("n", d.get("runs", 0)))

    for k, r in rows.items():
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            k, sp(r["a"]), sp(r["ap_proc"]), sp(r["fd"]), sp(r["fe"]), sp(r["vips"]),
            sp(r["sharp"]), sp(r["pil_fast"]), sp(r["pil"])))
    w("")

    w("## aperture per stage, in-process median ms\n")
    w("DCT scale: the N/8 libjpeg decodes at (aperture picks it by the same rule as "
      "codec_floor.sh: the smallest N/8 covering 1568 px; its `--json` decode_scale field is the "
      "integer 8/N, so 3/8 shows as 2).\n")
    w("| image | DCT scale | decode | color | resample | orient | encode | hash | total "
      "| floor djpeg | floor cjpeg |")
    w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k, r in rows.items():
        a = r["a"]
        if not a or "error" in a:
            continue
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            k, (r["floor_scale"] + "/8") if r["floor_scale"] else "—", *[f1(a[s]) for s in STAGES], f1(g(r["fd"])), f1(g(r["fe"]))))
    w("")

    cf = read("codec_floor_sh.txt")
    if cf:
        w("`../shared/bench/codec_floor.sh 1568` as shipped (best of 3, date-based, djpeg "
          "writes a PPM file):\n")
        w("```")
        w(cf.rstrip())
        w("```\n")

    tp = read("tp.json")
    n = int(read("tp_n.txt") or 0)
    tput = {}
    if tp:
        w("## Throughput: %d images (the corpus photos, copies), images/s from the median wall "
          "time\n" % n)
        w("| configuration | median s | images/s |")
        w("|---|--:|--:|")
        for r in json.loads(tp)["results"]:
            ips = n / r["median"]
            tput[r["command"]] = ips
            w("| %s | %.2f | %.2f |" % (r["command"], r["median"], ips))
        w("")
        for a, b in [("aperture --jobs 2", "aperture --jobs 1"),
                     ("vips 2 processes, VIPS_CONCURRENCY=1", "vips 1 process, VIPS_CONCURRENCY=1"),
                     ("vips 1 process, VIPS_CONCURRENCY=2", "vips 1 process, VIPS_CONCURRENCY=1"),
                     ("sharp 2 processes", "sharp 1 process"),
                     ("Pillow --fast 2 processes", "Pillow --fast 1 process")]:
            if a in tput and b in tput:
                w("- %s vs %s: %.2f×" % (a, b, tput[a] / tput[b]))
        w("")

    rss = read("rss.txt")
    rssd = {}
    if rss:
        w("## Peak RSS (/usr/bin/time %M, max of 3 runs)\n")
        w("| command | peak RSS MiB | exit | wall s | stderr |")
        w("|---|--:|--:|--:|---|")
        for line in rss.splitlines():
            name, kb_, rc, sec, err = (line.split("|", 4) + [""] * 5)[:5]
            rssd[name] = (int(kb_) / 1024, int(rc))
            w("| %s | %.1f | %s | %s | %s |" % (name, int(kb_) / 1024, rc, sec, err.strip()[:120]))
        w("")
        m = read("ap_mp100.jsonl")
        if m and m.startswith("{"):
            o = json.loads(m.splitlines()[0])
            if o.get("ok"):
                w("aperture on the 100 MP PNG, per stage ms: " + ", ".join(
                    "%s %.0f" % (s, o["ms"][s]) for s in STAGES) + "\n")

    # Targets, for the 12 MP phone photo.
    k12 = next((k for k in rows if k.lower().startswith("samsung")), None)
    if k12:
        r = rows[k12]
        ai, ap = g(r["a"]), g(r["ap_proc"])
        w("## Targets (12 MP phone JPEG: %s)\n" % k12)
        w("| target | measured | met |")
        w("|---|---|---|")

        def row(t, val, ok):
            w("| %s | %s | %s |" % (t, val, "—" if ok is None else ("yes" if ok else "**no**")))

        if ap and r["floor"]:
            row("≤ 1.15× the codec floor (process vs process)",
                "%.1f / %.1f ms = %.2f×" % (ap, r["floor"], ap / r["floor"]),
                ap / r["floor"] <= 1.15)
            row("(same, in-process time vs floor)",
                "%.1f / %.1f ms = %.2f×" % (ai, r["floor"], ai / r["floor"]),
                ai / r["floor"] <= 1.15)
        if ai and g(r["sharp"]):
            row("faster than sharp (in-process)", "sharp %.1f vs %.1f ms = %.2f×" % (
                g(r["sharp"]), ai, g(r["sharp"]) / ai), g(r["sharp"]) > ai)
        if ap and g(r["vips"]):
            row("≥ 2× faster than vipsthumbnail (process)", "vips %.1f vs %.1f ms = %.2f×" % (
                g(r["vips"]), ap, g(r["vips"]) / ap), g(r["vips"]) / ap >= 2)
        if "aperture --jobs 2" in tput and "aperture --jobs 1" in tput:
            x = tput["aperture --jobs 2"] / tput["aperture --jobs 1"]
            row("throughput on 2 cores ≥ 1.8× one core", "%.2f vs %.2f img/s = %.2f×" % (
                tput["aperture --jobs 2"], tput["aperture --jobs 1"], x), x >= 1.8)
        v = rssd.get("aperture --jobs 1, 12 MP JPEG")
        if v:
            row("peak RSS, one 12 MP JPEG ≤ 40 MB", "%.1f MiB (%.1f MB)" % (
                v[0], v[0] * 1.048576), v[0] * 1.048576 <= 40 and v[1] == 0)
        v = rssd.get("aperture (default limits), 100 MP PNG")
        if v:
            row("100 MP PNG within 256 MB (default limits: must be processed)",
                "%.1f MiB, exit %d" % v, v[0] * 1.048576 <= 256 and v[1] == 0)
        v = rssd.get("aperture (default limits), 100,000,001 px PNG")
        if v:
            row("100,000,001 px PNG refused by the limit, no OOM", "%.1f MiB, exit %d" % v,
                v[1] == 1)
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
