"""tools/py/peer_jobs.py, the peer's runs in gpu-check, against stand-ins for torch and the
peer's script: no job times before kiln's bench is over, none prepares while kiln's bench
runs, none runs while another one times, and a job that fails or runs out of time is
reported, not waited for."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PEER_JOBS = ROOT / "tools" / "py" / "peer_jobs.py"

# Every job writes "<time> <workload> beat" while it prepares and "<time> <workload>
# start|end" around its timing into one events file.
STUB_TORCH = '''
import contextlib, os, time
__version__ = "0.0-stub"
float16 = "float16"
channels_last = "channels_last"
def manual_seed(seed): pass
def inference_mode(): return contextlib.nullcontext()
def event(name, what):
    with open(os.environ["PEER_EVENTS"], "a") as f:
        f.write(f"{time.time():.4f} {name} {what}\\n")
def busy(name, seconds):  # stands for a compile or a model's set-up: stops when stopped
    end = time.time() + seconds
    while time.time() < end:
        event(name, "beat")
        time.sleep(0.02)
class _Cuda:
    def get_device_name(self, i): return "Stub GPU"
    def synchronize(self): pass
    def reset_peak_memory_stats(self): pass
    def empty_cache(self): pass
    def max_memory_reserved(self): return 1234 * 2**20
cuda = _Cuda()
class _Compiled:
    def __init__(self, module): self.module, self.compiled = module, False
    def __call__(self, *a):
        if not self.compiled:
            busy(self.module.name, self.module.compile_s)
            self.compiled = True
def compile(module, mode=None, fullgraph=False): return _Compiled(module)
'''

STUB_PEER = '''
import torch
CURRENT = None  # this process's one workload
class Module:
    def __init__(self, name):
        self.name = name
        self.compile_s = {"slow": 1.5, "forever": 100}.get(name.split("-")[0], 0.4)
    def to(self, memory_format=None): return self
    def __call__(self): pass
def workload(name, batch, dtype, model_dir):
    global CURRENT
    CURRENT = name
    if name == "broken":
        raise SystemExit("unknown workload broken")
    torch.busy(name, 0.2)
    return Module(name), lambda m: m()
def count_flops(fn): return 3e12
def median_ms(fn, warmup=3, iters=10):
    torch.event(CURRENT, "start")
    import time; time.sleep(0.3)
    torch.event(CURRENT, "end")
    return 1.5
'''


def start(tmp_path, jobs, deadline_s, parallel=2):
    peer = tmp_path / "peer"
    (peer / "torch").mkdir(parents=True)
    (peer / "torch" / "__init__.py").write_text(STUB_TORCH)
    (peer / "bench_diffusers.py").write_text(STUB_PEER)
    env = dict(os.environ, PEER_EVENTS=str(tmp_path / "events"))
    proc = subprocess.Popen(
        [sys.executable, str(PEER_JOBS), "control", "--peer", str(peer), "--logs", str(tmp_path / "logs"),
         "--deadline", str(time.time() + deadline_s), "--parallel", str(parallel), "--settle", "0.2", *jobs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Its signal handlers are in place once it says so.
    assert wait_for(tmp_path / "logs" / "started"), "the controller did not start"
    return proc


def wait_for(path, seconds=10):
    end = time.time() + seconds
    while not path.exists() and time.time() < end:
        time.sleep(0.05)
    return path.exists()


def events(tmp_path):
    rows = [line.split() for line in (tmp_path / "events").read_text().splitlines()]
    return [(float(t), name, what) for t, name, what in rows]


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "an earlier run's files"])
def test_jobs_time_alone_after_the_bench_and_not_during_it(tmp_path, stale):
    if stale:  # what a cut-off call leaves on a warm machine: go, ready and paused files
        logs = tmp_path / "logs"
        logs.mkdir()
        for name in ["00-a-unet-graphs.go", "00-a-unet-graphs.ready", "02-slow-compile.ready",
                     "02-slow-compile.go", "paused", "started"]:
            (logs / name).write_text("1.0\n")
    proc = start(tmp_path, ["a-unet:graphs", "b:eager:peak", "slow:compile", "broken:eager", "c:eager"], 40)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)  # kiln's bench is next
    assert wait_for(tmp_path / "logs" / "paused"), "the controller did not say it had stopped the jobs"
    bench_start = time.time()
    time.sleep(1.0)
    bench_end = time.time()
    proc.send_signal(signal.SIGUSR2)  # kiln's bench is over
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err

    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| workload")]
    assert sorted(rows) == sorted([
        "| a-unet | 2 | graphs | 1.50 | 3000 | 2000 |",
        "| b | 1 | peak | 1234 |",
        "| b | 1 | eager | 1.50 | 3000 | 2000 |",
        "| slow | 1 | compile | 1.50 | 3000 | 2000 |",
        "| c | 1 | eager | 1.50 | 3000 | 2000 |",
    ]), out
    assert out.splitlines()[0].startswith("| workload") and "(Stub GPU, torch 0.0-stub)" in out.splitlines()[0]
    assert "broken eager: exited" in err and "unknown workload broken" in err, err

    ev = events(tmp_path)
    during_bench = [e for e in ev if bench_start < e[0] < bench_end]
    assert not during_bench, f"jobs ran while kiln's bench had the GPU: {during_bench[:3]}"
    windows = {}
    for t, name, what in ev:
        if what in ("start", "end"):
            windows.setdefault(name, []).append(t)
    assert set(windows) == {"a-unet", "b", "slow", "c"}
    for name, (t0, t1) in windows.items():
        assert t0 > bench_end, f"{name} was timed before kiln's bench was over"
        others = [e for e in ev if t0 <= e[0] <= t1 and e[1] != name]
        assert not others, f"{others[0]} while {name} was being timed"


def test_a_job_that_does_not_get_ready_in_time_is_stopped_and_named(tmp_path):
    proc = start(tmp_path, ["forever:graphs:peak", "c:eager"], 4)
    proc.send_signal(signal.SIGUSR2)  # no bench stage: time at once
    t0 = time.time()
    out, err = proc.communicate(timeout=30)
    assert time.time() - t0 < 10, "the controller outlived its deadline"
    assert "| c | 1 | eager | 1.50 |" in out
    assert "forever graphs: no time left (preparing)" in err, err
    assert "| forever | 1 | peak | 1234 |" in out, "the peak measured before the wait was lost"
    beats = [e for e in events(tmp_path) if e[1] == "forever"]
    time.sleep(0.3)
    assert len([e for e in events(tmp_path) if e[1] == "forever"]) == len(beats), \
        "the job that ran out of time was left running"
