// The HTTP front: cpp-httplib with a thread pool, request ids, the JSON access log,
// JSON error bodies, health, metrics and the web page, and the API routes.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "serve/http_context.h"

namespace kiln::serve {

class HttpServer {
 public:
  HttpServer(ServerParts& parts, std::function<Gauges()> gauges);
  ~HttpServer();

  // Binds the socket and returns the port (the one chosen when `port` is 0);
  // kiln::Error when it cannot.
  int bind(const std::string& host, int port);
  void run();                       // serves until stop()
  void wait_until_running() const;  // run() has started serving (stop() then ends it)
  void stop();                      // waits for the requests in flight

 private:
  class Listener;
  ServerParts& parts_;
  std::function<Gauges()> gauges_;
  std::unique_ptr<Listener> server_;
};

// The embedded page (web/index.html, built in).
std::string_view web_page_html();

}  // namespace kiln::serve
