"""Start-up errors and shutdown: SIGTERM stops intake (503), lets running jobs finish,
cancels what the drain timeout leaves with a reason, and exits 0."""

import subprocess
import threading
import time

from serve_helpers import BINARY, KilnServer, request, sse_events


def one_line_error(*args):
    r = subprocess.run([str(BINARY), "serve", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    # The settings come first, one line each; then one line says what went wrong.
    errors = [l for l in r.stderr.splitlines() if l.startswith("kiln serve: error:") or "--help)" in l]
    assert len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr
    return errors[0]


def test_startup_errors_are_one_clear_line(tmp_path):
    assert "does not exist" in one_line_error("--port", 0, "--model", tmp_path / "nope")
    bad_keys = tmp_path / "keys.txt"
    bad_keys.write_text("alice short\n")
    assert "shorter than 16" in one_line_error("--port", 0, "--api-keys", bad_keys)
    assert "unknown batching mode" in one_line_error("--batching", "sometimes")
    assert "--max-batch" in one_line_error("--max-batch", 0)
    assert "--warmup is on or off" in one_line_error("--warmup", "maybe")


def test_warmup_runs_every_batch_size_before_ready():
    # Off by default on the CPU; asked for, it steps 1..--max-batch generations first.
    s = KilnServer("--warmup", "on", "--max-batch", 3)
    try:
        deadline = time.time() + 10  # stderr is read on a thread of its own
        while "warmed up" not in s.stderr() and time.time() < deadline:
            time.sleep(0.05)
        log = s.stderr()
        assert "warm-up: 1..3 generations" in log, log
        assert "kiln-tiny warmed up: 1..3 generations at 64x64" in log, log
        status, _, body = request("POST", s.url + "/v1/images/generations",
                                  {"prompt": "after warm-up", "steps": 2, "n": 1})
        assert status == 200, body
    finally:
        assert s.stop() == 0
    plain = KilnServer()
    try:
        assert "warm-up: none" in plain.stderr() and "warmed up" not in plain.stderr()
    finally:
        assert plain.stop() == 0


def test_sigterm_while_warming_up_stops_at_once_and_exits_0():
    # A stop signal during start-up ends it at the next warm-up bucket (on this
    # machine the whole warm-up of 1..32 generations takes several seconds), not
    # after every model has loaded and warmed up.
    s = KilnServer("--warmup", "on", "--max-batch", 32, ready=False)
    try:
        assert request("GET", s.url + "/v2/health/ready")[0] == 503
        sent = time.time()
        s.proc.send_signal(15)
        assert s.proc.wait(30) == 0, s.stderr()
        took = time.time() - sent
        log = s.stderr()
        assert "SIGTERM while starting" in log and "stopped before ready" in log, log
        assert "warmed up" not in log and "ready:" not in log, log
        assert took < 10, (took, log)  # the whole warm-up alone takes about 6 s here
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_port_in_use_is_a_clear_error():
    s = KilnServer()
    try:
        port = s.url.rsplit(":", 1)[1]
        assert "cannot listen" in one_line_error("--port", port)
    finally:
        assert s.stop() == 0


def test_sigterm_drains_running_jobs_cancels_the_rest_and_exits_0():
    s = KilnServer("--max-batch", 1, "--drain-timeout", 3, "--batch-window-ms", 0)
    running = request("POST", s.url + "/v1/jobs", {"prompt": "finishes", "steps": 20})[2]
    queued = [request("POST", s.url + "/v1/jobs", {"prompt": f"too long {i}", "steps": 150})[2]
              for i in range(2)]
    # Event streams opened now see each job to its end, after the server stops listening.
    finals = {}

    def watch(job_id):
        finals[job_id] = sse_events(s, job_id)[-1]

    watchers = [threading.Thread(target=watch, args=(j["id"],)) for j in [running] + queued]
    sync_result = {}
    watchers.append(threading.Thread(target=lambda: sync_result.update(
        r=request("POST", s.url + "/v1/images/generations", {"prompt": "sync", "steps": 150}))))
    for w in watchers:
        w.start()
    while request("GET", f"{s.url}/v1/jobs/{running['id']}")[2]["status"] != "running":
        time.sleep(0.01)
    time.sleep(0.2)
    s.proc.send_signal(15)
    time.sleep(0.3)
    status, _, body = request("POST", s.url + "/v1/jobs", {"prompt": "late", "steps": 1})
    assert status == 503 and "shutting down" in body["error"]["message"]
    assert request("GET", s.url + "/v2/health/ready")[0] == 503
    assert request("GET", s.url + "/v2/health/live")[0] == 200
    assert s.proc.wait(30) == 0, s.stderr()
    for w in watchers:
        w.join(10)
    # The running job finished; the rest were cancelled with a reason at the deadline.
    kind, job = finals[running["id"]]
    assert (kind, job["status"]) == ("done", "succeeded")
    for q in queued:
        kind, job = finals[q["id"]]
        assert kind == "done" and job["status"] == "cancelled" and "drain timeout" in job["reason"], job
    status, _, body = sync_result["r"]
    assert status == 503 and "drain timeout" in body["error"]["message"]
    ends = [l for l in s.access_log() if l.get("event") == "job_end"]
    assert len(ends) == 4 and all(e["status"] in ("succeeded", "cancelled") for e in ends)
