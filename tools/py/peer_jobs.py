"""The peer's runs for scripts/gpu-check.sh: compiled ahead, timed alone.

torch.compile spends one to two minutes a model. In a 10-minute check the peer's
compiles, run after kiln's bench, left no time for the VAEs (v18 to v22); a warm-up
that filled Inductor's caches first still left each timed run to compile again from
them (SD1.5 97 s, SDXL 79 s in v22). Here each of the peer's measurements (one
workload in one mode) is a process of its own that runs what the peer's script runs
(.peer/bench_diffusers.py: its workload(), count_flops() and median_ms(), in that
order, under inference mode) but stops after the compiled model's first call and
waits for its turn before timing. The controller starts these while kiln builds and
tests, stops them (SIGSTOP) while kiln's bench has the GPU, and then gives each one
that is ready the GPU alone, every other job stopped, for its timing. The compiled
code and the timing are the peer's own; only the wait between them is new.

  peer_jobs.py control --peer DIR --logs DIR --deadline EPOCH [--parallel N] JOB...
      JOB is workload:mode or workload:mode:peak (peak device memory of one eager
      forward, measured before anything else in that process). Rows go to stdout in
      the peer's format, progress to stderr. SIGUSR1: stop every job and write
      LOGS/paused (kiln's bench is next); SIGUSR2: resume them and time each job as it
      becomes ready, first in the list first, until all are timed or the deadline.
      LOGS/started appears once its signal handlers are in place; LOGS is emptied
      first (an earlier run's .ready and .go files would start timings at once).
  peer_jobs.py job --peer DIR --ready FILE --go FILE workload mode [--peak]
"""
import argparse
import os
import signal
import subprocess
import sys
import time


def job(args):
    sys.path.insert(0, args.peer)
    import torch
    import bench_diffusers as peer

    dtype = getattr(torch, args.dtype)
    name, mode = args.workload, args.mode
    batch = 2 if name.endswith("unet") else 1
    torch.manual_seed(0)
    print(f"| workload | batch | mode | ms | GFLOP | TFLOP/s |  ({torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__})", flush=True)
    module, call = peer.workload(name, batch, dtype, "")
    with torch.inference_mode():
        if args.peak:  # weights included, as kiln's peak column counts it
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            call(module)
            torch.cuda.synchronize()
            print(f"| {name} | {batch} | peak | {torch.cuda.max_memory_reserved() / 2**20:.0f} |", flush=True)
        gflop = peer.count_flops(lambda: call(module)) / 1e9
        if mode == "eager":
            m, compile_s = module, 0.0
        else:
            if name.endswith("unet"):
                module = module.to(memory_format=torch.channels_last)
            m = torch.compile(module, mode="reduce-overhead" if mode == "graphs" else None, fullgraph=True)
            t0 = time.time()
            call(m)
            torch.cuda.synchronize()
            compile_s = time.time() - t0
        # Nine jobs wait side by side beside kiln's tests: each gives back what its
        # allocator holds and does not use (a graph's pool stays); timing re-warms.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        with open(args.ready + ".tmp", "w") as f:
            f.write(f"{compile_s:.1f}\n")
        os.replace(args.ready + ".tmp", args.ready)
        while not os.path.exists(args.go):
            time.sleep(0.1)
        ms = peer.median_ms(lambda: call(m))
    print(f"| {name} | {batch} | {mode} | {ms:.2f} | {gflop:.0f} | {gflop / ms:.0f} |", flush=True)


def read(path):
    """A log's text; a crashed job's may hold anything."""
    with open(path, errors="replace") as f:
        return f.read()


class Job:
    def __init__(self, spec, index, logs):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "peak"):
            raise SystemExit(f"peer_jobs: a job is workload:mode or workload:mode:peak, not {spec!r}")
        self.workload, self.mode, self.peak = parts[0], parts[1], len(parts) == 3
        self.name = f"{self.workload} {self.mode}"
        base = os.path.join(logs, f"{index:02d}-{self.workload}-{self.mode}")
        self.log, self.ready, self.go = base + ".log", base + ".ready", base + ".go"
        self.proc = None
        self.state = "pending"  # pending, preparing, ready, done, failed

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the job and Inductor's compile workers
            except ProcessLookupError:
                pass


class Controller:
    def __init__(self, args):
        self.args = args
        self.jobs = [Job(spec, i, args.logs) for i, spec in enumerate(args.jobs)]
        self.paused = False
        self.pause_asked = False
        self.timing = False
        self.header = False
        self.t0 = time.time()
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "pause_asked", True))
        signal.signal(signal.SIGUSR2, lambda *_: setattr(self, "timing", True))
        signal.signal(signal.SIGTERM, self.terminate)

    def say(self, text):
        print(f"[peer +{time.time() - self.t0:.0f}s] {text}", file=sys.stderr, flush=True)

    def terminate(self, *_):
        self.kill_all()
        sys.exit(1)

    def live(self):
        return [j for j in self.jobs if j.proc and j.proc.poll() is None]

    def kill_all(self):
        for j in self.live():
            j.signal(signal.SIGKILL)

    def launch(self, j):
        cmd = [sys.executable, os.path.abspath(__file__), "job", "--peer", self.args.peer, "--dtype", self.args.dtype,
               "--ready", j.ready, "--go", j.go, j.workload, j.mode] + (["--peak"] if j.peak else [])
        with open(j.log, "w") as log:
            j.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        j.state = "preparing"
        self.say(f"{j.name}: preparing")

    def update(self):
        for j in self.jobs:
            if j.state == "preparing" and os.path.exists(j.ready):
                j.state = "ready"
                self.say(f"{j.name}: ready (compile {read(j.ready).strip()} s)")
            elif j.state in ("preparing", "ready") and j.proc.poll() is not None:
                j.state = "failed"
                self.say(f"{j.name}: exited ({j.proc.returncode}) before its timing; the end of its log:")
                for line in read(j.log).splitlines()[-6:]:
                    self.say(f"  {line}")

    def copy_rows(self, j, peak_only=False):
        for line in read(j.log).splitlines():
            if line.startswith("| workload"):
                if not self.header:
                    print(line.rstrip() + "\n|---|---|---|---|---|---|", flush=True)
                    self.header = True
            elif line.startswith("| ") and not line.startswith("|---"):
                if not peak_only or line.split("|")[3].strip() == "peak":
                    print(line.rstrip(), flush=True)

    def time_one(self, j):
        others = [o for o in self.live() if o is not j]
        for o in others:
            o.signal(signal.SIGSTOP)
        time.sleep(self.args.settle)  # what the stopped jobs had queued on the GPU drains
        open(j.go, "w").close()
        limit = min(self.args.timing_cap, self.args.deadline - time.time())
        try:
            j.proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            j.signal(signal.SIGKILL)
            j.proc.wait()
        for o in others:
            o.signal(signal.SIGCONT)
        j.state = "done" if j.proc.returncode == 0 else "failed"
        self.copy_rows(j)
        self.say(f"{j.name}: timed" if j.state == "done" else f"{j.name}: timing failed ({j.proc.returncode})")
        if j.mode == "graphs" and "skipping cudagraphs" in read(j.log):
            self.say(f"{j.name}: Inductor skipped CUDA graphs; its row is compile without them")

    def run(self):
        try:
            return self.loop()
        finally:  # whatever ends the loop, no job is left running or stopped
            self.kill_all()

    def loop(self):
        if os.path.isdir(self.args.logs):
            for name in os.listdir(self.args.logs):
                os.remove(os.path.join(self.args.logs, name))
        os.makedirs(self.args.logs, exist_ok=True)
        open(os.path.join(self.args.logs, "started"), "w").close()
        while True:
            self.update()
            if self.pause_asked and not self.paused and not self.timing:
                for j in self.live():
                    j.signal(signal.SIGSTOP)
                self.paused = True
                open(os.path.join(self.args.logs, "paused"), "w").close()
                self.say(f"paused for kiln's bench ({sum(j.state == 'ready' for j in self.jobs)} ready)")
            if self.timing and self.paused:
                for j in self.live():
                    j.signal(signal.SIGCONT)
                self.paused = False
                self.say("resumed: timing each job as it becomes ready")
            left = [j for j in self.jobs if j.state not in ("done", "failed")]
            if not left:
                return 0
            if time.time() > self.args.deadline:
                for j in left:
                    self.say(f"{j.name}: no time left ({j.state})")
                    if j.peak and j.proc:  # its peak row was measured before the wait
                        self.copy_rows(j, peak_only=True)
                self.kill_all()
                return 0
            if self.paused:
                time.sleep(0.2)
                continue
            ready = [j for j in left if j.state == "ready"]
            if self.timing and ready:
                self.time_one(ready[0])
                continue
            preparing = sum(j.state == "preparing" for j in self.jobs)
            for j in left:
                if j.state == "pending" and preparing < self.args.parallel:
                    self.launch(j)
                    preparing += 1
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("control")
    c.add_argument("--peer", required=True, help="the folder with bench_diffusers.py")
    c.add_argument("--logs", required=True)
    c.add_argument("--deadline", type=float, required=True, help="seconds since the epoch")
    c.add_argument("--parallel", type=int, default=3, help="jobs preparing at once")
    c.add_argument("--settle", type=float, default=1.0, help="seconds between stopping the others and timing")
    c.add_argument("--timing-cap", type=float, default=120.0, help="seconds at most for one job's timing")
    c.add_argument("--dtype", default="float16")
    c.add_argument("jobs", nargs="+")
    j = sub.add_parser("job")
    j.add_argument("--peer", required=True)
    j.add_argument("--ready", required=True)
    j.add_argument("--go", required=True)
    j.add_argument("--dtype", default="float16")
    j.add_argument("--peak", action="store_true")
    j.add_argument("workload")
    j.add_argument("mode", choices=["eager", "compile", "graphs"])
    args = ap.parse_args()
    if args.cmd == "job":
        job(args)
        return 0
    return Controller(args).run()


if __name__ == "__main__":
    sys.exit(main())
