// Small utilities shared by the infer_c module and the perf binary: CUDA error checks and
// owning handles for TensorRT objects.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstddef>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace demobert
{

// CUDA failures become exceptions so the Python module raises RuntimeError instead of killing the
// interpreter; perf turns them into a one-line message and a non-zero exit status.
inline void checkCuda(cudaError_t status, char const* file, int line)
{
    if (status != cudaSuccess)
    {
        std::ostringstream message;
        message << "GPUassert: " << cudaGetErrorString(status) << " " << file << " " << line;
        throw std::runtime_error(message.str());
    }
}

#define CHECK_CUDA(call) ::demobert::checkCuda((call), __FILE__, __LINE__)

// Owning CUDA runtime handles. Release errors are ignored: a destructor has nobody to report to.
template <typename Handle, cudaError_t (*Release)(Handle)>
struct CudaReleaser
{
    void operator()(Handle handle) const noexcept
    {
        Release(handle);
    }
};

template <typename Handle, cudaError_t (*Release)(Handle)>
using CudaUniquePtr = std::unique_ptr<std::remove_pointer_t<Handle>, CudaReleaser<Handle, Release>>;

using UniqueStream = CudaUniquePtr<cudaStream_t, cudaStreamDestroy>;
using UniqueEvent = CudaUniquePtr<cudaEvent_t, cudaEventDestroy>;
using UniqueGraph = CudaUniquePtr<cudaGraph_t, cudaGraphDestroy>;
using UniqueGraphExec = CudaUniquePtr<cudaGraphExec_t, cudaGraphExecDestroy>;
using UniqueDeviceMemory = CudaUniquePtr<void*, cudaFree>;

inline UniqueStream makeStream()
{
    cudaStream_t stream{nullptr};
    CHECK_CUDA(cudaStreamCreate(&stream));
    return UniqueStream(stream);
}

inline UniqueEvent makeEvent()
{
    cudaEvent_t event{nullptr};
    CHECK_CUDA(cudaEventCreate(&event));
    return UniqueEvent(event);
}

// Zero-filled, so buffers the runner never writes still hold defined values.
inline UniqueDeviceMemory makeZeroedDeviceMemory(size_t bytes)
{
    void* data{nullptr};
    CHECK_CUDA(cudaMalloc(&data, bytes));
    UniqueDeviceMemory memory(data);
    CHECK_CUDA(cudaMemset(data, 0, bytes));
    return memory;
}

// Since TensorRT 10 every interface object is released with plain delete.
template <typename T>
using TrtUniquePtr = std::unique_ptr<T>;

template <typename T>
TrtUniquePtr<T> makeTrtUnique(T* raw, char const* whatFailed)
{
    if (raw == nullptr)
    {
        throw std::runtime_error(whatFailed);
    }
    return TrtUniquePtr<T>(raw);
}

} // namespace demobert
