#!/usr/bin/env python3
"""Start-to-ready time and idle RSS of a fresh `latchkey serve`, median of N runs."""
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ready_ms, rss = [], []
for _ in range(RUNS):
    with tempfile.TemporaryDirectory() as d:
        http = free_port()
        env = dict(os.environ,
                   LATCHKEY_DATA_DIR=f"{d}/data",
                   LATCHKEY_LISTEN__HTTP=f"127.0.0.1:{http}",
                   LATCHKEY_LISTEN__HTTPS=f"127.0.0.1:{free_port()}",
                   LATCHKEY_LISTEN__METRICS=f"127.0.0.1:{free_port()}",
                   LATCHKEY_LOG__LEVEL="warn")
        start = time.monotonic()
        p = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/-/health/ready/", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.002)
            if time.monotonic() - start > 30:
                raise SystemExit("server did not become ready")
        ready_ms.append((time.monotonic() - start) * 1000)
        time.sleep(2)  # let start-up work settle before reading idle memory
        rss.append(rss_kib(p.pid) / 1024)
        p.terminate()
        p.wait()

print(json.dumps({
    "runs": RUNS,
    "start_to_ready_ms_median": round(statistics.median(ready_ms), 1),
    "start_to_ready_ms_all": [round(x, 1) for x in ready_ms],
    "idle_rss_mib_median": round(statistics.median(rss), 1),
}))
