"""Step-level batching as clients see it: a batched request's image equals the image it
gives alone, cancelling one job mid-run leaves the others in its batch untouched,
100 concurrent clients all get their images, and the baseline modes work."""

import concurrent.futures
import time

import pytest

from serve_helpers import KilnServer, assert_same_picture, request, wait_job


@pytest.fixture(scope="module")
def server():
    s = KilnServer("--max-batch", 8, "--batch-window-ms", 50, "--http-threads", 128, "--max-queue", 1000)
    yield s
    assert s.stop() == 0, s.stderr()


def image_of(server, job):
    status, _, data = request("GET", job["results"][0]["url"])
    assert status == 200
    return data


def submit(server, body):
    status, _, job = request("POST", server.url + "/v1/jobs", body)
    assert status == 202, job
    return job


REQUESTS = [
    {"prompt": "a red circle on a blue background", "steps": 12, "seed": 1},
    {"prompt": "a yellow star at the top left", "steps": 8, "seed": 2, "sampler": "euler_a", "guidance_scale": 5},
    {"prompt": "a purple triangle", "steps": 10, "seed": 3, "sampler": "dpmpp_2m", "scheduler": "karras"},
    {"prompt": "no guidance", "steps": 6, "seed": 4, "guidance_scale": 1},
    {"prompt": "a green square", "steps": 9, "seed": 5, "sampler": "ddim", "negative_prompt": "red"},
]


def test_batched_images_equal_images_made_alone(server):
    alone = []
    for body in REQUESTS:
        alone.append(image_of(server, wait_job(server, submit(server, body)["id"])))
    # Now all at once, staggered so later ones join a running batch at step boundaries.
    jobs = []
    for body in REQUESTS:
        jobs.append(submit(server, body))
        time.sleep(0.03)
    done = [wait_job(server, j["id"]) for j in jobs]
    batch_sizes = request("GET", server.url + "/metrics")[2].decode()
    assert 'kiln_batch_size_bucket{model="kiln-tiny",le="1"}' in batch_sizes
    for body, d, a in zip(REQUESTS, done, alone):
        assert d["status"] == "succeeded"
        assert_same_picture(image_of(server, d), a, body["prompt"] + ": batched vs alone")
    # The batch really held several generations at once.
    counts = {}
    for line in batch_sizes.splitlines():
        if line.startswith('kiln_batch_size_bucket{model="kiln-tiny",le="1"}'):
            counts["le1"] = int(line.split()[-1])
        if line.startswith('kiln_batch_size_count{model="kiln-tiny"}'):
            counts["all"] = int(line.split()[-1])
    assert counts["all"] > counts["le1"], counts


def test_cancelling_mid_run_leaves_the_rest_of_the_batch_alone(server):
    bodies = [{"prompt": "keep me one", "steps": 30, "seed": 21},
              {"prompt": "cancel me", "steps": 60, "seed": 22},
              {"prompt": "keep me two", "steps": 40, "seed": 23}]
    alone = [image_of(server, wait_job(server, submit(server, b)["id"])) for b in (bodies[0], bodies[2])]
    jobs = [submit(server, b) for b in bodies]
    victim = jobs[1]["id"]
    for _ in range(2000):
        job = request("GET", f"{server.url}/v1/jobs/{victim}")[2]
        if job["progress"]["step"] >= 5:
            break
        time.sleep(0.005)
    assert job["status"] == "running" and 5 <= job["progress"]["step"] < 60
    status, _, cancelled = request("DELETE", f"{server.url}/v1/jobs/{victim}")
    assert status == 200 and cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled by the client"
    keep = [wait_job(server, jobs[0]["id"]), wait_job(server, jobs[2]["id"])]
    assert [k["status"] for k in keep] == ["succeeded", "succeeded"]
    for k, a in zip(keep, alone):
        assert_same_picture(image_of(server, k), a, k["request"]["prompt"])
    final = wait_job(server, victim)
    assert final["status"] == "cancelled" and final["results"] == []


def test_cancelling_a_queued_job(server):
    blockers = [submit(server, {"prompt": f"blocker {i}", "steps": 40}) for i in range(8)]
    # Until the scheduler has taken them all, a blocker may still be queued ahead (seen
    # on a loaded machine).
    for b in blockers:
        wait_job(server, b["id"], until=("running", "succeeded"))
    queued = submit(server, {"prompt": "queued", "steps": 40, "priority": -5})
    job = request("GET", f"{server.url}/v1/jobs/{queued['id']}")[2]
    assert job["status"] == "queued" and job["queue_position"] == 0
    status, _, cancelled = request("DELETE", f"{server.url}/v1/jobs/{queued['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    for b in blockers:
        assert wait_job(server, b["id"])["status"] == "succeeded"


def test_higher_priority_starts_first(server):
    blockers = [submit(server, {"prompt": f"busy {i}", "steps": 25}) for i in range(8)]
    for b in blockers:
        wait_job(server, b["id"], until=("running", "succeeded"))
    low = submit(server, {"prompt": "low", "steps": 4, "priority": -1})
    high = submit(server, {"prompt": "high", "steps": 4, "priority": 10})
    assert request("GET", f"{server.url}/v1/jobs/{high['id']}")[2]["queue_position"] == 0
    assert request("GET", f"{server.url}/v1/jobs/{low['id']}")[2]["queue_position"] == 1
    for j in blockers + [low, high]:
        wait_job(server, j["id"])


def test_hundred_concurrent_clients_no_errors_no_lost_job(server):
    def client(i):
        status, hdrs, body = request("POST", server.url + "/v1/images/generations",
                                     {"prompt": f"client {i}", "steps": 8, "seed": i}, timeout=300)
        return status, hdrs.get("X-Kiln-Job-Id"), body

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(client, range(100)))
    assert [s for s, _, _ in results] == [200] * 100, [b for s, _, b in results if s != 200][:3]
    ids = {job_id for _, job_id, _ in results}
    assert len(ids) == 100
    for job_id in ids:
        job = request("GET", f"{server.url}/v1/jobs/{job_id}")[2]
        assert job["status"] == "succeeded" and len(job["results"]) == 1


@pytest.mark.parametrize("mode", ["request", "none"])
def test_baseline_modes_make_the_same_images(mode):
    s = KilnServer("--batching", mode, "--max-batch", 4)
    try:
        bodies = REQUESTS[:3]
        jobs = [submit(s, b) for b in bodies]
        done = [wait_job(s, j["id"]) for j in jobs]
        assert all(d["status"] == "succeeded" for d in done)
        ref = KilnServer()
        try:
            for b, d in zip(bodies, done):
                assert_same_picture(image_of(s, d), image_of(ref, wait_job(ref, submit(ref, b)["id"])),
                                    mode + ": " + b["prompt"])
        finally:
            assert ref.stop() == 0
    finally:
        assert s.stop() == 0, s.stderr()
