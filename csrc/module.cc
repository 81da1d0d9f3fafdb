// The Python extension module pallas_kernels.cpu._ternary_cpu: FFI handler capsules, run-time ISA choice.

#include <Python.h>

#include <atomic>
#include <cstring>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(BitnetTernaryMatmulCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(BitnetTernaryMatmulStackedCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(BitnetHeadFloatCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(BitnetHeadInt8Cpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(BitnetHeadGreedyCpu);

namespace bitnet {

namespace {
const char* const kIsaNames[kNumIsaLevels] = {"scalar", "avx2", "avx512vnni", "amx"};
std::atomic<int> g_forced{-1};

#if BITNET_X86
// AMX needs the CPU's AMX-TILE and AMX-INT8 (CPUID.7.0:EDX bits 24, 25), the OS's tile state in XCR0
// (bits 17, 18) and, on Linux, this process's permission to use the tile data (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), which the kernel grants to every thread of the process.
bool amx_usable() {
  unsigned eax, ebx, ecx, edx;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
  if (((edx >> 24) & 3u) != 3u) return false;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
  if (((ecx >> 27) & 1u) == 0) return false;  // OSXSAVE: xgetbv is available
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3u) != 3u) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

int widest_supported() {
  for (int level = kNumIsaLevels - 1; level > 0; --level) {
    if (isa_supported(level)) return level;
  }
  return kScalar;
}
}  // namespace

const char* isa_name(int level) { return kIsaNames[level]; }

bool isa_supported(int level) {
#if BITNET_X86
  __builtin_cpu_init();
  if (level == kAmx) {
    static const bool usable = isa_supported(kAvx512Vnni) && amx_usable();
    return usable;
  }
  if (level == kAvx512Vnni) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }
  if (level == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return level == kScalar;
}

int isa_level() {
  static const int widest = widest_supported();
  const int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : widest;
}

void set_isa_level(int level) { g_forced.store(level, std::memory_order_relaxed); }

}  // namespace bitnet

namespace {

PyObject* capsule(void* fn) { return PyCapsule_New(fn, nullptr, nullptr); }

PyObject* py_handlers(PyObject*, PyObject*) {
  return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N}", "ternary_matmul", capsule(reinterpret_cast<void*>(&BitnetTernaryMatmulCpu)),
                       "ternary_matmul_stacked", capsule(reinterpret_cast<void*>(&BitnetTernaryMatmulStackedCpu)),
                       "head_float", capsule(reinterpret_cast<void*>(&BitnetHeadFloatCpu)), "head_int8",
                       capsule(reinterpret_cast<void*>(&BitnetHeadInt8Cpu)), "head_greedy",
                       capsule(reinterpret_cast<void*>(&BitnetHeadGreedyCpu)));
}

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(bitnet::isa_name(bitnet::isa_level())); }

PyObject* py_supported_isas(PyObject*, PyObject*) {
  PyObject* list = PyList_New(0);
  for (int level = bitnet::kNumIsaLevels - 1; level >= 0; --level) {
    if (!bitnet::isa_supported(level)) continue;
    PyObject* s = PyUnicode_FromString(bitnet::isa_name(level));
    PyList_Append(list, s);
    Py_DECREF(s);
  }
  return list;
}

PyObject* py_set_isa(PyObject*, PyObject* arg) {
  if (arg == Py_None) {
    bitnet::set_isa_level(-1);
    Py_RETURN_NONE;
  }
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  for (int level = 0; level < bitnet::kNumIsaLevels; ++level) {
    if (std::strcmp(bitnet::isa_name(level), name) != 0) continue;
    if (!bitnet::isa_supported(level)) {
      PyErr_Format(PyExc_ValueError, "ISA %s is not supported by this CPU", name);
      return nullptr;
    }
    bitnet::set_isa_level(level);
    Py_RETURN_NONE;
  }
  PyErr_Format(PyExc_ValueError, "unknown ISA %s (known: amx, avx512vnni, avx2, scalar)", name);
  return nullptr;
}

PyMethodDef kMethods[] = {
    {"handlers", py_handlers, METH_NOARGS, "The XLA FFI handlers, as PyCapsules by name."},
    {"isa", py_isa, METH_NOARGS, "The instruction-set path in use."},
    {"supported_isas", py_supported_isas, METH_NOARGS, "The paths this CPU can run, widest first."},
    {"set_isa", py_set_isa, METH_O, "Force a path by name (None: the widest supported)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_ternary_cpu", "CPU kernels of bitnet-jax (XLA FFI custom calls).",
                       -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__ternary_cpu(void) { return PyModule_Create(&kModule); }
