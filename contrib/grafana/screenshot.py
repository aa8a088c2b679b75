#!/usr/bin/env python3
"""Renders contrib/grafana/wssify.png for the README, for real.

A wssify (the debug build in target/, or WSSIFY=path) serves a local echo
backend with --admin; a real Prometheus (Debian's `prometheus` package)
scrapes it every second; Python clients put it under load for a few
minutes (good connections, plain HTTP, clients that do not trust the
certificate, TLS 1.2 clients refused by --tls-min 1.3, a route whose
backend is down). Then every panel of contrib/grafana/wssify.json is drawn
from its own queries, through Prometheus' API, into one HTML page, and
headless Chromium (Debian's `chromium`) takes the screenshot. Grafana
itself is not in Debian, hence the page.

    python3 contrib/grafana/screenshot.py [--minutes 3] [--out contrib/grafana/wssify.png]

Standard library only. Everything it starts is stopped at the end.
"""

import argparse
import html
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2",
          "#b877d9", "#fade2a", "#37872d", "#e0b400", "#1f60c4", "#c4162a"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_backend(port, stop):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(256)
    srv.settimeout(0.5)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    srv.close()


def wait_for(url, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except Exception:
            time.sleep(0.2)
    sys.exit(f"screenshot.py: {url} did not answer within {limit}s")


def load(addr, stop, seconds):
    """A mix of clients until `stop`, heavier in the middle of the run."""
    host, port = addr
    trusting_nothing = ssl.create_default_context()  # refuses the self-signed cert
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    start = time.time()
    n = 0
    while not stop.is_set():
        n += 1
        phase = (time.time() - start) / seconds
        try:
            with socket.create_connection(addr, timeout=5) as raw:
                if n % 41 == 0:
                    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    raw.recv(1024)
                elif n % 17 == 0:
                    trusting_nothing.wrap_socket(raw, server_hostname="localhost")
                elif n % 29 == 0:
                    old.wrap_socket(raw, server_hostname="localhost")
                elif n % 11 == 0:
                    # Closed at once while its backend is down; echoed once up.
                    with insecure.wrap_socket(raw, server_hostname="down.localhost") as tls:
                        tls.sendall(b"ping")
                        tls.recv(4)
                else:
                    with insecure.wrap_socket(raw, server_hostname="localhost") as tls:
                        size = 4096 * (1 + (n % 16))
                        tls.sendall(b"x" * size)
                        got = 0
                        while got < size:
                            chunk = tls.recv(65536)
                            if not chunk:
                                break
                            got += len(chunk)
        except (OSError, ssl.SSLError):
            pass
        # Busier in the middle third.
        time.sleep(0.01 if 0.33 < phase < 0.66 else 0.05)


def query(prom, path, **params):
    url = f"{prom}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise RuntimeError(f"{params}: {answer}")
    return answer["data"]["result"]


def legend(fmt, metric):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or str(metric)


def fmt_value(v, unit, decimals=None):
    if v is None:
        return "-"
    if unit == "Bps":
        for name, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.1f} {name}"
        return f"{v:.0f} B/s"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "d":
        return f"{v:.{decimals if decimals is not None else 1}f} days"
    suffix = {"cps": "/s", "ops": "/s"}.get(unit, "")
    return (f"{v:.2f}" if abs(v) < 10 and v != int(v) else f"{v:.0f}") + suffix


def expr_of(target, rate):
    return target["expr"].replace("$instance", ".*").replace("$__rate_interval", rate)


def series_svg(results, w, h, unit, step_mode=False):
    pad_l, pad_b = 64, 18
    pts = [[(float(t), float(v)) for t, v in r["values"] if v not in ("NaN", "+Inf")] for r, _ in results]
    allv = [v for s in pts for _, v in s]
    allt = [t for s in pts for t, _ in s]
    if not allt:
        return f'<svg width="{w}" height="{h}"><text x="10" y="30" fill="#888">No data</text></svg>'
    t0, t1 = min(allt), max(allt)
    vmin, vmax = (0, 1) if step_mode else (min(0, min(allv)), max(allv) or 1)
    vmax = vmax * 1.1 if not step_mode else 1.2
    sx = lambda t: pad_l + (t - t0) / max(t1 - t0, 1) * (w - pad_l - 8)
    sy = lambda v: 6 + (1 - (v - vmin) / (vmax - vmin)) * (h - pad_b - 12)
    out = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):
        v = vmin + (vmax - vmin) * i / 4
        y = sy(v)
        out.append(f'<line x1="{pad_l}" x2="{w - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#2c3235"/>')
        label = "" if step_mode else html.escape(fmt_value(v, unit))
        out.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" fill="#9fa7b3" font-size="11" text-anchor="end">{label}</text>')
    for i in range(4):
        t = t0 + (t1 - t0) * i / 3
        out.append(f'<text x="{sx(t):.1f}" y="{h - 3}" fill="#9fa7b3" font-size="11" text-anchor="middle">{time.strftime("%H:%M:%S", time.gmtime(t))}</text>')
    for i, s in enumerate(pts):
        if not s:
            continue
        color = COLORS[i % len(COLORS)]
        if step_mode:
            band = (h - pad_b - 12) / max(len(pts), 1)
            y = 6 + band * i
            for (ta, va), (tb, _) in zip(s, s[1:] + [(t1, 0)]):
                c = "#73bf69" if va >= 1 else "#f2495c"
                out.append(f'<rect x="{sx(ta):.1f}" y="{y + 2:.1f}" width="{max(sx(tb) - sx(ta), 1):.1f}" height="{band - 4:.1f}" fill="{c}"/>')
            continue
        d = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in s)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.6"/>')
    out.append("</svg>")
    return "".join(out)


def render(prom, dashboard, minutes, rate):
    end = time.time()
    start = end - minutes * 60
    step = max(1, int(minutes * 60 / 240))
    col, row = 1600 / 24, 32
    boxes = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        x, y, w, h = g["x"] * col, g["y"] * row, g["w"] * col - 8, g["h"] * row - 8
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        decimals = p.get("fieldConfig", {}).get("defaults", {}).get("decimals")
        mappings = p.get("fieldConfig", {}).get("defaults", {}).get("mappings", [])
        body = ""
        if p["type"] in ("stat", "table"):
            rows = []
            for t in p["targets"]:
                for r in query(prom, "query", query=expr_of(t, rate), time=end):
                    v = float(r["value"][1])
                    text = fmt_value(v, unit, decimals)
                    for m in mappings:
                        hit = m.get("options", {}).get(str(int(v)) if v == int(v) else "")
                        if hit:
                            text = hit["text"]
                    rows.append((legend(t.get("legendFormat", ""), r["metric"]), text, v))
            if p["type"] == "stat":
                good = all(v >= 1 for _, _, v in rows) if "Ready" in p["title"] else None
                color = {True: "#73bf69", False: "#f2495c", None: "#d8d9da"}[good]
                if "Backends down" in p["title"]:
                    color = "#73bf69" if all(v == 0 for _, _, v in rows) else "#f2495c"
                if "expiry" in p["title"]:
                    color = "#73bf69" if all(v >= 14 for _, _, v in rows) else "#f2495c"
                body = "".join(f'<div class="stat" style="color:{color}">{html.escape(text)}</div>' for _, text, _ in rows[:1]) or '<div class="stat">-</div>'
            else:
                body = "<table>" + "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(t)}</td></tr>" for n, t, _ in rows) + "</table>"
        else:
            results = []
            for t in p["targets"]:
                for r in query(prom, "query_range", query=expr_of(t, rate), start=start, end=end, step=step):
                    results.append((r, legend(t.get("legendFormat", ""), r["metric"])))
            body = series_svg(results, int(w - 16), int(h - 70), unit, p["type"] == "state-timeline")
            body += '<div class="legend">' + "".join(
                f'<span><i style="background:{COLORS[i % len(COLORS)]}"></i>{html.escape(n)}</span>'
                for i, (_, n) in enumerate(results)) + "</div>"
        boxes.append(f'<div class="panel" style="left:{x:.0f}px;top:{y + 48:.0f}px;width:{w:.0f}px;height:{h:.0f}px">'
                     f'<h3>{html.escape(p["title"])}</h3>{body}</div>')
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) * row + 60
    return height, f"""<!doctype html><meta charset="utf-8"><style>
body{{margin:0;background:#111217;font-family:Inter,Helvetica,Arial,sans-serif;color:#d8d9da;width:1600px;height:{height}px;position:relative}}
header{{padding:12px 16px;font-size:18px}} header small{{color:#9fa7b3;font-size:12px;margin-left:12px}}
.panel{{position:absolute;background:#181b1f;border:1px solid #2c3235;border-radius:3px;padding:6px 8px;box-sizing:border-box;overflow:hidden}}
h3{{margin:0 0 6px;font-size:13px;font-weight:500}}
.stat{{font-size:40px;font-weight:600;text-align:center;margin-top:8px}}
.legend{{font-size:11px;color:#ccc;display:flex;flex-wrap:wrap;gap:4px 12px}} .legend i{{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}}
table{{font-size:12px;width:100%}} td{{padding:2px 6px;border-bottom:1px solid #2c3235}}
</style><header>wssify <small>{html.escape(dashboard["title"])} dashboard, drawn from its own queries by contrib/grafana/screenshot.py; last {minutes} minutes</small></header>
{"".join(boxes)}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "contrib/grafana/wssify.png"))
    args = ap.parse_args()
    wssify = os.environ.get("WSSIFY", os.path.join(ROOT, "target/debug/wssify"))
    prometheus = shutil.which("prometheus") or sys.exit("needs Prometheus: sudo apt-get install prometheus")
    chromium = shutil.which("chromium") or sys.exit("needs Chromium: sudo apt-get install chromium")
    if not os.access(wssify, os.X_OK):
        sys.exit(f"no wssify at {wssify}: run `cargo build` first, or set WSSIFY")
    dashboard = json.load(open(os.path.join(ROOT, "contrib/grafana/wssify.json")))
    tmp = tempfile.mkdtemp(prefix="wssify-shot-")
    stop = threading.Event()
    procs = []
    try:
        backend, dead, listen, admin, web = (free_port() for _ in range(5))
        threading.Thread(target=echo_backend, args=(backend, stop), daemon=True).start()
        env = dict(os.environ, HOME=tmp, XDG_DATA_HOME=tmp, RUST_LOG="warn")
        # A certificate with 47 days left, as a Let's Encrypt one might
        # have (openssl, when there is one; else the in-memory one).
        cert = ["--self-signed"]
        if shutil.which("openssl"):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "47", "-subj",
                            "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,DNS:down.localhost",
                            "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cert = ["--cert", f"{tmp}/cert.pem", "--key", f"{tmp}/key.pem"]
        procs.append(subprocess.Popen(
            [wssify, "--listen", f"127.0.0.1:{listen}", "--to", f"127.0.0.1:{backend}",
             "--route", f"down.localhost=127.0.0.1:{dead}", *cert,
             "--tls-min", "1.3", "--admin", f"127.0.0.1:{admin}"],
            env=env, stderr=subprocess.DEVNULL))
        wait_for(f"http://127.0.0.1:{admin}/healthz")
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n"
                    f"  - job_name: wssify\n    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n")
        procs.append(subprocess.Popen(
            [prometheus, f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        prom = f"http://127.0.0.1:{web}"
        wait_for(f"{prom}/-/ready")
        seconds = args.minutes * 60
        workers = [threading.Thread(target=load, args=(("127.0.0.1", listen), stop, seconds), daemon=True)
                   for _ in range(4)]
        for w in workers:
            w.start()
        print(f"load for {seconds:.0f}s ...", file=sys.stderr)
        # The route's backend is down until 60% of the run, then comes up:
        # wssify turns ready.
        time.sleep(seconds * 0.6)
        threading.Thread(target=echo_backend, args=(dead, stop), daemon=True).start()
        time.sleep(seconds * 0.4)
        height, page = render(prom, dashboard, args.minutes, "30s")
        path = os.path.join(tmp, "dashboard.html")
        with open(path, "w") as f:
            f.write(page)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size=1600,{height}", f"--screenshot={os.path.abspath(args.out)}",
                        f"file://{path}"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        stop.set()
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
