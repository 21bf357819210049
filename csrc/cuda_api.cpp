#include "cuda_api.h"

#include <dlfcn.h>

#include <stdexcept>

namespace gpt2fast {

namespace {

void* open_libcuda() {
  for (const char* name : {"libcuda.so.1", "libcuda.so"}) {
    if (void* handle = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) return handle;
  }
  throw std::runtime_error("the CUDA driver library (libcuda.so.1) cannot be loaded");
}

template <typename Function>
void load(void* library, const char* symbol, Function*& slot) {
  void* address = ::dlsym(library, symbol);
  if (address == nullptr) {
    throw std::runtime_error(std::string("libcuda lacks ") + symbol);
  }
  slot = reinterpret_cast<Function*>(address);
}

CudaApi load_api() {
  void* library = open_libcuda();
  CudaApi api{};
  load(library, "cuGetErrorString", api.cuGetErrorString);
  load(library, "cuCtxGetCurrent", api.cuCtxGetCurrent);
  load(library, "cuCtxSetCurrent", api.cuCtxSetCurrent);
  load(library, "cuGraphLaunch", api.cuGraphLaunch);
  load(library, "cuMemcpyDtoHAsync_v2", api.cuMemcpyDtoHAsync);
  load(library, "cuMemcpyHtoDAsync_v2", api.cuMemcpyHtoDAsync);
  load(library, "cuMemHostRegister_v2", api.cuMemHostRegister);
  load(library, "cuMemHostUnregister", api.cuMemHostUnregister);
  load(library, "cuEventCreate", api.cuEventCreate);
  load(library, "cuEventDestroy_v2", api.cuEventDestroy);
  load(library, "cuEventRecord", api.cuEventRecord);
  load(library, "cuEventSynchronize", api.cuEventSynchronize);
  load(library, "cuStreamSynchronize", api.cuStreamSynchronize);
  return api;
}

}  // namespace

void CudaApi::check(CUresult result, const char* call) const {
  if (result == 0) return;
  const char* text = nullptr;
  cuGetErrorString(result, &text);
  throw std::runtime_error(std::string(call) + " failed: " + (text ? text : "unknown CUDA error"));
}

const CudaApi& cuda_api() {
  static const CudaApi api = load_api();
  return api;
}

}  // namespace gpt2fast
