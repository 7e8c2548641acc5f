// OpenAI Images: POST /v1/images/generations (synchronous), GET /v1/models[/{id}].
#include "serve/http_context.h"

namespace kiln::serve {
namespace {

nlohmann::json model_json(const std::string& name, int64_t created) {
  return {{"id", name}, {"object", "model"}, {"created", created}, {"owned_by", "kiln"}};
}

// Throws the error a job that did not succeed answers with.
void raise_unless_succeeded(const Job& job, const nlohmann::json& snapshot) {
  const JobState state = job.state();
  if (state == JobState::Succeeded) return;
  const std::string reason = snapshot.value("reason", nlohmann::json()).is_string()
                                 ? snapshot["reason"].get<std::string>()
                                 : std::string(state_name(state));
  if (state == JobState::Failed)
    throw ApiError(500, "generation failed: " + reason, "", "server_error");
  throw ApiError(reason.rfind("server shutting down", 0) == 0 ? 503 : 409,
                 "generation cancelled: " + reason, "", "cancelled");
}

}  // namespace

void register_openai_routes(httplib::Server& server, ServerParts& parts) {
  server.Post(
      "/v1/images/generations",
      guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
        ParsedRequest parsed =
            parse_openai_request(parse_json_object(req.body), parts.config, parts.models);
        const bool b64 = parsed.b64_json;
        bool replayed = false;
        const std::shared_ptr<Job> job = submit_job(parts, req, parsed, replayed);
        res.set_header("X-Kiln-Job-Id", job->id());
        wait_for_job(parts, *job);
        raise_unless_succeeded(*job, job->to_json(-1));
        const JobSpec& spec = job->spec();
        nlohmann::json data = nlohmann::json::array();
        for (int i = 0; i < job->images(); ++i) {
          const auto image = job->image(i);
          if (!image) continue;
          if (b64)
            data.push_back({{"b64_json", base64_encode(parts.store.read_image(*image))}});
          else
            data.push_back({{"url", spec.base_url + result_path(job->id(), i, spec.format)}});
        }
        const TextToImageRequest& q = spec.images.front().request;
        send_json(res, 200,
                  {{"created", job->created_unix()},
                   {"data", data},
                   {"background", "opaque"},
                   {"output_format", format_name(spec.format)},
                   {"size", std::to_string(q.width) + "x" + std::to_string(q.height)}});
      }));

  server.Get("/v1/models",
             guarded(parts, [&parts](const httplib::Request&, httplib::Response& res) {
               nlohmann::json data = nlohmann::json::array();
               const ApiKey* key = current_request().key;
               for (const ModelSpec& m : parts.models.specs())
                 if (!key || key->allows_model(m.name)) data.push_back(model_json(m.name, 0));
               send_json(res, 200, {{"object", "list"}, {"data", data}});
             }));

  server.Get(R"(/v1/models/([^/]+))",
             guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
               const std::string name = req.matches[1];
               const ApiKey* key = current_request().key;
               if (!parts.models.known(name) || (key && !key->allows_model(name)))
                 throw ApiError(404, str("no model \"", name, "\""), "model", "not_found_error");
               send_json(res, 200, model_json(name, 0));
             }));
}

}  // namespace kiln::serve
