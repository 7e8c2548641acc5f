// kiln serve from start to exit: load models, serve, and on SIGTERM or SIGINT stop
// intake, drain jobs up to --drain-timeout, cancel the rest with a reason, exit 0.
#pragma once

#include "serve/config.h"

namespace kiln::serve {

// The process's exit status. Throws kiln::Error for what stops it from starting
// (a bad keys file, a port in use, a model that does not load).
int run_server(const ServeConfig& config);

}  // namespace kiln::serve
