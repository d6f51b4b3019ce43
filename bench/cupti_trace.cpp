// cupti_trace: a kernel timeline of any CUDA program, for machines without Nsight Systems.
//
//   CUDA_INJECTION64_PATH=build-cuda/libcupti-trace.so FH1_TRACE_OUT=trace.csv <program> ...
//   python3 bench/kernel_timeline.py trace.csv
//
// The CUDA driver loads this library into the program and calls InitializeInjection(), which
// turns on CUPTI's concurrent-kernel activity records (they do not serialize kernels, so streams
// and programmatic dependent launches overlap as they would untraced). At exit every kernel is
// written as one CSV line: start and end (ns, CUPTI's clock), stream, graph id and the correlation
// id of the launch (all kernels of one cudaGraphLaunch share it), grid, block, registers, and the
// demangled name without its parameter list. FH1_TRACE_API=1 adds the runtime API calls (name,
// host thread in the stream column) and the memory copies (bytes in the gx column, CUPTI's copy
// kind in gy): what the host does between a step's kernels; it slows the API calls down.
#include <cupti.h>

#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct KernelRecord {
  const char* kind;
  uint64_t start, end;
  uint32_t stream, graph, correlation;
  int32_t grid[3], block[3];
  uint16_t registers;
  std::string name;
};

std::mutex g_mutex;
std::vector<KernelRecord> g_records;

std::string short_name(const char* mangled) {
  if (!mangled) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  for (size_t at; (at = s.find("(anonymous namespace)::")) != std::string::npos;) s.erase(at, 23);
  // Cut the parameter list: the first '(' outside template brackets.
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    else if (s[i] == '>') --depth;
    else if (s[i] == '(' && depth == 0) return s.substr(0, i);
  }
  return s;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t(16) << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* rec = nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(rec);
      const char* name = nullptr;
      cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
      g_records.push_back({"api", a->start, a->end, a->threadId, 0, a->correlationId, {0, 0, 0}, {0, 0, 0}, 0,
                           name ? name : "?"});
      continue;
    }
    if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      g_records.push_back({"memcpy", m->start, m->end, m->streamId, m->graphId, m->correlationId,
                           {static_cast<int32_t>(m->bytes), m->copyKind, 0}, {0, 0, 0}, 0, "memcpy"});
      continue;
    }
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
    g_records.push_back({"kernel", k->start, k->end, k->streamId, k->graphId, k->correlationId,
                         {k->gridX, k->gridY, k->gridZ}, {k->blockX, k->blockY, k->blockZ},
                         k->registersPerThread, short_name(k->name)});
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  if (dropped) std::fprintf(stderr, "cupti_trace: %zu records dropped\n", dropped);
  std::free(buffer);
}

void write_trace() {
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("FH1_TRACE_OUT");
  std::FILE* f = std::fopen(path ? path : "cupti_trace.csv", "w");
  if (!f) {
    std::fprintf(stderr, "cupti_trace: cannot write %s\n", path ? path : "cupti_trace.csv");
    return;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(f, "kind,start,end,stream,graph,correlation,gx,gy,gz,bx,by,bz,regs,name\n");
  for (const KernelRecord& r : g_records) {
    std::string name = r.name;
    for (char& c : name)
      if (c == ',' || c == '"') c = ';';
    std::fprintf(f, "%s,%llu,%llu,%u,%u,%u,%d,%d,%d,%d,%d,%d,%u,\"%s\"\n", r.kind,
                 static_cast<unsigned long long>(r.start), static_cast<unsigned long long>(r.end), r.stream, r.graph,
                 r.correlation, r.grid[0], r.grid[1], r.grid[2], r.block[0], r.block[1], r.block[2], r.registers,
                 name.c_str());
  }
  std::fclose(f);
  std::fprintf(stderr, "cupti_trace: %zu kernels written to %s\n", g_records.size(),
               path ? path : "cupti_trace.csv");
}

bool check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return true;
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  std::fprintf(stderr, "cupti_trace: %s failed: %s\n", what, msg ? msg : "?");
  return false;
}

}  // namespace

extern "C" int InitializeInjection(void) {
  if (!check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks"))
    return 0;
  if (!check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enabling kernel records")) return 0;
  const char* api = std::getenv("FH1_TRACE_API");
  if (api && std::atoi(api) != 0) {
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "enabling runtime API records");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enabling memcpy records");
  }
  std::atexit(write_trace);
  return 1;
}
