// grulm's CUDA shim: the few libtorch C++ calls that tch 0.24 does not expose.
//
// * CUDA graphs (at::cuda::CUDAGraph): capture one training step, replay it.
// * A side stream made current (graphs can only be captured off the default stream).
// * The caching allocator's statistics (what torch.cuda.max_memory_allocated reads).
// * The TF32 switches of cuBLAS and cuDNN (torch.backends.cuda.matmul.allow_tf32,
//   torch.backends.cudnn.allow_tf32).
//
// build.rs compiles this file only when libtorch's CUDA library and the CUDA
// runtime headers are found; otherwise grulm runs without it (src/cuda.rs says
// why). Every function catches C++ exceptions and returns non-zero, with the
// message kept for grulm_cuda_last_error(), so nothing unwinds into Rust.
//
// The cudart functions this file needs (cudaStreamEndCapture, cudaGetLastError)
// are looked up at run time with dlsym: libtorch_cuda has loaded cudart already,
// under a name that differs between the PyPI wheel and the libtorch zip, so
// linking it by name would tie the binary to one of them.
#include <ATen/Context.h>
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include <dlfcn.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

namespace {

thread_local std::string last_error;

int fail(const std::exception& e) {
  last_error = e.what();
  // The first line: libtorch's messages go on with C++ frames.
  auto nl = last_error.find('\n');
  if (nl != std::string::npos) last_error.resize(nl);
  return 1;
}

int fail_unknown() {
  last_error = "unknown C++ exception";
  return 1;
}

template <typename F>
F cudart(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}


// A pool stream made current, and the stream it replaced.
struct SideStream {
  c10::cuda::CUDAStream previous;
  c10::cuda::CUDAStream stream;
};

struct Graph {
  // keep_graph: the captured cudaGraph_t is kept (for its node count); the
  // first replay instantiates it.
  at::cuda::CUDAGraph graph{/*keep_graph=*/true};
  c10::DeviceIndex device;
  c10::MempoolId_t pool{0, 0};
  bool capturing = false;
};

}  // namespace

#define GRULM_TRY(...)                           \
  try {                                          \
    __VA_ARGS__;                                 \
    return 0;                                    \
  } catch (const std::exception& e) {            \
    return fail(e);                              \
  } catch (...) {                                \
    return fail_unknown();                       \
  }

extern "C" {

const char* grulm_cuda_last_error() { return last_error.c_str(); }

// Makes a stream from libtorch's pool current on `device`; every libtorch op of
// this thread then runs on it until grulm_stream_exit.
int grulm_stream_enter(int device, void** out) {
  GRULM_TRY({
    auto dev = static_cast<c10::DeviceIndex>(device);
    auto previous = c10::cuda::getCurrentCUDAStream(dev);
    auto stream = c10::cuda::getStreamFromPool(false, dev);
    c10::cuda::setCurrentCUDAStream(stream);
    *out = new SideStream{previous, stream};
  })
}

int grulm_stream_exit(void* s) {
  auto* side = static_cast<SideStream*>(s);
  int rc = 0;
  try {
    c10::cuda::setCurrentCUDAStream(side->previous);
  } catch (const std::exception& e) {
    rc = fail(e);
  }
  delete side;
  return rc;
}

int grulm_graph_new(int device, void** out) {
  GRULM_TRY({
    auto* g = new Graph{};
    g->device = static_cast<c10::DeviceIndex>(device);
    *out = g;
  })
}

// Starts capturing the current stream (which must not be the default one) into
// a private memory pool.
int grulm_graph_capture_begin(void* p) {
  auto* g = static_cast<Graph*>(p);
  GRULM_TRY({
    g->pool = at::cuda::graph_pool_handle();
    g->graph.capture_begin(g->pool);
    g->capturing = true;
  })
}

// Ends the capture and instantiates the graph.
int grulm_graph_capture_end(void* p) {
  auto* g = static_cast<Graph*>(p);
  GRULM_TRY({
    g->capturing = false;
    g->graph.capture_end();
  })
}

// After a failed capture (an op refused to be captured, or threw): takes the
// stream out of capture mode, gives the allocator its normal pool back and
// clears CUDA's last error, so the caller can go on without a graph.
void grulm_graph_abort(void* p) {
  auto* g = static_cast<Graph*>(p);
  if (!g->capturing) return;
  g->capturing = false;
  try {
    g->graph.capture_end();  // ends the capture; throws when it was invalidated
    return;
  } catch (...) {
  }
  using EndCapture = int (*)(void*, void**);
  if (auto end = cudart<EndCapture>("cudaStreamEndCapture")) {
    void* graph = nullptr;
    end(c10::cuda::getCurrentCUDAStream(g->device).stream(), &graph);
  }
  try {
    c10::cuda::CUDACachingAllocator::endAllocateToPool(g->device, g->pool);
  } catch (...) {
  }
  try {
    at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(g->pool);
  } catch (...) {
  }
  using GetLastError = int (*)();
  if (auto clear = cudart<GetLastError>("cudaGetLastError")) clear();
}

// Nodes of the captured graph: the kernels (and copies, memsets) of one replay.
int grulm_graph_node_count(void* p, size_t* out) {
  GRULM_TRY({
    using GetNodes = int (*)(void*, void**, size_t*);
    auto get = cudart<GetNodes>("cudaGraphGetNodes");
    *out = 0;
    if (get && get(static_cast<Graph*>(p)->graph.raw_cuda_graph(), nullptr, out) != 0) *out = 0;
  })
}

int grulm_graph_replay(void* p) {
  GRULM_TRY(static_cast<Graph*>(p)->graph.replay())
}

void grulm_graph_free(void* p) {
  try {
    delete static_cast<Graph*>(p);
  } catch (...) {
  }
}

// The caching allocator's bytes: [allocated now, allocated peak, reserved now,
// reserved peak], all pools (torch.cuda.memory_allocated & co).
int grulm_cuda_memory(int device, int64_t* out) {
  GRULM_TRY({
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
  })
}

int grulm_cuda_reset_peak(int device) {
  GRULM_TRY(c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)))
}

// TF32 for float32 matrix products in cuBLAS and in cuDNN (which also runs the
// built-in GRU). libtorch's defaults: cuBLAS off, cuDNN on.
int grulm_tf32_get(int* cublas, int* cudnn) {
  GRULM_TRY({
    *cublas = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
    *cudnn = at::globalContext().allowTF32CuDNN() ? 1 : 0;
  })
}

int grulm_tf32_set(int cublas, int cudnn) {
  GRULM_TRY({
    at::globalContext().setAllowTF32CuBLAS(cublas != 0);
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
  })
}

}  // extern "C"
