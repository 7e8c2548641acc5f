#!/usr/bin/env python3
"""Load test for kiln serve: Poisson arrivals at several rates against the server in each
batching mode (step, request, none), in one run.

Each mode gets its own server (same binary, model and flags but --batching). For every
rate, requests arrive as a Poisson process for --duration seconds (the same arrival
times and prompts for every mode: a fixed seed); each is a synchronous
POST /v1/images/generations with --steps steps, and its latency is the time to the
answer. Throughput is images finished per second from the first arrival to the last
answer. A rate the mode cannot keep up with (throughput below 90% of the offered rate)
ends that mode's sweep: the queue would only grow. The modes take turns at each rate,
so slow changes in the machine's load touch them alike; the "other CPU" column is the
CPU time that processes other than the server and this script used meanwhile (on a
shared machine, a row with much of it was disturbed).

Prints a markdown table and writes JSON beside it (--json). Only standard-library
Python; runs against loopback only.

    python3 bench/serve_bench.py --rates 0.5,1,2,4,8 --duration 20 --steps 20
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import re
import signal
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def post(url, body, timeout):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            res.read()
            return res.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:  # connection refused, timeout
        return 0


def busy_seconds():
    """CPU seconds the whole machine has spent busy (all cores)."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_seconds(pid="self"):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_text(url):
    with urllib.request.urlopen(url, timeout=30) as res:
        return res.read().decode()


class Server:
    def __init__(self, binary, mode, args):
        cmd = [binary, "serve", "--port", "0", "--batching", mode, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = None
        for line in self.proc.stderr:
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                self.url = m.group(1)
            if "warmed up" in line or "warm-up of" in line:
                print(f"{mode:8} {line.strip()}", flush=True)
            if "ready:" in line:
                break
        if not self.url:
            raise SystemExit("kiln serve did not start: " + " ".join(cmd))
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def batch_stats(self):
        """(denoiser calls, generations stepped) so far, from /metrics."""
        text = get_text(self.url + "/metrics")
        count = sum(float(v) for v in re.findall(r"^kiln_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
        total = sum(float(v) for v in re.findall(r"^kiln_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
        return count, total

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_rate(server, rate, duration, steps, seed, timeout):
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < duration:
        arrivals.append(t)
        t += rng.expovariate(rate)
    results = [None] * len(arrivals)
    calls0, gens0 = server.batch_stats()
    cpu0 = (busy_seconds(), process_seconds(server.proc.pid), process_seconds())
    start = time.perf_counter()

    def one(i):
        body = {"prompt": f"a shape number {i % 17} on a coloured background", "steps": steps,
                "seed": seed * 1000 + i, "response_format": "b64_json"}
        t0 = time.perf_counter()
        status = post(server.url + "/v1/images/generations", body, timeout)
        results[i] = (status, t0 - start, time.perf_counter() - start)

    threads = []
    for i, at in enumerate(arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=one, args=(i,))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    calls1, gens1 = server.batch_stats()
    cpu1 = (busy_seconds(), process_seconds(server.proc.pid), process_seconds())
    other_cpu = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])
    ok = [r for r in results if r[0] == 200]
    latencies = [end - begin for _, begin, end in ok]
    span = max((end for _, _, end in ok), default=0) - min((begin for _, begin, _ in ok), default=0)
    return {
        "offered_rate": rate,
        "requests": len(arrivals),
        "succeeded": len(ok),
        "errors": len(arrivals) - len(ok),
        "throughput": len(ok) / span if span > 0 else 0.0,
        "p50_s": percentile(latencies, 0.50),
        "p99_s": percentile(latencies, 0.99),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "mean_batch": (gens1 - gens0) / (calls1 - calls0) if calls1 > calls0 else 0.0,
        "server_cpu_s": cpu1[1] - cpu0[1],
        "other_cpu_s": max(0.0, other_cpu),
    }


def commit():
    # A copied tree may carry a stale .git: $COMMIT, where set, names what was built.
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip().splitlines()
        return out[0] if out else "unknown GPU"
    except OSError:
        return "unknown GPU"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kiln", default=os.environ.get("KILN_BIN", str(ROOT / "build" / "bin" / "kiln")))
    p.add_argument("--model", help="model folder (default: the embedded kiln-tiny)")
    p.add_argument("--modes", default="step,request,none")
    p.add_argument("--rates", default="0.5,1,2,4,8", help="arrivals per second, comma-separated")
    p.add_argument("--duration", type=float, default=20, help="seconds of arrivals per rate")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-window-ms", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    p.add_argument("--json", default=str(ROOT / "bench" / "serve_bench.json"))
    p.add_argument("--device", help="passed to kiln serve (cuda, cpu)")
    p.add_argument("--dtype", help="passed to kiln serve (fp16, bf16, fp32)")
    args = p.parse_args()

    server_args = ["--max-batch", str(args.max_batch), "--batch-window-ms", str(args.batch_window_ms),
                   "--http-threads", "512", "--max-queue", "100000", "--request-timeout", "3600"]
    if args.model:
        server_args += ["--model", args.model]
    for flag in ("device", "dtype"):
        if getattr(args, flag):
            server_args += ["--" + flag, getattr(args, flag)]
    rates = [float(r) for r in args.rates.split(",")]
    modes = args.modes.split(",")
    servers = {mode: Server(args.kiln, mode, server_args) for mode in modes}
    rows, saturated = [], set()
    try:
        for mode, server in servers.items():
            post(server.url + "/v1/images/generations", {"prompt": "warm-up", "steps": args.steps}, args.timeout)
        for rate in rates:
            for mode in modes:
                if mode in saturated:
                    continue
                row = {"mode": mode, **run_rate(servers[mode], rate, args.duration, args.steps, args.seed,
                                                 args.timeout)}
                rows.append(row)
                print(f"{mode:8} {rate:5.2f}/s  {row['throughput']:.2f} img/s  p50 {row['p50_s']:.2f} s  "
                      f"p99 {row['p99_s']:.2f} s  batch {row['mean_batch']:.2f}  errors {row['errors']}  "
                      f"other CPU {row['other_cpu_s']:.1f} s", flush=True)
                if row["throughput"] < 0.9 * rate:
                    saturated.add(mode)  # higher rates only grow the queue
    finally:
        for server in servers.values():
            server.stop()
    rows.sort(key=lambda r: (modes.index(r["mode"]), r["offered_rate"]))

    # kiln serve's default device is cuda where a GPU is present.
    on_gpu = args.device == "cuda" or (args.device is None and gpu_name() != "unknown GPU")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(),
            "device": f"GPU: {gpu_name()}" if on_gpu else f"CPU: {cpu_name()} ({os.cpu_count()} cores)",
            "dtype": args.dtype or ("fp16" if on_gpu else "fp32"),
            "model": args.model or "kiln-tiny (64x64)", "steps": args.steps, "max_batch": args.max_batch,
            "duration_s": args.duration, "endpoint": "POST /v1/images/generations"}
    print()
    print(f"{meta['device']}, {meta['dtype']}, commit {meta['commit']}, model {meta['model']}, "
          f"{args.steps} steps, --max-batch {args.max_batch}, {args.duration:g} s of Poisson arrivals per rate")
    print()
    print("| mode | offered (req/s) | requests | errors | throughput (img/s) | p50 (s) | p99 (s) | mean batch "
          "| other CPU (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['offered_rate']:g} | {r['requests']} | {r['errors']} | {r['throughput']:.2f} | "
              f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['mean_batch']:.2f} | {r['other_cpu_s']:.1f} |")
    pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\n(JSON: {args.json})")


if __name__ == "__main__":
    main()
