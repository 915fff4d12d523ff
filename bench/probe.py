#!/usr/bin/env python3
"""Open-loop latency probe: GET a URL at a fixed rate over one keep-alive connection and
report percentiles. Unlike wrk, it does not saturate the CPU itself, so what it measures is
the server's answer time, not the load generator's scheduling."""
import http.client, json, os, statistics, sys, time
from urllib.parse import urlsplit

url, cookie = sys.argv[1], sys.argv[2]
# More request headers as a JSON object, e.g. PROBE_HEADERS='{"X-Original-URL": "http://app/"}'.
extra = json.loads(os.environ.get("PROBE_HEADERS", "{}"))
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 200
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
u = urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
lat, errors = [], 0
interval = 1.0 / rate
next_at = time.perf_counter()
end = next_at + seconds
while next_at < end:
    now = time.perf_counter()
    if now < next_at:
        time.sleep(next_at - now)
    start = time.perf_counter()
    conn.request("GET", u.path, headers={"Cookie": cookie, **extra})
    r = conn.getresponse()
    r.read()
    lat.append((time.perf_counter() - start) * 1000)
    if r.status != 200:
        errors += 1
    next_at += interval
lat.sort()
pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)
print(json.dumps({"requests": len(lat), "non_200": errors, "p50_ms": pick(0.50), "p90_ms": pick(0.90),
                  "p99_ms": pick(0.99), "max_ms": round(lat[-1], 3)}))
