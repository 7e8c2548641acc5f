#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"

namespace kiln {

Backend& backend_for(Device device) {
  if (device == Device::CPU) return cpu::backend();
  KILN_FAIL("no backend for device ", device_name(device), " in this build");
}

}  // namespace kiln
