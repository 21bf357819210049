// The few CUDA driver API calls the driver makes, loaded from libcuda at run time so that
// building needs no CUDA toolkit and importing needs no GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace gpt2fast {

using CUresult = int;
using CUdeviceptr = unsigned long long;
using CUstream = void*;
using CUevent = void*;
using CUgraphExec = void*;
using CUcontext = void*;

struct CudaApi {
  CUresult (*cuGetErrorString)(CUresult, const char**);
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuGraphLaunch)(CUgraphExec, CUstream);
  CUresult (*cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
  CUresult (*cuMemHostRegister)(void*, size_t, unsigned int);
  CUresult (*cuMemHostUnregister)(void*);
  CUresult (*cuEventCreate)(CUevent*, unsigned int);
  CUresult (*cuEventDestroy)(CUevent);
  CUresult (*cuEventRecord)(CUevent, CUstream);
  CUresult (*cuEventSynchronize)(CUevent);
  CUresult (*cuStreamSynchronize)(CUstream);

  // Throws std::runtime_error naming `call` unless `result` is CUDA_SUCCESS.
  void check(CUresult result, const char* call) const;
};

// libcuda's entry points, loaded on first use; throws std::runtime_error if there is no
// CUDA driver on this machine.
const CudaApi& cuda_api();

}  // namespace gpt2fast
