"""Starting and stopping `kiln serve` for the end-to-end tests, and small HTTP helpers.

Each server listens on a free port (--port 0; the port is read from its start-up
line), its stdout (the JSON access log) and stderr are collected, stop() sends
SIGTERM and returns the exit status, kill() sends SIGKILL.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = pathlib.Path(os.environ.get("KILN_BIN", ROOT / "build" / "bin" / "kiln"))


class KilnServer:
    def __init__(self, *args, ready=True, port=0):
        self.args = [str(BINARY), "serve", "--port", str(port), *map(str, args)]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     encoding="utf-8", errors="replace")
        self.stdout_lines, self.stderr_lines = [], []
        self._port_found = threading.Event()
        self.url = None
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout_lines), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines, True), daemon=True).start()
        if not self._port_found.wait(30):
            self.proc.kill()
            raise RuntimeError("kiln serve did not start:\n" + self.stderr())
        if ready:
            self.wait_ready()

    def _drain(self, pipe, lines, look_for_port=False):
        for line in pipe:
            lines.append(line.rstrip("\n"))
            if look_for_port:
                m = re.search(r"listening on (http://[\d.]+:\d+)", line)
                if m:
                    self.url = m.group(1)
                    self._port_found.set()

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, _, _ = request("GET", self.url + "/v2/health/ready")
            if status == 200:
                return
            if self.proc.poll() is not None:
                raise RuntimeError("kiln serve exited:\n" + self.stderr())
            time.sleep(0.05)
        raise RuntimeError("kiln serve was not ready in time:\n" + self.stderr())

    def stderr(self):
        return "\n".join(self.stderr_lines)

    def access_log(self):
        return [json.loads(l) for l in self.stdout_lines if l.startswith("{")]

    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def kill(self):
        """SIGKILL, as the OOM killer or a power cut would end it: nothing is flushed."""
        self.proc.kill()
        return self.proc.wait(30)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def request(method, url, body=None, headers=None, timeout=120, raw=None):
    """(status, headers, parsed JSON or bytes). Never raises for HTTP error statuses."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and "Content-Type" not in req.headers:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            status, hdrs, payload = res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as e:
        status, hdrs, payload = e.code, dict(e.headers), e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, {}, None
    ctype = hdrs.get("Content-Type", "")
    if ctype.startswith("application/json"):
        return status, hdrs, json.loads(payload)
    return status, hdrs, payload


def wait_job(server, job_id, headers=None, timeout=120, until=("succeeded", "failed", "cancelled")):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, _, job = request("GET", f"{server.url}/v1/jobs/{job_id}", headers=headers)
        assert status == 200, (status, job)
        if job["status"] in until:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def sse_events(server, job_id, headers=None, timeout=120):
    """Every event of a job's stream until the server ends it: [(type, data)]."""
    req = urllib.request.Request(f"{server.url}/v1/jobs/{job_id}/events", headers=dict(headers or {}))
    events, kind, data = [], None, []
    with urllib.request.urlopen(req, timeout=timeout) as res:
        assert res.headers["Content-Type"].startswith("text/event-stream")
        for raw in res:
            line = raw.decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and kind:
                events.append((kind, json.loads("".join(data))))
                kind, data = None, []
    return events


def assert_same_picture(a, b, what):
    """Two encoded images show the same picture. Batching changes the GEMM shapes, and
    oneDNN may then round a last bit differently, so a pixel may be off by one level
    (the golden batching test allows the same, PSNR >= 60 dB); anything more is a bug."""
    import io

    import numpy
    from PIL import Image

    if a == b:
        return
    x = numpy.asarray(Image.open(io.BytesIO(a))).astype(int)
    y = numpy.asarray(Image.open(io.BytesIO(b))).astype(int)
    assert x.shape == y.shape, what
    diff = numpy.abs(x - y)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, \
        f"{what}: {int((diff > 0).sum())} values differ, by up to {int(diff.max())}"
