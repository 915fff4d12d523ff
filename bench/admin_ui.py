#!/usr/bin/env python3
"""Times admin list pages as a browser with a session sees them: sequential requests over one
keep-alive connection on loopback, so the figure is the server's time plus a loopback round trip.
Usage: admin_ui.py BASE_URL SESSION_COOKIE N PATH... — prints one JSON line per path."""
import http.client
import json
import statistics
import sys
import time
import urllib.parse

base, cookie, n, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
url = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(url.hostname, url.port)
headers = {"Cookie": f"latchkey_session={cookie}", "Accept": "text/html"}


def get(path):
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{path} answered {r.status}: {body[:300]!r}")
    return body


css = len(get("/static/style.css"))
for path in paths:
    for _ in range(10):  # warm-up: caches, connection
        get(path)
    times = []
    size = 0
    for _ in range(n):
        start = time.perf_counter()
        size = len(get(path))
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(json.dumps({
        "path": path, "requests": n,
        "p50_ms": round(statistics.median(times), 2),
        "p90_ms": round(times[int(n * 0.9) - 1], 2),
        "p99_ms": round(times[int(n * 0.99) - 1], 2),
        "html_bytes": size, "css_bytes": css, "page_kib": round((size + css) / 1024, 1),
    }))
