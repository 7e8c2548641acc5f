#include "serve/http_server.h"

#include <sys/socket.h>

#include <cstdio>
#include <ctime>
#include <random>
#include <thread>

namespace kiln::serve {
namespace {

constexpr int kListenBacklog = 1024;

// The route a path belongs to, for metrics: ids become {id}.
std::string endpoint_label(const std::string& path) {
  static const char* kExact[] = {"/",
                                 "/v1/jobs",
                                 "/v1/images/generations",
                                 "/v1/models",
                                 "/v2/health/live",
                                 "/v2/health/ready",
                                 "/metrics",
                                 "/sdapi/v1/txt2img",
                                 "/sdapi/v1/progress",
                                 "/sdapi/v1/interrupt",
                                 "/sdapi/v1/sd-models",
                                 "/sdapi/v1/samplers",
                                 "/sdapi/v1/schedulers",
                                 "/sdapi/v1/scripts",
                                 "/sdapi/v1/options"};
  for (const char* e : kExact)
    if (path == e) return e;
  if (path.rfind("/v1/jobs/", 0) == 0)
    return path.size() > 7 && path.ends_with("/events") ? "/v1/jobs/{id}/events" : "/v1/jobs/{id}";
  if (path.rfind("/v1/results/", 0) == 0) return "/v1/results/{id}";
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[24];
  std::snprintf(buf, sizeof buf, "req_%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// A client's X-Request-Id is kept when it is short and plain.
bool usable_request_id(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id)
    if (!std::isalnum(uint8_t(c)) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int ms = int(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, ms);
  return out;
}

std::mutex g_log_mutex;

void log_line(const nlohmann::json& line) {
  const std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(g_log_mutex);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

std::string default_message(const httplib::Request& req, int status, size_t max_body) {
  switch (status) {
    case 400:
      return "malformed HTTP request";
    case 404:
      return "no route for " + req.method + " " + req.path;
    case 405:
      return "method not allowed";
    case 413:
      return "request body larger than " + std::to_string(max_body) + " bytes (--max-body-bytes)";
    case 414:
      return "request URI too long";
    default:
      return "HTTP error " + std::to_string(status);
  }
}

}  // namespace

// httplib's listen backlog is fixed at 5 when the library is built; a burst of a
// hundred clients needs more.
class HttpServer::Listener : public httplib::Server {
 public:
  void widen_backlog() { ::listen(svr_sock_, kListenBacklog); }
};

HttpServer::HttpServer(ServerParts& parts, std::function<Gauges()> gauges)
    : parts_(parts), gauges_(std::move(gauges)), server_(std::make_unique<Listener>()) {
  httplib::Server& s = *server_;
  const ServeConfig& config = parts.config;
  const int threads = std::max(2, config.http_threads);
  s.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  s.set_payload_max_length(config.max_body_bytes);
  s.set_read_timeout(30);
  s.set_write_timeout(30);
  s.set_keep_alive_timeout(5);
  s.set_tcp_nodelay(true);
  // httplib's default adds SO_REUSEPORT, which lets a second server share the port
  // silently; a port in use must be an error instead.
  s.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });

  s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    RequestInfo& info = current_request();
    info = RequestInfo{};
    info.active = true;
    info.start = std::chrono::steady_clock::now();
    const std::string given = req.get_header_value("X-Request-Id");
    info.id = usable_request_id(given) ? given : new_request_id();
    res.set_header("X-Request-Id", info.id);
    return httplib::Server::HandlerResponse::Unhandled;
  });

  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    RequestInfo& info = current_request();
    const double ms = info.active ? std::chrono::duration<double, std::milli>(
                                        std::chrono::steady_clock::now() - info.start)
                                        .count()
                                  : 0.0;
    nlohmann::json line = {
        {"ts", utc_now()},
        {"event", "http_request"},
        {"request_id", info.active ? info.id : new_request_id()},
        {"key_id", info.key                ? nlohmann::json(info.key->id)
                   : parts_.keys.enabled() ? nlohmann::json()
                                           : "anonymous"},
        {"method", req.method},
        {"path", req.path},
        {"status", res.status},
        {"duration_ms", std::round(ms * 1000) / 1000},
        {"remote_addr", req.remote_addr},
        {"bytes_in", req.body.size()},
        {"bytes_out", res.body.size()},
    };
    if (!info.job_id.empty()) line["job_id"] = info.job_id;
    log_line(line);
    parts_.metrics.count_request(endpoint_label(req.path), req.method, res.status);
    info.active = false;
  });

  s.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (res.body.empty())
          send_error(
              req, res,
              ApiError(res.status, default_message(req, res.status, parts_.config.max_body_bytes),
                       "", res.status == 404 ? "not_found_error" : "invalid_request_error"));
        return httplib::Server::HandlerResponse::Handled;
      }));

  s.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr error) {
        std::string message = "internal error";
        try {
          std::rethrow_exception(error);
        } catch (const std::bad_alloc&) {
          message = "out of memory";
        } catch (const std::exception& e) {
          message = e.what();
        } catch (...) {
        }
        std::fprintf(stderr, "kiln serve: %s %s: %s\n", req.method.c_str(), req.path.c_str(),
                     message.c_str());
        send_error(req, res, ApiError(500, "internal error: " + message, "", "server_error"));
      });

  s.Get("/v2/health/live", public_route([](const httplib::Request&, httplib::Response& res) {
          send_json(res, 200, {{"live", true}});
        }));
  s.Get("/v2/health/ready", public_route([this](const httplib::Request&, httplib::Response& res) {
          if (parts_.draining)
            send_json(res, 503, {{"ready", false}, {"reason", "draining"}});
          else if (!parts_.models.ready())
            send_json(res, 503, {{"ready", false}, {"reason", "loading models"}});
          else
            send_json(res, 200, {{"ready", true}});
        }));
  s.Get("/metrics", public_route([this](const httplib::Request&, httplib::Response& res) {
          res.set_content(parts_.metrics.render(gauges_()), "text/plain; version=0.0.4");
        }));
  auto page = public_route([](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_content(std::string(web_page_html()), "text/html; charset=utf-8");
  });
  s.Get("/", page);
  s.Get("/index.html", page);
  s.Get("/favicon.ico",
        public_route([](const httplib::Request&, httplib::Response& res) { res.status = 204; }));

  register_job_routes(s, parts);
  register_openai_routes(s, parts);
  register_a1111_routes(s, parts);
}

HttpServer::~HttpServer() = default;

int HttpServer::bind(const std::string& host, int port) {
  int bound = port;
  if (port == 0)
    bound = server_->bind_to_any_port(host);
  else if (!server_->bind_to_port(host, port))
    bound = -1;
  if (bound <= 0)
    KILN_FAIL("cannot listen on ", host, ":", port,
              " (address in use, or not an address of this machine)");
  server_->widen_backlog();
  return bound;
}

void HttpServer::run() {
  server_->listen_after_bind();
}

void HttpServer::wait_until_running() const {
  while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void HttpServer::stop() {
  server_->stop();
}

}  // namespace kiln::serve
