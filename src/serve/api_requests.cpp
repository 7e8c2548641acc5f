#include "serve/api_requests.h"

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "serve/webhooks.h"

namespace kiln::serve {
namespace {

using nlohmann::json;

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, message, param);
}

std::string type_of(const json& v) {
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Typed, range-checked access to the fields of a request object; a missing field
// and a null one are the same.
class Fields {
 public:
  explicit Fields(const json& body) : body_(body) {}

  bool has(const std::string& name) const {
    auto it = body_.find(name);
    return it != body_.end() && !it->is_null();
  }
  const json* get(const std::string& name) const {
    auto it = body_.find(name);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<std::string> string(const std::string& name) const {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw bad(name, str(name, " must be a string, got ", type_of(*v)));
    return v->get<std::string>();
  }
  std::optional<int64_t> integer(const std::string& name, int64_t lo, int64_t hi) const {
    const json* v = get(name);
    if (!v) return std::nullopt;
    int64_t n;
    if (v->is_number_integer()) {
      if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(hi))
        throw bad(name, str(name, " must be between ", lo, " and ", hi, ", got ", v->dump()));
      n = v->get<int64_t>();
    } else if (v->is_number_float() && std::isfinite(v->get<double>()) &&
               v->get<double>() == std::floor(v->get<double>()) &&
               std::fabs(v->get<double>()) < 1e15) {
      n = int64_t(v->get<double>());  // 20.0 is 20, as pydantic reads it
    } else {
      throw bad(name, str(name, " must be an integer, got ", type_of(*v)));
    }
    if (n < lo || n > hi)
      throw bad(name, str(name, " must be between ", lo, " and ", hi, ", got ", n));
    return n;
  }
  std::optional<double> number(const std::string& name, double lo, double hi) const {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw bad(name, str(name, " must be a number, got ", type_of(*v)));
    const double d = v->get<double>();
    if (!(d >= lo && d <= hi))
      throw bad(name, str(name, " must be between ", lo, " and ", hi, ", got ", v->dump()));
    return d;
  }
  std::optional<bool> boolean(const std::string& name) const {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw bad(name, str(name, " must be true or false, got ", type_of(*v)));
    return v->get<bool>();
  }
  // A seed: 0 .. 2^64-1, or -1 (and absent) for a random one.
  std::optional<uint64_t> seed(const std::string& name) const {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (v->is_number_unsigned()) return v->get<uint64_t>();
    if (v->is_number_integer() && v->get<int64_t>() == -1) return std::nullopt;
    if (v->is_number_float() && v->get<double>() == -1.0) return std::nullopt;
    if (v->is_number_float() && v->get<double>() >= 0 && v->get<double>() < 1.8e19 &&
        v->get<double>() == std::floor(v->get<double>()))
      return uint64_t(v->get<double>());
    throw bad(name, str(name,
                        " must be an integer from 0 to 18446744073709551615, or -1 for a "
                        "random seed; got ",
                        v->is_number() ? v->dump() : type_of(*v)));
  }
  void reject_unknown(const std::set<std::string>& known, bool openai_wording) const {
    for (const auto& [name, value] : body_.items())
      if (!known.count(name))
        throw bad(name, openai_wording ? str("Unknown parameter: '", name, "'.")
                                       : str("unknown field \"", name, "\""));
  }

 private:
  const json& body_;
};

// What the three APIs have in common, before defaults.
struct Common {
  std::string model;
  std::string prompt;
  std::optional<std::string> negative_prompt;
  int width = 0, height = 0;  // 0: the model's size
  std::string size_field = "size";
  std::optional<int64_t> steps;
  std::optional<double> guidance;
  std::optional<SamplerKind> sampler;
  std::string sampler_field = "sampler";
  SigmaSchedule schedule = SigmaSchedule::Default;
  std::optional<uint64_t> seed;
  int64_t images = 1;
  std::string images_field = "n";
};

uint64_t random_seed() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng() % 4294967296ull;  // A1111 and kiln generate draw 32-bit seeds
}

std::string model_list(const ModelRegistry& models) {
  std::string names;
  for (const ModelSpec& s : models.specs()) names += (names.empty() ? "" : ", ") + s.name;
  return names;
}

// Checks a size against the limits, naming `field`.
void check_size(const std::string& field, int width, int height, const ServeConfig& config) {
  if (width < 8 || height < 8 || width % 8 != 0 || height % 8 != 0)
    throw bad(field, str(field, " must be multiples of 8 of at least 8, got ", width, "x", height));
  if (width > config.max_side || height > config.max_side)
    throw bad(field, str(field, " must be at most ", config.max_side, " pixels on a side, got ",
                         width, "x", height));
}

void parse_size(const std::string& text, Common& c, const ServeConfig& config) {
  if (text == "auto") return;
  int w = 0, h = 0;
  char x = 0, extra = 0;
  if (std::sscanf(text.c_str(), "%d%c%d%c", &w, &x, &h, &extra) != 3 || (x != 'x' && x != 'X'))
    throw bad("size", str("size must be \"WIDTHxHEIGHT\" (e.g. \"512x512\") or \"auto\", got \"",
                          text, "\""));
  check_size("size", w, h, config);
  c.width = w, c.height = h;
}

void check_prompt(const std::string& field, const std::string& text, const ServeConfig& config) {
  if (utf8_length(text) > size_t(config.max_prompt_chars))
    throw bad(field, str(field, " is longer than ", config.max_prompt_chars, " characters (",
                         utf8_length(text), ")"));
}

std::optional<SamplerKind> parse_any_sampler(const std::string& field, const std::string& name,
                                             SigmaSchedule& schedule) {
  if (auto kind = parse_sampler(name)) return kind;
  if (auto a1111 = parse_a1111_sampler(name)) {
    if (a1111->second == SigmaSchedule::Karras) schedule = SigmaSchedule::Karras;
    return a1111->first;
  }
  std::string names;
  for (const std::string& n : a1111_sampler_names()) names += ", " + n;
  throw bad(field,
            str("unknown sampler \"", name,
                "\" (euler, euler_a, ddim, dpmpp_2m, lcm, pndm, or A1111's names", names, ")"));
}

// Fills in defaults and validates against the model; one resolved request per image.
JobSpec build(const Common& c, const ServeConfig& config, const ModelRegistry& models) {
  if (!models.known(c.model))
    throw bad("model",
              str("unknown model \"", c.model, "\" (available: ", model_list(models), ")"));
  const TextToImagePipeline* pipeline = models.ready() ? models.find(c.model) : nullptr;
  if (!pipeline)
    throw ApiError(503, "models are still loading; try again shortly", "", "server_error");
  if (c.images < 1 || c.images > config.max_images_per_request)
    throw bad(c.images_field, str(c.images_field, " must be between 1 and ",
                                  config.max_images_per_request, ", got ", c.images));
  TextToImageRequest q;
  q.prompt = c.prompt;
  q.negative_prompt = c.negative_prompt;
  q.width = c.width;
  q.height = c.height;
  if (q.width == 0) q.width = pipeline->native_width();
  if (q.height == 0) q.height = pipeline->native_height();
  check_size(c.size_field, q.width, q.height, config);
  q.num_inference_steps = int(c.steps.value_or(50));
  if (c.guidance) q.guidance_scale = float(*c.guidance);
  q.sampler = c.sampler;
  q.schedule = c.schedule;
  JobSpec spec;
  spec.model = c.model;
  ResolvedRequest resolved;
  try {
    resolved = pipeline->resolve(q);
  } catch (const Error& e) {
    throw bad(c.size_field, e.what());
  }
  if (resolved.request.schedule == SigmaSchedule::Karras &&
      !parse_a1111_sampler(a1111_sampler_name(resolved.sampler, SigmaSchedule::Karras)))
    throw bad(c.sampler_field, str("sampler ", sampler_name(resolved.sampler),
                                   " has no Karras variant (euler and dpmpp_2m have)"));
  const uint64_t seed = c.seed.value_or(random_seed());
  for (int64_t i = 0; i < c.images; ++i) {
    ResolvedRequest r = resolved;
    r.request.seed = seed + uint64_t(i);
    spec.images.push_back(r);
  }
  return spec;
}

void read_format(const Fields& f, const std::string& field, JobSpec& spec) {
  if (auto name = f.string(field)) {
    auto format = parse_image_format(*name);
    if (!format) throw bad(field, str(field, " must be png, jpeg or webp, got \"", *name, "\""));
    if (!format_available(*format))
      throw bad(field,
                str("this server was built without ", format_name(*format), " support; use png"));
    spec.format = *format;
  }
}

const std::set<std::string> kSchedulerDefault = {"automatic", "Automatic", "default", "Default",
                                                 ""};

SigmaSchedule parse_schedule(const std::string& field, const std::string& name) {
  if (kSchedulerDefault.count(name)) return SigmaSchedule::Default;
  if (name == "karras" || name == "Karras") return SigmaSchedule::Karras;
  throw bad(field,
            str(field, " must be \"default\" (\"automatic\") or \"karras\", got \"", name, "\""));
}

// The generation settings the native and the OpenAI endpoints both take, by kiln's names.
void read_generation_fields(const Fields& f, Common& c, const ServeConfig& config) {
  c.steps = f.integer("steps", 1, config.max_steps);
  c.guidance = f.number("guidance_scale", 0, 100);
  if (auto s = f.string("scheduler")) c.schedule = parse_schedule("scheduler", *s);
  if (auto s = f.string("sampler")) c.sampler = parse_any_sampler("sampler", *s, c.schedule);
  c.seed = f.seed("seed");
  c.images = f.integer("n", 1, config.max_images_per_request).value_or(1);
}

// The job the settings make, with the output and priority fields both endpoints take.
ParsedRequest build_with_output(const Fields& f, const Common& c, const ServeConfig& config,
                                const ModelRegistry& models) {
  ParsedRequest p;
  p.spec = build(c, config, models);
  read_format(f, "output_format", p.spec);
  p.spec.quality = int(f.integer("output_compression", 0, 100).value_or(90));
  p.spec.priority = int(f.integer("priority", -100, 100).value_or(0));
  return p;
}

}  // namespace

nlohmann::json parse_json_object(std::string_view body) {
  // Deep nesting is refused before parsing: echoing or printing such a document
  // would recurse once per level.
  constexpr int kMaxDepth = 64;
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxDepth)
        throw ApiError(400, str("malformed JSON: nested deeper than ", kMaxDepth, " levels"));
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  json j;
  try {
    j = json::parse(body.begin(), body.end());
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (const size_t p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    throw ApiError(400, "malformed JSON: " + what);
  }
  if (!j.is_object())
    throw ApiError(400, str("the request body must be a JSON object, got ", type_of(j)));
  return j;
}

std::vector<std::string> a1111_sampler_names() {
  std::vector<std::string> names;
  for (SamplerKind k : {SamplerKind::Euler, SamplerKind::EulerAncestral, SamplerKind::DDIM,
                        SamplerKind::DPMPP2M, SamplerKind::LCM, SamplerKind::PNDM}) {
    names.push_back(a1111_sampler_name(k, SigmaSchedule::Default));
    const std::string karras = a1111_sampler_name(k, SigmaSchedule::Karras);
    if (parse_a1111_sampler(karras)) names.push_back(karras);
  }
  return names;
}

ParsedRequest parse_job_request(const json& body, const ServeConfig& config,
                                const ModelRegistry& models) {
  const Fields f(body);
  f.reject_unknown({"prompt", "negative_prompt", "model", "width", "height", "size", "steps",
                    "guidance_scale", "seed", "sampler", "scheduler", "n", "output_format",
                    "output_compression", "priority", "webhook_url"},
                   false);
  Common c;
  c.model = f.string("model").value_or(models.default_model());
  const auto prompt = f.string("prompt");
  if (!prompt) throw bad("prompt", "prompt is required");
  check_prompt("prompt", *prompt, config);
  c.prompt = *prompt;
  c.negative_prompt = f.string("negative_prompt");
  if (c.negative_prompt) check_prompt("negative_prompt", *c.negative_prompt, config);
  if (auto size = f.string("size")) parse_size(*size, c, config);
  if (f.has("width") || f.has("height")) {
    if (f.has("size")) throw bad("size", "give either size or width and height, not both");
    c.width = int(f.integer("width", 8, config.max_side).value_or(0));
    c.height = int(f.integer("height", 8, config.max_side).value_or(0));
    c.size_field = f.has("width") ? "width" : "height";
  }
  read_generation_fields(f, c, config);
  ParsedRequest p = build_with_output(f, c, config, models);
  if (auto url = f.string("webhook_url")) {
    const std::string problem = webhook_url_problem(*url);
    if (!problem.empty()) throw bad("webhook_url", "webhook_url " + problem);
    p.spec.webhook_url = *url;
  }
  p.spec.api = Api::Jobs;
  return p;
}

ParsedRequest parse_openai_request(const json& body, const ServeConfig& config,
                                   const ModelRegistry& models) {
  const Fields f(body);
  f.reject_unknown(
      {"prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
       "background", "quality", "style", "user", "safety_identifier", "moderation", "stream",
       "partial_images", "complexity",
       // kiln's own
       "negative_prompt", "steps", "guidance_scale", "seed", "sampler", "scheduler", "priority"},
      true);
  Common c;
  c.model = f.string("model").value_or(models.default_model());
  const auto prompt = f.string("prompt");
  if (!prompt || prompt->empty()) throw bad("prompt", "prompt is required");
  check_prompt("prompt", *prompt, config);
  c.prompt = *prompt;
  c.negative_prompt = f.string("negative_prompt");
  if (c.negative_prompt) check_prompt("negative_prompt", *c.negative_prompt, config);
  if (auto size = f.string("size")) parse_size(*size, c, config);
  read_generation_fields(f, c, config);
  if (f.boolean("stream").value_or(false))
    throw bad("stream", "stream is not supported; use POST /v1/jobs and its /events stream");
  if (f.integer("partial_images", 0, 3).value_or(0) > 0)
    throw bad("partial_images", "partial_images needs stream, which is not supported");
  if (auto bg = f.string("background"); bg && *bg != "auto" && *bg != "opaque")
    throw bad("background", str("background \"", *bg, "\" is not supported (auto, opaque)"));
  for (const char* ignored :
       {"quality", "style", "user", "safety_identifier", "moderation", "complexity"})
    f.string(ignored);  // accepted for compatibility; they must still be strings
  ParsedRequest p = build_with_output(f, c, config, models);
  if (auto rf = f.string("response_format")) {
    if (*rf != "url" && *rf != "b64_json")
      throw bad("response_format",
                str("response_format must be url or b64_json, got \"", *rf, "\""));
    p.b64_json = *rf == "b64_json";
  }
  p.spec.api = Api::OpenAI;
  return p;
}

ParsedRequest parse_a1111_request(const json& body, const ServeConfig& config,
                                  const ModelRegistry& models) {
  // A1111's API ignores fields it does not know; so does this. Features kiln does
  // not have are refused when asked for, not silently skipped.
  const Fields f(body);
  if (f.boolean("enable_hr").value_or(false))
    throw bad("enable_hr", "enable_hr (hires fix) is not supported");
  if (f.boolean("restore_faces").value_or(false))
    throw bad("restore_faces", "restore_faces is not supported");
  if (f.boolean("tiling").value_or(false)) throw bad("tiling", "tiling is not supported");
  if (auto s = f.string("script_name"); s && !s->empty())
    throw bad("script_name", "scripts are not supported");
  if (const json* styles = f.get("styles"); styles && !(styles->is_array() && styles->empty()))
    throw bad("styles", "prompt styles are not supported");
  if (const json* scripts = f.get("alwayson_scripts");
      scripts && !(scripts->is_object() && scripts->empty()))
    throw bad("alwayson_scripts", "alwayson_scripts are not supported");

  Common c;
  c.model = models.default_model();
  if (const json* o = f.get("override_settings")) {
    if (!o->is_object()) throw bad("override_settings", "override_settings must be an object");
    if (auto m = Fields(*o).string("sd_model_checkpoint")) {
      // A1111 titles look like "name [hash]"; the name is what counts.
      std::string name = *m;
      if (const size_t b = name.find(" ["); b != std::string::npos) name.resize(b);
      c.model = name;
    }
  }
  c.prompt = f.string("prompt").value_or("");
  check_prompt("prompt", c.prompt, config);
  c.negative_prompt = f.string("negative_prompt").value_or("");
  check_prompt("negative_prompt", *c.negative_prompt, config);
  c.width = int(f.integer("width", 8, config.max_side).value_or(0));
  c.height = int(f.integer("height", 8, config.max_side).value_or(0));
  c.size_field = "width";
  c.steps = f.integer("steps", 1, config.max_steps);
  c.guidance = f.number("cfg_scale", 0, 100);
  if (auto s = f.string("scheduler")) c.schedule = parse_schedule("scheduler", *s);
  std::string sampler_field = "sampler_name";
  auto sampler = f.string("sampler_name");
  if (!sampler || sampler->empty())
    sampler = f.string("sampler_index"), sampler_field = "sampler_index";
  if (sampler && !sampler->empty())
    c.sampler = parse_any_sampler(sampler_field, *sampler, c.schedule);
  c.sampler_field = sampler_field;
  c.seed = f.seed("seed");
  const int64_t batch_size = f.integer("batch_size", 1, config.max_images_per_request).value_or(1);
  const int64_t n_iter = f.integer("n_iter", 1, config.max_images_per_request).value_or(1);
  c.images = batch_size * n_iter;
  c.images_field = "batch_size";
  ParsedRequest p;
  p.spec = build(c, config, models);
  p.spec.api = Api::A1111;
  p.send_images = f.boolean("send_images").value_or(true);

  const ResolvedRequest& r = p.spec.images.front();
  p.a1111_parameters = body;
  p.a1111_parameters["prompt"] = r.request.prompt;
  p.a1111_parameters["negative_prompt"] = r.request.negative_prompt.value_or("");
  p.a1111_parameters["seed"] = r.request.seed;
  p.a1111_parameters["width"] = r.request.width;
  p.a1111_parameters["height"] = r.request.height;
  p.a1111_parameters["steps"] = r.request.num_inference_steps;
  p.a1111_parameters["cfg_scale"] = r.guidance_scale;
  p.a1111_parameters["sampler_name"] = a1111_sampler_name(r.sampler, SigmaSchedule::Default);
  p.a1111_parameters["scheduler"] =
      r.request.schedule == SigmaSchedule::Karras ? "Karras" : "Automatic";
  p.a1111_parameters["batch_size"] = batch_size;
  p.a1111_parameters["n_iter"] = n_iter;
  return p;
}

}  // namespace kiln::serve
