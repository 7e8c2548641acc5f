// The native job API: POST /v1/jobs, GET /v1/jobs[/{id}], DELETE /v1/jobs/{id},
// GET /v1/jobs/{id}/events (server-sent events) and GET /v1/results/{id}/{i}.{ext}.
#include <cstdlib>

#include "serve/http_context.h"

namespace kiln::serve {
namespace {

constexpr auto kKeepAlive = std::chrono::seconds(15);

std::string sse_event(uint64_t id, const std::string& type, const std::string& data) {
  std::string out;
  if (id) out += "id: " + std::to_string(id) + "\n";
  return out + "event: " + type + "\ndata: " + data + "\n\n";
}

nlohmann::json job_json(ServerParts& parts, const Job& job) {
  return job.to_json(job.state() == JobState::Queued ? parts.scheduler.queue_position(job) : -1);
}

}  // namespace

void register_job_routes(httplib::Server& server, ServerParts& parts) {
  server.Post("/v1/jobs",
              guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
                ParsedRequest parsed =
                    parse_job_request(parse_json_object(req.body), parts.config, parts.models);
                bool replayed = false;
                std::shared_ptr<Job> job = submit_job(parts, req, parsed, replayed);
                res.set_header("Location", "/v1/jobs/" + job->id());
                if (replayed) res.set_header("Idempotent-Replayed", "true");
                send_json(res, replayed ? 200 : 202, job_json(parts, *job));
              }));

  server.Get("/v1/jobs",
             guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
               long limit = 20;
               if (req.has_param("limit")) {
                 const std::string v = req.get_param_value("limit");
                 char* end = nullptr;
                 limit = std::strtol(v.c_str(), &end, 10);
                 if (v.empty() || *end || limit < 1 || limit > 1000)
                   throw ApiError(400, "limit must be a whole number from 1 to 1000", "limit");
               }
               nlohmann::json data = nlohmann::json::array();
               for (const auto& job :
                    parts.store.list(parts.keys.enabled() ? current_key_id() : "", size_t(limit)))
                 data.push_back(job_json(parts, *job));
               send_json(res, 200, {{"object", "list"}, {"data", data}});
             }));

  server.Get(R"(/v1/jobs/([A-Za-z0-9_]+))",
             guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
               const auto job = owned_job(parts, req.matches[1]);
               send_json(res, 200, job_json(parts, *job));
             }));

  server.Delete(R"(/v1/jobs/([A-Za-z0-9_]+))",
                guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
                  const auto job = owned_job(parts, req.matches[1]);
                  // A running job leaves its batch at the next step boundary; the others
                  // in the batch go on as they were.
                  if (job->finish(JobState::Cancelled, "cancelled by the client"))
                    parts.scheduler.poke(*job);
                  send_json(res, 200, job_json(parts, *job));
                }));

  server.Get(R"(/v1/jobs/([A-Za-z0-9_]+)/events)",
             guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
               struct Stream {
                 std::shared_ptr<Job> job;
                 uint64_t after = 0;
                 bool greeted = false;
               };
               auto stream = std::make_shared<Stream>();
               stream->job = owned_job(parts, req.matches[1]);
               // A reconnecting EventSource says where it was; otherwise every kept event is
               // replayed.
               const std::string last = req.get_header_value("Last-Event-ID");
               if (!last.empty()) stream->after = std::strtoull(last.c_str(), nullptr, 10);
               ++stream->job->watchers;
               res.set_header("Cache-Control", "no-cache");
               res.set_header("X-Accel-Buffering", "no");
               res.set_chunked_content_provider(
                   "text/event-stream",
                   [stream, &parts](size_t, httplib::DataSink& sink) {
                     auto write = [&](const std::string& text) {
                       return sink.write(text.data(), text.size());
                     };
                     if (!stream->greeted) {
                       stream->greeted = true;
                       return write("retry: 2000\n\n" +
                                    sse_event(0, "status", job_json(parts, *stream->job).dump()));
                     }
                     if (parts.stopping) {
                       sink.done();
                       return true;
                     }
                     const Job::EventBatch batch = stream->job->wait_events(
                         stream->after, Job::Clock::now() + kKeepAlive, parts.stopping);
                     if (batch.events.empty() && !batch.finished) return write(": keep-alive\n\n");
                     for (const JobEvent& e : batch.events) {
                       if (!write(sse_event(e.id, e.type, e.data))) return false;
                       stream->after = e.id;
                     }
                     if (batch.finished) sink.done();
                     return true;
                   },
                   [stream](bool) { --stream->job->watchers; });
             }));

  // Result URLs carry the unguessable job id and need no key, like OpenAI's image URLs.
  server.Get(R"(/v1/results/([A-Za-z0-9_]+)/([0-9]{1,4})\.(png|jpeg|webp))",
             public_route([&parts](const httplib::Request& req, httplib::Response& res) {
               const auto job = parts.store.find(req.matches[1]);
               const int index = std::atoi(req.matches[2].str().c_str());
               std::optional<StoredImage> image;
               if (job && format_name(job->spec().format) == req.matches[3].str())
                 image = job->image(index);
               if (!image)
                 throw ApiError(404, "no such result (it may have expired)", "", "not_found_error");
               res.set_header("Cache-Control", "private, max-age=3600");
               res.set_content(parts.store.read_image(*image),
                               std::string(content_type(job->spec().format)));
             }));
}

}  // namespace kiln::serve
