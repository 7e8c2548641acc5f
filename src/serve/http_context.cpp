#include "serve/http_context.h"

#include <cstdio>
#include <functional>

namespace kiln::serve {

RequestInfo& current_request() {
  thread_local RequestInfo info;
  return info;
}

std::string current_key_id() {
  const ApiKey* key = current_request().key;
  return key ? key->id : "anonymous";
}

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

void send_error(const httplib::Request& req, httplib::Response& res, const ApiError& error) {
  if (error.retry_after_s > 0) res.set_header("Retry-After", std::to_string(error.retry_after_s));
  if (req.path.rfind("/sdapi/", 0) == 0) {
    // FastAPI's HTTPException shape as A1111 returns it.
    send_json(
        res, error.status,
        {{"error", error.type}, {"detail", error.what()}, {"body", ""}, {"errors", error.what()}});
    return;
  }
  nlohmann::json e = {
      {"message", error.what()},
      {"type", error.type},
      {"param", error.param.empty() ? nlohmann::json() : nlohmann::json(error.param)},
      {"code", error.status == 429 ? nlohmann::json("rate_limit_exceeded") : nlohmann::json()}};
  send_json(res, error.status, {{"error", e}});
}

std::string base_url(const httplib::Request& req) {
  std::string host = req.get_header_value("Host");
  bool ok = !host.empty() && host.size() < 256;
  for (char c : host)
    ok = ok &&
         (std::isalnum(uint8_t(c)) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']');
  if (!ok) {
    const bool v6 = req.local_addr.find(':') != std::string::npos;
    host =
        (v6 ? "[" + req.local_addr + "]" : req.local_addr) + ":" + std::to_string(req.local_port);
  }
  return "http://" + host;
}

namespace {

// The secret of "Authorization: Bearer SECRET", or the password of Basic
// credentials (A1111 clients send --api-auth that way), or "".
std::string presented_secret(const httplib::Request& req) {
  const std::string auth = req.get_header_value("Authorization");
  if (auth.rfind("Bearer ", 0) == 0) return auth.substr(7);
  if (auth.rfind("Basic ", 0) == 0) {
    const std::string decoded = base64_decode(auth.substr(6));
    const size_t colon = decoded.find(':');
    return colon == std::string::npos ? "" : decoded.substr(colon + 1);
  }
  return "";
}

// FNV-1a (64 bits) of the method, path and body, in hex: an idempotency key reused with
// another request is a conflict. Spelled out, not std::hash, so that the hashes in the
// journal mean the same to the next build.
std::string request_hash(const httplib::Request& req) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const std::string* part : {&req.method, &req.path, &req.body}) {
    for (char c : *part) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
    h = (h ^ 0xff) * 0x100000001b3ull;  // a separator no UTF-8 text contains
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

void authenticate(ServerParts& parts, const httplib::Request& req, httplib::Response& res) {
  if (!parts.keys.enabled()) return;
  const std::string secret = presented_secret(req);
  res.set_header("WWW-Authenticate", "Bearer realm=\"kiln\"");
  if (secret.empty())
    throw ApiError(401, "missing API key: send \"Authorization: Bearer KEY\"", "",
                   "authentication_error");
  const ApiKey* key = parts.keys.find(secret);
  if (!key) throw ApiError(401, "invalid API key", "", "authentication_error");
  current_request().key = key;
}

}  // namespace

httplib::Server::Handler guarded(ServerParts& parts, HandlerFn f) {
  return [&parts, f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
    try {
      authenticate(parts, req, res);
      f(req, res);
    } catch (const ApiError& e) {
      send_error(req, res, e);
    }
  };
}

httplib::Server::Handler public_route(HandlerFn f) {
  return [f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const ApiError& e) {
      send_error(req, res, e);
    }
  };
}

std::shared_ptr<Job> submit_job(ServerParts& parts, const httplib::Request& req,
                                ParsedRequest& parsed, bool& replayed) {
  replayed = false;
  if (parts.draining)
    throw ApiError(503, "the server is shutting down and takes no new jobs", "", "server_error");
  const ApiKey* key = current_request().key;
  if (key && !key->allows_model(parsed.spec.model))
    throw ApiError(403, str("API key ", key->id, " may not use model \"", parsed.spec.model, "\""),
                   "model", "permission_error");
  if (const double wait = parts.limiter.acquire(current_key_id()); wait > 0) {
    ApiError e(429,
               str("rate limit of ", parts.config.rate_limit_per_minute,
                   " requests per minute exceeded for key ", current_key_id()),
               "", "rate_limit_exceeded");
    e.retry_after_s = int(std::ceil(wait));
    throw e;
  }
  const std::string idempotency_key = req.get_header_value("Idempotency-Key");
  if (idempotency_key.size() > 255)
    throw ApiError(400, "Idempotency-Key is longer than 255 characters", "Idempotency-Key");
  parsed.spec.idempotency_key = idempotency_key;
  parsed.spec.request_hash = request_hash(req);
  parsed.spec.base_url = base_url(req);
  auto job = std::make_shared<Job>(JobStore::new_id(), current_key_id(), std::move(parsed.spec),
                                   parts.on_job_end, parts.store.journal());
  const JobStore::Added added = parts.store.add(job);
  if (added.conflict)
    throw ApiError(422, "this Idempotency-Key was already used with a different request",
                   "Idempotency-Key", "idempotency_error");
  current_request().job_id = added.job->id();
  if (!added.created) {
    replayed = true;
    return added.job;
  }
  const auto admission = parts.scheduler.submit(job);
  if (admission == BatchScheduler::Admission::Accepted) {
    try {
      // The record is on disk before the client hears of the job (--results-dir).
      job->persist();
      return job;
    } catch (const Error& e) {
      job->discard("not accepted");
      parts.scheduler.poke(*job);
      parts.store.remove(job->id());
      std::fprintf(stderr, "kiln serve: error: %s\n", e.what());
      throw ApiError(503, str("the job could not be recorded, so it was not accepted: ", e.what()),
                     "", "server_error");
    }
  }
  job->discard("not accepted");
  parts.store.remove(job->id());
  if (admission == BatchScheduler::Admission::Stopped)
    throw ApiError(503, "the server is shutting down and takes no new jobs", "", "server_error");
  ApiError e(429,
             str("the queue is full (", parts.scheduler.queued_images(),
                 " images waiting, --max-queue ", parts.config.max_queue, "); retry later"),
             "", "rate_limit_exceeded");
  e.retry_after_s = parts.scheduler.retry_after_seconds();
  throw e;
}

std::shared_ptr<Job> owned_job(ServerParts& parts, const std::string& id) {
  std::shared_ptr<Job> job = parts.store.find(id);
  // Another key's job is as absent as one that never was.
  if (!job || (parts.keys.enabled() && job->key_id() != current_key_id()))
    throw ApiError(404, str("no job ", id), "id", "not_found_error");
  current_request().job_id = id;
  return job;
}

void wait_for_job(ServerParts& parts, Job& job) {
  const auto deadline = Job::Clock::now() + std::chrono::seconds(parts.config.request_timeout_s);
  if (job.wait_until_ended(deadline)) return;
  const std::string reason =
      str("request timed out after ", parts.config.request_timeout_s, " s (--request-timeout)");
  if (job.finish(JobState::Cancelled, reason)) {
    parts.scheduler.poke(job);
    throw ApiError(504, reason + "; the job was cancelled", "", "timeout");
  }
}

}  // namespace kiln::serve
