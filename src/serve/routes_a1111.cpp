// AUTOMATIC1111's web UI API: POST /sdapi/v1/txt2img (synchronous), GET progress,
// POST interrupt, GET sd-models, samplers, schedulers, scripts and options.
#include <ctime>

#include "serve/http_context.h"

namespace kiln::serve {
namespace {

std::string timestamp(int64_t unix_seconds) {
  const std::time_t t = std::time_t(unix_seconds);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

// The "info" of a txt2img answer: a JSON string, as A1111 sends it.
std::string info_json(const Job& job, const TextToImagePipeline& pipeline) {
  const JobSpec& spec = job.spec();
  const ResolvedRequest& first = spec.images.front();
  const TextToImageRequest& q = first.request;
  nlohmann::json prompts = nlohmann::json::array(), negatives = nlohmann::json::array(),
                 seeds = nlohmann::json::array(), infotexts = nlohmann::json::array();
  for (int i = 0; i < job.images(); ++i) {
    if (!job.image(i)) continue;
    const ResolvedRequest& r = spec.images[size_t(i)];
    prompts.push_back(r.request.prompt);
    negatives.push_back(r.request.negative_prompt.value_or(""));
    seeds.push_back(r.request.seed);
    infotexts.push_back(pipeline.a1111_parameters(r));
  }
  nlohmann::json extra = nlohmann::json::object();
  if (q.schedule == SigmaSchedule::Karras) extra["Schedule type"] = "Karras";
  const nlohmann::json info = {
      {"prompt", q.prompt},
      {"all_prompts", prompts},
      {"negative_prompt", q.negative_prompt.value_or("")},
      {"all_negative_prompts", negatives},
      {"seed", q.seed},
      {"all_seeds", seeds},
      {"subseed", q.seed},
      {"all_subseeds", seeds},
      {"subseed_strength", 0},
      {"width", q.width},
      {"height", q.height},
      {"sampler_name", a1111_sampler_name(first.sampler, q.schedule)},
      {"cfg_scale", first.guidance_scale},
      {"steps", q.num_inference_steps},
      {"batch_size", job.images()},
      {"restore_faces", false},
      {"face_restoration_model", nullptr},
      {"sd_model_name", spec.model},
      {"sd_model_hash", nullptr},
      {"sd_vae_name", nullptr},
      {"sd_vae_hash", nullptr},
      {"seed_resize_from_w", -1},
      {"seed_resize_from_h", -1},
      {"denoising_strength", nullptr},
      {"extra_generation_params", extra},
      {"index_of_first_image", 0},
      {"infotexts", infotexts},
      {"styles", nlohmann::json::array()},
      {"job_timestamp", timestamp(job.created_unix())},
      {"clip_skip", 1},
      {"is_using_inpainting_conditioning", false},
      {"version", "kiln " KILN_VERSION},
  };
  return info.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// This key's A1111 jobs that have not ended, oldest first.
std::vector<std::shared_ptr<Job>> a1111_jobs(ServerParts& parts) {
  std::vector<std::shared_ptr<Job>> jobs;
  for (auto& job : parts.store.unfinished())
    if (job->spec().api == Api::A1111 &&
        (!parts.keys.enabled() || job->key_id() == current_key_id()))
      jobs.push_back(job);
  std::sort(jobs.begin(), jobs.end(),
            [](const auto& a, const auto& b) { return a->created_unix() < b->created_unix(); });
  return jobs;
}

}  // namespace

void register_a1111_routes(httplib::Server& server, ServerParts& parts) {
  server.Post(
      "/sdapi/v1/txt2img",
      guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
        ParsedRequest parsed =
            parse_a1111_request(parse_json_object(req.body), parts.config, parts.models);
        const nlohmann::json parameters = parsed.a1111_parameters;
        const bool send_images = parsed.send_images;
        bool replayed = false;
        const std::shared_ptr<Job> job = submit_job(parts, req, parsed, replayed);
        res.set_header("X-Kiln-Job-Id", job->id());
        wait_for_job(parts, *job);
        const JobState state = job->state();
        if (state != JobState::Succeeded) {
          const nlohmann::json j = job->to_json(-1);
          const std::string reason = j["reason"].is_string() ? j["reason"].get<std::string>() : "";
          throw ApiError(state == JobState::Failed ? 500 : 409,
                         str("generation ", state_name(state), ": ", reason), "",
                         state == JobState::Failed ? "GenerationFailed" : "Cancelled");
        }
        nlohmann::json images = nlohmann::json::array();
        for (int i = 0; i < job->images() && send_images; ++i)
          if (const auto image = job->image(i))
            images.push_back(base64_encode(parts.store.read_image(*image)));
        const TextToImagePipeline* pipeline = parts.models.find(job->spec().model);
        // A job restored from the journal (an Idempotency-Key replay) may name a model
        // this server does not offer.
        if (!pipeline)
          throw ApiError(
              404,
              str("model \"", job->spec().model, "\" of job ", job->id(), " is not served now"),
              "model", "not_found_error");
        send_json(
            res, 200,
            {{"images", images}, {"parameters", parameters}, {"info", info_json(*job, *pipeline)}});
      }));

  server.Get("/sdapi/v1/progress",
             guarded(parts, [&parts](const httplib::Request& req, httplib::Response& res) {
               const auto jobs = a1111_jobs(parts);
               std::shared_ptr<Job> current;
               for (const auto& job : jobs)
                 if (job->state() == JobState::Running) {
                   current = job;
                   break;
                 }
               nlohmann::json state = {{"skipped", false},
                                       {"interrupted", false},
                                       {"stopping_generation", false},
                                       {"job", ""},
                                       {"job_count", int(jobs.size())},
                                       {"job_timestamp", "0"},
                                       {"job_no", 0},
                                       {"sampling_step", 0},
                                       {"sampling_steps", 0}};
               double progress = 0, eta = 0;
               nlohmann::json current_image = nullptr;
               if (current) {
                 const auto [done, total] = current->steps();
                 const int per_image = total / std::max(1, current->images());
                 progress = total ? double(done) / total : 0.0;
                 const double elapsed = current->times().compute;
                 eta = progress > 0 ? elapsed * (1 - progress) / progress : 0.0;
                 state["job"] = current->id();
                 state["job_timestamp"] = timestamp(current->created_unix());
                 state["job_no"] = per_image ? done / per_image : 0;
                 state["sampling_step"] = per_image ? done % per_image : 0;
                 state["sampling_steps"] = per_image;
                 state["interrupted"] = current->interrupted();
                 const std::string preview = current->last_preview();
                 if (!preview.empty() && req.get_param_value("skip_current_image") != "true")
                   current_image = base64_encode(preview);
               }
               send_json(
                   res, 200,
                   {{"progress", progress},
                    {"eta_relative", eta},
                    {"state", state},
                    {"current_image", current_image},
                    {"textinfo", nullptr},
                    {"current_task", current ? nlohmann::json(current->id()) : nlohmann::json()}});
             }));

  server.Post("/sdapi/v1/interrupt",
              guarded(parts, [&parts](const httplib::Request&, httplib::Response& res) {
                // A1111 stops the job that is running; queued ones go on.
                for (const auto& job : a1111_jobs(parts))
                  if (job->state() == JobState::Running) {
                    job->interrupt();
                    parts.scheduler.poke(*job);
                  }
                send_json(res, 200, nlohmann::json::object());
              }));

  server.Get("/sdapi/v1/sd-models",
             guarded(parts, [&parts](const httplib::Request&, httplib::Response& res) {
               nlohmann::json models = nlohmann::json::array();
               const ApiKey* key = current_request().key;
               for (const ModelSpec& m : parts.models.specs())
                 if (!key || key->allows_model(m.name))
                   models.push_back({{"title", m.name},
                                     {"model_name", m.name},
                                     {"hash", nullptr},
                                     {"sha256", nullptr},
                                     {"filename", m.dir.string()},
                                     {"config", nullptr}});
               send_json(res, 200, models);
             }));

  server.Get(
      "/sdapi/v1/samplers", guarded(parts, [](const httplib::Request&, httplib::Response& res) {
        nlohmann::json samplers = nlohmann::json::array();
        for (const std::string& name : a1111_sampler_names()) {
          const auto parsed = parse_a1111_sampler(name);
          const bool karras = parsed->second == SigmaSchedule::Karras;
          samplers.push_back(
              {{"name", name},
               {"aliases", {std::string(sampler_name(parsed->first)) + (karras ? "_karras" : "")}},
               {"options",
                karras ? nlohmann::json{{"scheduler", "karras"}} : nlohmann::json::object()}});
        }
        send_json(res, 200, samplers);
      }));

  server.Get("/sdapi/v1/schedulers",
             guarded(parts, [](const httplib::Request&, httplib::Response& res) {
               send_json(res, 200,
                         nlohmann::json::array({{{"name", "automatic"},
                                                 {"label", "Automatic"},
                                                 {"aliases", nullptr},
                                                 {"default_rho", -1},
                                                 {"need_inner_model", false}},
                                                {{"name", "karras"},
                                                 {"label", "Karras"},
                                                 {"aliases", nullptr},
                                                 {"default_rho", 7.0},
                                                 {"need_inner_model", false}}}));
             }));

  server.Get(
      "/sdapi/v1/scripts", guarded(parts, [](const httplib::Request&, httplib::Response& res) {
        send_json(res, 200,
                  {{"txt2img", nlohmann::json::array()}, {"img2img", nlohmann::json::array()}});
      }));

  server.Get("/sdapi/v1/options",
             guarded(parts, [&parts](const httplib::Request&, httplib::Response& res) {
               send_json(res, 200,
                         {{"sd_model_checkpoint", parts.models.default_model()},
                          {"samples_format", "png"}});
             }));
}

}  // namespace kiln::serve
