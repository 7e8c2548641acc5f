"""Admission: API keys (401/403, constant-time lookup, never logged), body size (413),
the bounded queue (429 + Retry-After), the per-key rate limit, request timeouts, and
webhooks with retries."""

import base64
import http.server
import json
import threading
import time

import pytest

from serve_helpers import KilnServer, request, wait_job

ALICE = "sk-alice-0123456789abcdef"
SHOP = "sk-shop-fedcba9876543210"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("# id  secret  models\n"
                    f"alice  {ALICE}  *\n"
                    f"shop   {SHOP}   other-model\n")
    return path


@pytest.fixture(scope="module")
def server(keys_file):
    s = KilnServer("--api-keys", keys_file, "--max-batch", 1, "--max-queue", 2,
                   "--max-body-bytes", 4096, "--request-timeout", 2, "--batch-window-ms", 0)
    yield s
    assert s.stop() == 0, s.stderr()


def bearer(secret):
    return {"Authorization": "Bearer " + secret}


def test_missing_and_unknown_keys_are_401(server):
    for headers in ({}, bearer("sk-wrong-0000000000000"), {"Authorization": "Token " + ALICE}):
        status, hdrs, body = request("POST", server.url + "/v1/jobs", {"prompt": "x"}, headers)
        assert status == 401 and body["error"]["type"] == "authentication_error", body
        assert hdrs["WWW-Authenticate"].startswith("Bearer")
    assert request("GET", server.url + "/v1/jobs")[0] == 401
    assert request("GET", server.url + "/sdapi/v1/sd-models")[0] == 401
    # Health, metrics and the page need no key.
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/"):
        assert request("GET", server.url + path)[0] == 200, path


def test_a_key_without_access_to_the_model_is_403(server):
    status, _, body = request("POST", server.url + "/v1/jobs", {"prompt": "x", "steps": 1}, bearer(SHOP))
    assert status == 403 and body["error"]["param"] == "model"
    assert request("GET", server.url + "/v1/models", headers=bearer(SHOP))[2]["data"] == []


def test_valid_key_bearer_and_basic_auth(server):
    status, _, job = request("POST", server.url + "/v1/jobs", {"prompt": "ok", "steps": 1}, bearer(ALICE))
    assert status == 202
    assert wait_job(server, job["id"], bearer(ALICE))["status"] == "succeeded"
    basic = {"Authorization": "Basic " + base64.b64encode(f"user:{ALICE}".encode()).decode()}
    assert request("GET", server.url + "/sdapi/v1/sd-models", headers=basic)[0] == 200
    # Another key cannot see alice's job.
    other = request("GET", f"{server.url}/v1/jobs/{job['id']}", headers=bearer(SHOP))
    assert other[0] == 404


def test_access_log_has_key_ids_never_keys(server):
    request("GET", server.url + "/v1/jobs", headers=bearer(ALICE))
    time.sleep(0.1)
    lines = server.access_log()
    requests = [l for l in lines if l.get("event") == "http_request"]
    assert requests and all({"request_id", "method", "path", "status", "duration_ms"} <= set(l) for l in requests)
    assert any(l["key_id"] == "alice" for l in requests)
    raw = "\n".join(server.stdout_lines + server.stderr_lines)
    assert ALICE not in raw and SHOP not in raw


def test_body_over_the_limit_is_413(server):
    status, _, body = request("POST", server.url + "/v1/jobs", {"prompt": "x" * 5000}, bearer(ALICE))
    assert status == 413 and "max-body-bytes" in body["error"]["message"]


def test_full_queue_is_429_with_retry_after(server):
    h = bearer(ALICE)
    jobs, rejected = [], None
    for i in range(6):
        status, hdrs, body = request("POST", server.url + "/v1/jobs", {"prompt": f"q{i}", "steps": 30}, h)
        if status == 429:
            rejected = (hdrs, body)
            break
        assert status == 202
        jobs.append(body)
    assert rejected, "the queue never filled"
    hdrs, body = rejected
    assert int(hdrs["Retry-After"]) >= 1 and "queue is full" in body["error"]["message"]
    assert len(jobs) == 3  # one running (--max-batch 1) and two queued (--max-queue 2)
    for j in jobs:
        assert wait_job(server, j["id"], h)["status"] == "succeeded"


def test_synchronous_request_timeout_is_504_and_cancels_the_job(server):
    status, hdrs, body = request("POST", server.url + "/v1/images/generations",
                                 {"prompt": "slow", "steps": 150}, bearer(ALICE))
    assert status == 504 and "timed out" in body["error"]["message"]
    job = wait_job(server, hdrs["X-Kiln-Job-Id"], bearer(ALICE))
    assert job["status"] == "cancelled" and "timed out" in job["reason"]


def test_rate_limit_per_key(keys_file):
    s = KilnServer("--api-keys", keys_file, "--rate-limit", 30)  # bursts of 5
    try:
        codes = [request("POST", s.url + "/v1/jobs", {"prompt": "r", "steps": 1}, bearer(ALICE))
                 for _ in range(7)]
        statuses = [c[0] for c in codes]
        assert statuses[:5] == [202] * 5 and statuses[5] == 429, statuses
        assert int(codes[5][1]["Retry-After"]) >= 1 and codes[5][2]["error"]["code"] == "rate_limit_exceeded"
    finally:
        assert s.stop() == 0


class Hook(http.server.BaseHTTPRequestHandler):
    calls = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.calls.append((self.headers["X-Kiln-Attempt"], json.loads(body)))
        self.send_response(500 if len(Hook.calls) == 1 else 200)  # fail once: kiln retries
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_retried_until_delivered():
    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    s = KilnServer()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/done"
        status, _, job = request("POST", s.url + "/v1/jobs", {"prompt": "hook", "steps": 2, "webhook_url": url})
        assert status == 202
        deadline = time.time() + 20
        while len(Hook.calls) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert [c[0] for c in Hook.calls] == ["1", "2"]
        payload = Hook.calls[1][1]
        assert payload["event"] == "job.succeeded" and payload["job"]["id"] == job["id"]
    finally:
        hook.shutdown()
        assert s.stop() == 0
