"""kiln serve's endpoints over real HTTP: the native job API, OpenAI Images, A1111,
health, metrics and the page; validation errors name their field; bad input never
takes the server down."""

import base64
import io
import json
import socket

import pytest

from png_chunks import read_png
from serve_helpers import KilnServer, request, sse_events, wait_job


@pytest.fixture(scope="module")
def server():
    s = KilnServer("--inject-faults", "--max-images", 4, "--max-steps", 200, "--preview-every", 2)
    yield s
    assert s.stop() == 0, s.stderr()


def post_job(server, body, headers=None):
    status, hdrs, job = request("POST", server.url + "/v1/jobs", body, headers)
    assert status == 202, job
    return job


def png_info(data, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(data)
    return read_png(path)


# --- health, metrics, page ---------------------------------------------------------

def test_health_endpoints(server):
    assert request("GET", server.url + "/v2/health/live")[0] == 200
    status, _, body = request("GET", server.url + "/v2/health/ready")
    assert (status, body) == (200, {"ready": True})


def test_metrics_are_prometheus_text_with_the_documented_names(server):
    post_job(server, {"prompt": "metrics", "steps": 2})
    wait_job(server, request("GET", server.url + "/v1/jobs?limit=1")[2]["data"][0]["id"])
    status, hdrs, text = request("GET", server.url + "/metrics")
    assert status == 200 and hdrs["Content-Type"].startswith("text/plain")
    text = text.decode()
    for name in ("kiln_http_requests_total", "kiln_jobs_total", "kiln_images_generated_total",
                 "kiln_job_queue_seconds_bucket", "kiln_job_compute_seconds_bucket",
                 "kiln_job_latency_seconds_bucket", "kiln_batch_size_bucket", "kiln_step_seconds_bucket",
                 "kiln_queue_depth", "kiln_running_generations", "kiln_device_memory_bytes", "kiln_ready"):
        assert f"\n{name}" in text, name
    assert 'kiln_http_requests_total{endpoint="/v1/jobs",method="POST",code="202"}' in text
    assert "kiln_ready 1" in text


def test_page_is_served(server):
    status, hdrs, body = request("GET", server.url + "/")
    assert status == 200 and hdrs["Content-Type"].startswith("text/html")
    assert b"/v1/jobs" in body and b"<script>" in body


def test_unknown_route_is_a_json_404(server):
    status, _, body = request("GET", server.url + "/v1/nope")
    assert status == 404 and "no route" in body["error"]["message"]


# --- native jobs ---------------------------------------------------------------------

def test_job_lifecycle_status_events_and_result_url(server, tmp_path):
    job = post_job(server, {"prompt": "a red circle on a blue background", "steps": 6, "seed": 11})
    assert job["status"] in ("queued", "running") and job["id"].startswith("job_")
    events = sse_events(server, job["id"])
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "done", kinds
    progress = [d for k, d in events if k == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 7))
    assert all(p["steps"] == 6 for p in progress)
    assert any(k == "preview" for k in kinds), "a watched job gets previews"
    done = events[-1][1]
    assert done["status"] == "succeeded" and done["progress"]["fraction"] == 1.0
    assert done["timings"]["total_s"] >= done["timings"]["compute_s"] > 0
    url = done["results"][0]["url"]
    status, hdrs, png = request("GET", url)  # result URLs need no key
    assert status == 200 and hdrs["Content-Type"] == "image/png"
    info = png_info(png, tmp_path)
    assert (info["width"], info["height"]) == (64, 64)
    assert "Seed: 11" in info["text"]["parameters"] and "Steps: 6" in info["text"]["parameters"]
    # GET /v1/jobs/{id} says the same; the job is in the list.
    status, _, again = request("GET", f"{server.url}/v1/jobs/{job['id']}")
    assert status == 200 and again["status"] == "succeeded" and again["results"] == done["results"]
    listed = request("GET", server.url + "/v1/jobs?limit=50")[2]["data"]
    assert job["id"] in [j["id"] for j in listed]


def test_late_event_stream_replays_to_the_end(server):
    job = post_job(server, {"prompt": "late", "steps": 3})
    wait_job(server, job["id"])
    events = sse_events(server, job["id"])
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    assert any(k == "image" for k, _ in events)


def test_jpeg_and_webp_results(server):
    for fmt, magic in (("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        job = post_job(server, {"prompt": "formats", "steps": 2, "output_format": fmt})
        done = wait_job(server, job["id"])
        url = done["results"][0]["url"]
        assert url.endswith("." + fmt)
        status, hdrs, data = request("GET", url)
        assert status == 200 and hdrs["Content-Type"] == "image/" + fmt and data.startswith(magic)


def test_n_images_have_consecutive_seeds(server):
    job = post_job(server, {"prompt": "several", "steps": 2, "n": 3, "seed": 100})
    done = wait_job(server, job["id"])
    assert [r["seed"] for r in done["results"]] == [100, 101, 102]


def test_delete_a_queued_or_finished_job(server):
    # A finished job stays as it was.
    job = post_job(server, {"prompt": "finished", "steps": 1})
    wait_job(server, job["id"])
    status, _, after = request("DELETE", f"{server.url}/v1/jobs/{job['id']}")
    assert status == 200 and after["status"] == "succeeded"
    status, _, body = request("DELETE", f"{server.url}/v1/jobs/job_doesnotexist")
    assert status == 404


def test_idempotency_key_returns_the_same_job(server):
    headers = {"Idempotency-Key": "order-42"}
    body = {"prompt": "idempotent", "steps": 2}
    status1, _, first = request("POST", server.url + "/v1/jobs", body, headers)
    status2, hdrs2, second = request("POST", server.url + "/v1/jobs", body, headers)
    assert (status1, status2) == (202, 200)
    assert first["id"] == second["id"] and hdrs2.get("Idempotent-Replayed") == "true"
    status3, _, conflict = request("POST", server.url + "/v1/jobs", {"prompt": "other", "steps": 2}, headers)
    assert status3 == 422 and conflict["error"]["param"] == "Idempotency-Key"
    wait_job(server, first["id"])


def test_step_failure_fails_that_batch_with_a_reason_and_the_server_goes_on(server):
    # Every job in a failing batch fails with the step's reason; these run one after the other.
    bad = post_job(server, {"prompt": "boom [[kiln:fail-step]]", "steps": 3})
    failed = wait_job(server, bad["id"])
    oom = post_job(server, {"prompt": "big [[kiln:oom]]", "steps": 3})
    out_of_memory = wait_job(server, oom["id"])
    assert failed["status"] == "failed" and "injected fault" in failed["reason"]
    assert out_of_memory["status"] == "failed" and "out of memory" in out_of_memory["reason"]
    ok = post_job(server, {"prompt": "after the failure", "steps": 2})
    assert wait_job(server, ok["id"])["status"] == "succeeded"


# --- validation -------------------------------------------------------------------------

@pytest.mark.parametrize("body, param, words", [
    ({}, "prompt", "required"),
    ({"prompt": 5}, "prompt", "must be a string"),
    ({"prompt": "x" * 32001}, "prompt", "longer than"),
    ({"prompt": "x", "size": "100x64"}, "size", "multiples of 8"),
    ({"prompt": "x", "size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": "4096x4096"}, "size", "at most"),
    ({"prompt": "x", "width": 63}, "width", "multiples of 8"),
    ({"prompt": "x", "steps": 0}, "steps", "between 1 and 200"),
    ({"prompt": "x", "steps": "ten"}, "steps", "must be an integer"),
    ({"prompt": "x", "steps": 2.5}, "steps", "must be an integer"),
    ({"prompt": "x", "n": 5}, "n", "between 1 and 4"),
    ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "between 0 and 100"),
    ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale", "must be a number"),
    ({"prompt": "x", "seed": "abc"}, "seed", "-1 for a random seed"),
    ({"prompt": "x", "seed": -5}, "seed", "-1 for a random seed"),
    ({"prompt": "x", "sampler": "heun"}, "sampler", "unknown sampler"),
    ({"prompt": "x", "sampler": "ddim", "scheduler": "karras"}, "sampler", "no Karras variant"),
    ({"prompt": "x", "scheduler": "exponential"}, "scheduler", "karras"),
    ({"prompt": "x", "model": "sdxl"}, "model", "unknown model"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "png, jpeg or webp"),
    ({"prompt": "x", "priority": 1000}, "priority", "between -100 and 100"),
    ({"prompt": "x", "webhook_url": "ftp://x"}, "webhook_url", "http://"),
    ({"prompt": "x", "colour": "red"}, "colour", "unknown field"),
])
def test_job_validation_names_the_field(server, body, param, words):
    status, _, err = request("POST", server.url + "/v1/jobs", body)
    assert status == 400, err
    assert err["error"]["param"] == param and words in err["error"]["message"], err


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b"null", b'"text"', b"{\"prompt\": \"\xff\xfe\"}",
                                 b"{\"prompt\": \"x\",}", b"\x00\x01\x02", b"{" * 5000,
                                 b'{"prompt": "x", "deep": ' + b"[" * 100000 + b"]" * 100000 + b"}"])
def test_malformed_json_is_a_400(server, raw):
    for path in ("/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img"):
        status, _, err = request("POST", server.url + path, raw=raw)
        assert status == 400, (path, err)
    status, _, err = request("POST", server.url + "/v1/jobs", raw=raw)
    assert status == 400 and ("malformed JSON" in err["error"]["message"]
                              or "must be a JSON object" in err["error"]["message"]), err


def test_garbage_on_the_socket_does_not_hurt_the_server(server):
    host, port = server.url[len("http://"):].split(":")
    for payload in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                    b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
                    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00"):
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(payload)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert request("GET", server.url + "/v2/health/live")[0] == 200


# --- OpenAI ------------------------------------------------------------------------------

def test_openai_client_generates_b64_and_url_images(server, tmp_path):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    r = client.images.generate(prompt="a yellow star", model="kiln-tiny", size="64x64", n=2,
                               response_format="b64_json",
                               extra_body={"steps": 4, "seed": 3, "negative_prompt": "blur", "sampler": "euler_a"})
    assert r.created > 0 and len(r.data) == 2 and r.output_format == "png" and r.size == "64x64"
    info = png_info(base64.b64decode(r.data[0].b64_json), tmp_path)
    assert "Sampler: Euler a" in info["text"]["parameters"] and "Seed: 3" in info["text"]["parameters"]
    r = client.images.generate(prompt="a yellow star", response_format="url", output_format="webp",
                               extra_body={"steps": 2})
    assert r.data[0].url.startswith(server.url + "/v1/results/") and r.data[0].url.endswith(".webp")
    assert request("GET", r.data[0].url)[0] == 200
    models = client.models.list()
    assert [m.id for m in models.data] == ["kiln-tiny"]


def test_openai_client_sees_validation_errors(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", size="100x100")
    assert "multiples of 8" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", model="dall-e-3")
    assert "unknown model" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", extra_body={"bogus": 1})
    assert "Unknown parameter" in str(e.value)


def test_openai_request_shape_over_plain_http(server):
    status, hdrs, body = request("POST", server.url + "/v1/images/generations",
                                 {"prompt": "plain", "steps": 2, "quality": "auto", "user": "u1"})
    assert status == 200 and set(body) >= {"created", "data"} and "b64_json" in body["data"][0]
    assert hdrs["X-Kiln-Job-Id"].startswith("job_")
    status, _, err = request("POST", server.url + "/v1/images/generations", {"prompt": "x", "stream": True})
    assert status == 400 and err["error"]["param"] == "stream"


# --- A1111 -------------------------------------------------------------------------------

def test_webuiapi_client_txt2img_with_a1111_sampler_names(server):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))
    r = api.txt2img(prompt="a blue square", negative_prompt="red", seed=7, steps=4, cfg_scale=6.0,
                    width=64, height=64, sampler_name="DPM++ 2M Karras", batch_size=2, n_iter=1)
    assert len(r.images) == 2 and r.images[0].size == (64, 64)
    assert r.info["all_seeds"] == [7, 8] and r.info["sampler_name"] == "DPM++ 2M Karras"
    assert r.info["infotexts"][0].startswith("a blue square\nNegative prompt: red\nSteps: 4")
    assert r.images[0].info["parameters"] == r.info["infotexts"][0]
    assert r.parameters["seed"] == 7 and r.parameters["cfg_scale"] == 6.0
    # The newer separate scheduler field.
    r = api.txt2img(prompt="x", seed=1, steps=2, width=64, height=64, sampler_name="Euler", scheduler="Karras")
    assert "Sampler: Euler Karras" in r.info["infotexts"][0]
    names = [s["name"] for s in api.get_samplers()]
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"} <= set(names)
    assert api.get_sd_models()[0]["model_name"] == "kiln-tiny"
    progress = api.get_progress()
    assert {"progress", "eta_relative", "state", "current_image"} <= set(progress)
    assert api.interrupt() == {}


def test_a1111_random_seed_and_errors(server):
    status, _, body = request("POST", server.url + "/sdapi/v1/txt2img",
                              {"prompt": "x", "seed": -1, "steps": 2, "width": 64, "height": 64})
    assert status == 200
    info = json.loads(body["info"])
    assert 0 <= info["seed"] < 2 ** 32 and body["parameters"]["seed"] == info["seed"]
    status, _, err = request("POST", server.url + "/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Heun"})
    assert status == 400 and "unknown sampler" in err["detail"]
    status, _, err = request("POST", server.url + "/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True})
    assert status == 400 and "enable_hr" in err["detail"]


def test_a1111_interrupt_returns_what_the_running_job_has(server):
    import threading
    result = {}

    def call():
        result["r"] = request("POST", server.url + "/sdapi/v1/txt2img",
                              {"prompt": "interrupt me", "steps": 200, "width": 64, "height": 64})

    t = threading.Thread(target=call)
    t.start()
    for _ in range(500):
        p = request("GET", server.url + "/sdapi/v1/progress")[2]
        if p["state"]["sampling_step"] >= 3:
            break
        import time
        time.sleep(0.01)
    assert p["progress"] > 0 and p["state"]["sampling_steps"] == 200
    assert request("POST", server.url + "/sdapi/v1/interrupt")[0] == 200
    t.join(60)
    status, _, body = result["r"]
    assert status == 200 and len(body["images"]) == 1
