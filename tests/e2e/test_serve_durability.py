"""No accepted job is lost across a kill and restart (--results-dir): the job journal.

A server is killed with SIGKILL (as the OOM killer or a power cut would end it) with
jobs queued and running, and started again on the same folder and port: finished jobs
and their images answer again, unfinished ones end failed with a reason (or, with
--resume-interrupted, run again from their seeds), Idempotency-Key retries get the same
jobs, a damaged journal does not stop the start, and SIGTERM leaves every record final.
"""

import http.server
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.parse

import pytest

from serve_helpers import BINARY, KilnServer, assert_same_picture, request, sse_events, wait_job

INTERRUPTED = "interrupted: the server stopped before this job finished (restart at "


def post_job(server, body, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    status, hdrs, job = request("POST", server.url + "/v1/jobs", body, headers)
    assert status in (200, 202), (status, job)
    return job


def get_job(server, job_id):
    status, _, job = request("GET", f"{server.url}/v1/jobs/{job_id}")
    assert status == 200, (status, job)
    return job


def wait_running(server, job_id, min_step=1, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = get_job(server, job_id)
        if job["status"] == "running" and job["progress"]["step"] >= min_step:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not start in {timeout} s")


def killed_while_running(tmp_path, prompt, steps):
    """A job of a server that is killed (SIGKILL) while the job runs; its record stays
    unfinished in tmp_path's journal."""
    s = KilnServer("--results-dir", tmp_path, "--max-batch", 1, "--batch-window-ms", 0)
    job = post_job(s, {"prompt": prompt, "steps": steps})
    wait_running(s, job["id"])
    assert s.kill() == -9
    return job


def image_of(server, url):
    """The image behind a result URL, asked of `server` (the URL may name an earlier one's port)."""
    status, hdrs, body = request("GET", server.url + urllib.parse.urlsplit(url).path)
    assert status == 200 and hdrs["Content-Type"] == "image/png", (status, body)
    return body


def metric(server, name):
    text = request("GET", server.url + "/metrics")[2].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def records(results_dir):
    return {p.stem: json.loads(p.read_text()) for p in (results_dir / "jobs").glob("job_*.json")}


class Hook(http.server.BaseHTTPRequestHandler):
    calls = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.calls.append(json.loads(body))
        self.send_response(Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.calls, Hook.status = [], 200
    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{hook.server_address[1]}/hook"
    hook.shutdown()


def test_sigkill_then_restart_serves_finished_jobs_and_fails_unfinished_ones(tmp_path, webhook):
    s = KilnServer("--results-dir", tmp_path, "--max-batch", 1, "--batch-window-ms", 0)
    done = post_job(s, {"prompt": "finished before the kill", "steps": 2, "seed": 3}, key="k-done")
    done = wait_job(s, done["id"])
    assert done["status"] == "succeeded", done
    picture = image_of(s, done["results"][0]["url"])
    running = post_job(s, {"prompt": "running at the kill", "steps": 150, "webhook_url": webhook},
                       key="k-running")
    queued = [post_job(s, {"prompt": f"queued at the kill {i}", "steps": 150}) for i in range(2)]
    wait_running(s, running["id"], min_step=2)
    assert get_job(s, queued[0]["id"])["status"] == "queued"
    assert s.kill() == -9
    port = s.port()
    on_disk = records(tmp_path)
    assert on_disk[running["id"]]["status"] == "running" and on_disk[running["id"]]["started_at"]
    assert [on_disk[q["id"]]["status"] for q in queued] == ["queued", "queued"]
    assert on_disk[done["id"]]["results"] == [f"{done['id']}-0.png"]
    assert "k-running" in json.dumps(on_disk[running["id"]])

    s2 = KilnServer("--results-dir", tmp_path, port=port)
    try:
        assert "1 finished jobs restored, 3 interrupted (failed)" in s2.stderr(), s2.stderr()
        # The finished job, its image and its events are as they were.
        again = get_job(s2, done["id"])
        assert again["status"] == "succeeded" and again["results"] == done["results"], again
        assert image_of(s2, done["results"][0]["url"]) == picture
        assert sse_events(s2, done["id"])[-1][1]["status"] == "succeeded"
        # Every unfinished one failed with the reason, the running one after its start.
        for job in [running] + queued:
            failed = get_job(s2, job["id"])
            assert failed["status"] == "failed" and failed["reason"].startswith(INTERRUPTED), failed
            assert failed["results"] == [] and failed["request"]["prompt"] == job["request"]["prompt"]
            kind, last = sse_events(s2, job["id"])[-1]
            assert (kind, last["status"]) == ("done", "failed"), (kind, last)
        assert get_job(s2, running["id"])["timings"]["queued_s"] < 5
        ends = {e["job_id"]: e for e in s2.access_log() if e.get("event") == "job_end"}
        assert set(ends) == {running["id"]} | {q["id"] for q in queued}, ends
        assert metric(s2, 'kiln_jobs_total{model="kiln-tiny",api="jobs",outcome="failed"}') == 3
        assert metric(s2, 'kiln_jobs_recovered_total{outcome="interrupted"}') == 3
        assert metric(s2, 'kiln_jobs_recovered_total{outcome="restored"}') == 1
        # Its webhook hears the outcome.
        deadline = time.time() + 10
        while not Hook.calls and time.time() < deadline:
            time.sleep(0.05)
        assert [(c["event"], c["job"]["id"]) for c in Hook.calls] == [("job.failed", running["id"])]
        assert Hook.calls[0]["job"]["reason"].startswith(INTERRUPTED)
        # A retry with the same Idempotency-Key gets the same job and outcome, not a new one.
        for key, job, body, status in [("k-done", done, {"prompt": "finished before the kill", "steps": 2,
                                                          "seed": 3}, "succeeded"),
                                       ("k-running", running, {"prompt": "running at the kill", "steps": 150,
                                                               "webhook_url": webhook}, "failed")]:
            code, hdrs, replay = request("POST", s2.url + "/v1/jobs", body, {"Idempotency-Key": key})
            assert code == 200 and hdrs.get("Idempotent-Replayed") == "true", (code, replay)
            assert replay["id"] == job["id"] and replay["status"] == status, replay
        code, _, body = request("POST", s2.url + "/v1/jobs", {"prompt": "another"}, {"Idempotency-Key": "k-done"})
        assert code == 422, (code, body)
        # And the restarted server works as before.
        fresh = wait_job(s2, post_job(s2, {"prompt": "after the restart", "steps": 2})["id"])
        assert fresh["status"] == "succeeded", fresh
    finally:
        assert s2.stop() == 0, s2.stderr()


def test_a_webhook_not_yet_delivered_at_the_kill_is_sent_after_the_restart(tmp_path, webhook):
    Hook.status = 500  # the receiver is down: kiln retries after 1 s, 2 s, 4 s
    s = KilnServer("--results-dir", tmp_path)
    job = wait_job(s, post_job(s, {"prompt": "hooked", "steps": 2, "webhook_url": webhook})["id"])
    assert job["status"] == "succeeded"
    deadline = time.time() + 10
    while not Hook.calls and time.time() < deadline:
        time.sleep(0.02)
    assert len(Hook.calls) == 1
    assert s.kill() == -9
    assert records(tmp_path)[job["id"]]["webhook_pending"] is True

    Hook.status = 200
    s2 = KilnServer("--results-dir", tmp_path)
    try:
        deadline = time.time() + 10
        while len(Hook.calls) < 2 and time.time() < deadline:
            time.sleep(0.02)
        assert [(c["event"], c["job"]["id"]) for c in Hook.calls] == [("job.succeeded", job["id"])] * 2
        # Delivered: the record says so, and the next start does not send it again.
        deadline = time.time() + 5
        while records(tmp_path)[job["id"]]["webhook_pending"] and time.time() < deadline:
            time.sleep(0.02)
        assert records(tmp_path)[job["id"]]["webhook_pending"] is False
    finally:
        assert s2.stop() == 0
    s3 = KilnServer("--results-dir", tmp_path)
    time.sleep(0.5)
    assert s3.stop() == 0 and len(Hook.calls) == 2


def test_restart_after_sigterm_finds_every_record_final(tmp_path):
    s = KilnServer("--results-dir", tmp_path, "--max-batch", 1, "--batch-window-ms", 0, "--drain-timeout", 1)
    quick = post_job(s, {"prompt": "quick", "steps": 2})
    wait_job(s, quick["id"])
    slow = [post_job(s, {"prompt": f"slow {i}", "steps": 150}) for i in range(3)]
    wait_running(s, slow[0]["id"])
    assert s.stop() == 0, s.stderr()
    # Every record on disk is final, and no temporary file is left.
    on_disk = records(tmp_path)
    assert set(on_disk) == {quick["id"]} | {j["id"] for j in slow}
    assert on_disk[quick["id"]]["status"] == "succeeded"
    for j in slow:
        assert on_disk[j["id"]]["status"] == "cancelled" and "drain timeout" in on_disk[j["id"]]["reason"]
    assert not [p for p in tmp_path.rglob(".*") if ".tmp." in p.name]

    s2 = KilnServer("--results-dir", tmp_path)
    try:
        assert "4 finished jobs restored, 0 interrupted" in s2.stderr(), s2.stderr()
        assert get_job(s2, quick["id"])["status"] == "succeeded"
        for j in slow:
            job = get_job(s2, j["id"])
            assert job["status"] == "cancelled" and "drain timeout" in job["reason"], job
        listed = request("GET", s2.url + "/v1/jobs")[2]["data"]
        assert [j["id"] for j in listed] == [j["id"] for j in reversed([quick] + slow)]
    finally:
        assert s2.stop() == 0


def test_damaged_journal_files_are_skipped_with_a_warning(tmp_path):
    s = KilnServer("--results-dir", tmp_path)
    good = wait_job(s, post_job(s, {"prompt": "good", "steps": 2})["id"])
    torn = wait_job(s, post_job(s, {"prompt": "torn", "steps": 2})["id"])
    assert s.stop() == 0
    jobs = tmp_path / "jobs"
    text = (jobs / f"{torn['id']}.json").read_text()
    (jobs / f"{torn['id']}.json").write_text(text[: len(text) // 2])  # a torn write
    (jobs / ("job_" + "0" * 32 + ".json")).write_text('{"kiln_job_record": 1, "id": 7}')
    (jobs / ("job_" + "1" * 32 + ".json")).write_bytes(os.urandom(300))
    leftover = jobs / f".{good['id']}.json.tmp.123.0"  # a crash in the middle of a write
    leftover.write_text('{"kiln_job_')
    orphan = tmp_path / ("job_" + "2" * 32 + "-0.png")  # an image whose record is gone
    orphan.write_bytes(b"\x89PNG")
    (jobs / "README").write_text("not a record")

    s2 = KilnServer("--results-dir", tmp_path)
    try:
        warnings = [l for l in s2.stderr_lines if "skipping the unreadable job record" in l]
        assert len(warnings) == 3, s2.stderr()
        assert "1 finished jobs restored" in s2.stderr() and "3 unreadable records skipped" in s2.stderr()
        assert get_job(s2, good["id"])["status"] == "succeeded"
        assert image_of(s2, good["results"][0]["url"])
        assert request("GET", f"{s2.url}/v1/jobs/{torn['id']}")[0] == 404
        assert not leftover.exists() and not orphan.exists()
        assert metric(s2, 'kiln_jobs_recovered_total{outcome="unreadable"}') == 3
        assert wait_job(s2, post_job(s2, {"prompt": "still works", "steps": 2})["id"])["status"] == "succeeded"
    finally:
        assert s2.stop() == 0


def test_expired_jobs_leave_with_their_records_and_images(tmp_path):
    s = KilnServer("--results-dir", tmp_path, "--max-jobs", 1)
    first = wait_job(s, post_job(s, {"prompt": "first", "steps": 2})["id"])
    image = tmp_path / f"{first['id']}-0.png"
    assert image.exists() and (tmp_path / "jobs" / f"{first['id']}.json").exists()
    second = wait_job(s, post_job(s, {"prompt": "second", "steps": 2})["id"])
    post_job(s, {"prompt": "third", "steps": 2})  # admission evicts beyond --max-jobs
    assert not image.exists() and not (tmp_path / "jobs" / f"{first['id']}.json").exists()
    assert s.stop() == 0

    # Past the TTL at a restart: dropped there, files and all.
    time.sleep(1.2)
    s3 = KilnServer("--results-dir", tmp_path, "--result-ttl", 1)
    try:
        assert request("GET", f"{s3.url}/v1/jobs/{second['id']}")[0] == 404
        assert not list(tmp_path.glob("job_*.png")) and not records(tmp_path), records(tmp_path)
        assert metric(s3, 'kiln_jobs_recovered_total{outcome="expired"}') == 2
    finally:
        assert s3.stop() == 0


def test_resume_interrupted_runs_jobs_again_from_their_seeds(tmp_path):
    body = {"prompt": "resumed after the kill", "steps": 40, "seed": 1234, "n": 2}
    s = KilnServer("--results-dir", tmp_path, "--max-batch", 1, "--batch-window-ms", 0)
    finished = wait_job(s, post_job(s, {"prompt": "finished", "steps": 2})["id"])
    job = post_job(s, body, key="k-resume")
    wait_running(s, job["id"], min_step=5)
    assert s.kill() == -9

    s2 = KilnServer("--results-dir", tmp_path, "--resume-interrupted", port=s.port())
    try:
        assert "1 resumed" in s2.stderr(), s2.stderr()
        done = wait_job(s2, job["id"])
        assert done["status"] == "succeeded" and done["resumes"] == 1 and len(done["results"]) == 2, done
        # The same request made afresh gives the same pictures: the seeds were kept.
        ref = wait_job(s2, post_job(s2, body)["id"])
        for a, b in zip(done["results"], ref["results"]):
            assert a["seed"] == b["seed"]
            assert_same_picture(image_of(s2, a["url"]), image_of(s2, b["url"]), f"image {a['index']}")
        # A retry of the interrupted request gets the resumed job.
        code, _, replay = request("POST", s2.url + "/v1/jobs", body, {"Idempotency-Key": "k-resume"})
        assert code == 200 and replay["id"] == job["id"] and replay["status"] == "succeeded"
        # The finished job was not run again.
        ends = [e["job_id"] for e in s2.access_log() if e.get("event") == "job_end"]
        assert finished["id"] not in ends and job["id"] in ends
    finally:
        assert s2.stop() == 0


def test_a_job_whose_images_reached_the_disk_is_not_run_again(tmp_path):
    s = KilnServer("--results-dir", tmp_path)
    job = wait_job(s, post_job(s, {"prompt": "made", "steps": 3, "n": 2})["id"])
    pictures = [image_of(s, r["url"]) for r in job["results"]]
    assert s.stop() == 0
    # As if the process died after the images were written, before the record said so.
    path = tmp_path / "jobs" / f"{job['id']}.json"
    record = json.loads(path.read_text())
    record.update(status="running", finished_at=None, results=[None, None])
    path.write_text(json.dumps(record))

    s2 = KilnServer("--results-dir", tmp_path, "--resume-interrupted")
    try:
        assert "1 completed from their images" in s2.stderr(), s2.stderr()
        again = get_job(s2, job["id"])
        assert again["status"] == "succeeded" and again.get("resumes") is None, again
        assert [image_of(s2, r["url"]) for r in again["results"]] == pictures
        assert metric(s2, 'kiln_batch_size_count{model="kiln-tiny"}') == 0  # no denoising step ran
    finally:
        assert s2.stop() == 0


def test_a_job_resumed_twice_is_not_resumed_a_third_time(tmp_path):
    job = killed_while_running(tmp_path, "keeps crashing the server", 150)
    path = tmp_path / "jobs" / f"{job['id']}.json"
    record = json.loads(path.read_text())
    assert record["status"] in ("queued", "running") and record["resumes"] == 0
    record["resumes"] = 2
    path.write_text(json.dumps(record))

    s2 = KilnServer("--results-dir", tmp_path, "--resume-interrupted")
    try:
        failed = get_job(s2, job["id"])
        assert failed["status"] == "failed" and failed["reason"].startswith(INTERRUPTED), failed
        assert "not resumed again after 2 resumes" in failed["reason"]
    finally:
        assert s2.stop() == 0


def test_stops_during_start_up_do_not_use_up_a_jobs_resumes(tmp_path):
    # An orchestrator that stops slow start-ups (SIGTERM during the warm-up) twice: the
    # job never ran again in them, so the third start still resumes it.
    job = killed_while_running(tmp_path, "interrupted, then slow starts", 30)
    path = tmp_path / "jobs" / f"{job['id']}.json"
    for _ in range(2):
        slow = KilnServer("--results-dir", tmp_path, "--resume-interrupted", "--warmup", "on",
                          "--max-batch", 32, ready=False)
        slow.proc.send_signal(15)
        assert slow.proc.wait(30) == 0, slow.stderr()
        assert "stopped before ready" in slow.stderr(), slow.stderr()
        record = json.loads(path.read_text())
        assert record["resumes"] == 0 and record["status"] in ("queued", "running"), record

    s3 = KilnServer("--results-dir", tmp_path, "--resume-interrupted")
    try:
        done = wait_job(s3, job["id"])
        assert done["status"] == "succeeded" and done["resumes"] == 1, done
    finally:
        assert s3.stop() == 0


def test_a_job_cancelled_while_the_models_load_is_not_resumed(tmp_path):
    job = killed_while_running(tmp_path, "cancelled before the resume", 30)

    s2 = KilnServer("--results-dir", tmp_path, "--resume-interrupted", "--warmup", "on",
                    "--max-batch", 32, ready=False)
    try:
        assert request("GET", s2.url + "/v2/health/ready")[0] == 503  # still warming up
        status, _, cancelled = request("DELETE", f"{s2.url}/v1/jobs/{job['id']}")
        assert status == 200 and cancelled["status"] == "cancelled", cancelled
        s2.wait_ready()
        deadline = time.time() + 30  # "ready:" comes after the resumes are queued
        while "kiln serve: ready:" not in s2.stderr() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a resumed job would be picked up by now
        again = get_job(s2, job["id"])
        assert again["status"] == "cancelled" and again.get("resumes") in (None, 0), again
        assert metric(s2, 'kiln_batch_size_count{model="kiln-tiny"}') == 0  # it never ran
    finally:
        assert s2.stop() == 0


def test_a_job_that_cannot_be_recorded_is_not_accepted(tmp_path):
    s = KilnServer("--results-dir", tmp_path)
    try:
        jobs = tmp_path / "jobs"
        jobs.rename(tmp_path / "jobs-away")
        jobs.write_text("a file where the journal's folder was")
        status, _, body = request("POST", s.url + "/v1/jobs", {"prompt": "nowhere to write", "steps": 2})
        assert status == 503 and "could not be recorded" in body["error"]["message"], (status, body)
        assert request("GET", s.url + "/v1/jobs")[2]["data"] == []
        jobs.unlink()
        (tmp_path / "jobs-away").rename(jobs)
        assert wait_job(s, post_job(s, {"prompt": "room again", "steps": 2})["id"])["status"] == "succeeded"
    finally:
        assert s.stop() == 0


def test_one_results_dir_one_server_and_the_startup_lines_say_what_is_kept(tmp_path):
    s = KilnServer("--results-dir", tmp_path)
    try:
        assert any("job journal" in l and str(tmp_path) in l for l in s.stderr_lines), s.stderr()
        r = subprocess.run([str(BINARY), "serve", "--port", "0", "--results-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "is in use by another kiln serve" in r.stderr, r.stderr
    finally:
        assert s.stop() == 0
    memory = KilnServer()
    try:
        assert any("in memory (jobs are lost when the process stops" in l for l in memory.stderr_lines)
    finally:
        assert memory.stop() == 0
    r = subprocess.run([str(BINARY), "serve", "--port", "0", "--resume-interrupted"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--resume-interrupted needs --results-dir" in r.stderr, r.stderr
