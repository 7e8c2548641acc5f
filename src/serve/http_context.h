// What the HTTP handlers share: the server's parts, the current request's identity,
// and the helpers every API uses to answer, fail and submit jobs.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "serve/api_keys.h"
#include "serve/api_requests.h"
#include "serve/batch_scheduler.h"
#include "serve/config.h"
#include "serve/job_store.h"
#include "serve/metrics.h"
#include "serve/model_registry.h"
#include "serve/webhooks.h"

namespace kiln::serve {

struct ServerParts {
  const ServeConfig& config;
  const ModelRegistry& models;
  JobStore& store;
  BatchScheduler& scheduler;
  Metrics& metrics;
  const ApiKeys& keys;
  RateLimiter& limiter;
  std::atomic<bool>& draining;           // SIGTERM: no new jobs
  std::atomic<bool>& stopping;           // event streams end
  std::function<void(Job&)> on_job_end;  // metrics and webhooks
};

// The request being served on this thread (set before routing, read by the
// handlers and the access log).
struct RequestInfo {
  bool active = false;
  std::string id;
  const ApiKey* key = nullptr;  // null: authentication is off
  std::chrono::steady_clock::time_point start;
  std::string job_id;  // the job a request made or touched, for the log
};
RequestInfo& current_request();
// "anonymous" when authentication is off.
std::string current_key_id();

void send_json(httplib::Response& res, int status, const nlohmann::json& body);
// The error in the shape of the API the path belongs to (OpenAI's for /v1, A1111's
// for /sdapi).
void send_error(const httplib::Request& req, httplib::Response& res, const ApiError& error);
// "http://host:port" as the client reached us (the Host header), for result URLs.
std::string base_url(const httplib::Request& req);

using HandlerFn = std::function<void(const httplib::Request&, httplib::Response&)>;
// Wraps a handler: with API keys on, the request must carry a known key (401
// otherwise); ApiErrors become their 4xx/5xx answers.
httplib::Server::Handler guarded(ServerParts& parts, HandlerFn f);
// The same without the key check (health, metrics, the page, result URLs).
httplib::Server::Handler public_route(HandlerFn f);

// Admission for a job-creating request: intake open, models ready, the key's rate
// limit and model access, the idempotency key, the queue bound. Returns the job
// (an earlier one for a repeated idempotency key: `replayed` is set).
std::shared_ptr<Job> submit_job(ServerParts& parts, const httplib::Request& req,
                                ParsedRequest& parsed, bool& replayed);

// The job `id` if the current key may see it, else a 404 ApiError.
std::shared_ptr<Job> owned_job(ServerParts& parts, const std::string& id);

// Waits for a synchronous request's job; past --request-timeout it is cancelled and a
// 504 ApiError thrown.
void wait_for_job(ServerParts& parts, Job& job);

void register_job_routes(httplib::Server& server, ServerParts& parts);
void register_openai_routes(httplib::Server& server, ServerParts& parts);
void register_a1111_routes(httplib::Server& server, ServerParts& parts);

}  // namespace kiln::serve
