// Request bodies of the three APIs (native jobs, OpenAI Images, A1111 txt2img)
// read into job specs, with a 4xx ApiError naming the field for anything wrong.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "serve/config.h"
#include "serve/job.h"
#include "serve/model_registry.h"

namespace kiln::serve {

// A request the server will not take: the HTTP status, a message for the client,
// the field at fault (may be empty) and an OpenAI-style error type.
class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = "",
           std::string type = "invalid_request_error")
      : Error(message), status(status), param(std::move(param)), type(std::move(type)) {}
  int status;
  std::string param, type;
  int retry_after_s = 0;  // > 0: sent as Retry-After
};

// The body as a JSON object (400 "malformed JSON ..." otherwise).
nlohmann::json parse_json_object(std::string_view body);

struct ParsedRequest {
  JobSpec spec;
  bool b64_json = true;             // OpenAI response_format
  nlohmann::json a1111_parameters;  // A1111: the request with defaults, echoed back
  bool send_images = true;          // A1111
};

// The model a request names must be one the key may use: 403 otherwise (checked by
// the caller, which knows the key). Unknown models are a 400 here; 503 while loading.
ParsedRequest parse_job_request(const nlohmann::json& body, const ServeConfig& config,
                                const ModelRegistry& models);
ParsedRequest parse_openai_request(const nlohmann::json& body, const ServeConfig& config,
                                   const ModelRegistry& models);
ParsedRequest parse_a1111_request(const nlohmann::json& body, const ServeConfig& config,
                                  const ModelRegistry& models);

// Samplers as A1111 lists them: "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", ...
std::vector<std::string> a1111_sampler_names();

}  // namespace kiln::serve
