/*
 * kiln.h - the stable C ABI of models compiled by kiln.
 *
 * Every compiled artefact (object file, static library, shared library or
 * executable) exports
 *
 *     const kiln_model *<name>_model(void);
 *
 * and shared libraries / executables also export
 *
 *     const kiln_model *kiln_model_default(void);
 *
 * The descriptor is immutable and lives for the whole program. `run` is
 * reentrant as long as every concurrent call gets its own workspace.
 *
 * Versions: fields are only ever appended. Version 2 ends at run_pool; version
 * 3 adds the per-node profile (n_nodes, nodes, run_profile). A reader built
 * against this header accepts descriptors of versions KILN_ABI_VERSION_MIN ..
 * KILN_ABI_VERSION and reads the version 3 fields only when abi_version >= 3.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_ABI_VERSION 3
#define KILN_ABI_VERSION_MIN 2 /* oldest descriptor layout still read */

/* Status codes returned by kiln_model.run and kiln_run_checked. */
#define KILN_OK 0
#define KILN_ERR_NULL 1  /* null inputs/outputs/workspace array or element */
#define KILN_ERR_ALIGN 2 /* workspace not aligned to workspace_align */
#define KILN_ERR_ARITY 3 /* wrong number of inputs/outputs (checked helper) */
#define KILN_ERR_SIZE 4  /* wrong buffer size (checked helper) */
#define KILN_ERR_ABI 5   /* descriptor has an unsupported abi_version */
/* Run-time errors of the model's own computation. The run stops at the failing
 * kernel before any access outside a tensor; outputs are then unspecified. */
#define KILN_ERR_INDEX 6  /* an index input is out of range (Gather, GatherElements,
                             GatherND, ScatterElements, ScatterND) */
#define KILN_ERR_DIVIDE 7 /* integer Div/Mod by zero, or signed MIN / -1 */

/* Element type codes (ONNX TensorProto numbering). */
#define KILN_DTYPE_F32 1
#define KILN_DTYPE_U8 2
#define KILN_DTYPE_I8 3
#define KILN_DTYPE_U16 4
#define KILN_DTYPE_I16 5
#define KILN_DTYPE_I32 6
#define KILN_DTYPE_I64 7
#define KILN_DTYPE_BOOL 9
#define KILN_DTYPE_F16 10
#define KILN_DTYPE_F64 11
#define KILN_DTYPE_U32 12
#define KILN_DTYPE_U64 13
#define KILN_DTYPE_BF16 16

/* One input or output tensor: dense, row-major (C order). 32 bytes. */
typedef struct kiln_tensor_info {
  const char *name;     /* NUL-terminated, from the source model */
  int32_t dtype;        /* KILN_DTYPE_* */
  int32_t rank;         /* number of dims (0 = scalar) */
  const int64_t *dims;  /* rank entries */
  uint64_t nbytes;      /* product(dims) * element size */
} kiln_tensor_info;

/* Runs work items [begin, end) of the job described by `arg`. */
typedef void (*kiln_task_fn)(void *arg, int64_t begin, int64_t end);

/* A thread pool a model may split its parallel kernels over (run_pool).
 * parallel_for(ctx, fn, arg, n) must call fn(arg, b, e) on disjoint ranges
 * covering [0, n) -- from any threads, in any order -- and return when all
 * calls have returned. `threads` is informational (>= 1). A pool shared by
 * runs on several threads must accept concurrent parallel_for calls (the Rust
 * runtime's pool runs one job at a time; a caller that finds it busy runs its
 * own ranges). */
typedef struct kiln_pool {
  void *ctx;
  int32_t threads;
  void (*parallel_for)(void *ctx, kiln_task_fn fn, void *arg, int64_t n);
} kiln_pool;

/* One step of the run schedule, for profiles (ABI v3): a kernel computing
 * one node of the optimized graph, or a copy into an output. 24 bytes. */
typedef struct kiln_node_info {
  const char *name; /* the node's name (a fused node takes its last op's) */
  const char *op;   /* op with fused steps: "conv+add+relu", "chain(mul+add)" */
  uint64_t flops;   /* floating-point operations per run (2 per multiply-add) */
} kiln_node_info;

/* Callbacks of run_profile: begin(ctx, i) right before schedule step i
 * (an index into kiln_model.nodes) and end(ctx, i) right after it, from the
 * calling thread, in schedule order. */
typedef struct kiln_profiler {
  void *ctx;
  void (*begin)(void *ctx, uint32_t node);
  void (*end)(void *ctx, uint32_t node);
} kiln_profiler;

/* The model descriptor. 104 bytes on LP64 (80 up to ABI v2). */
typedef struct kiln_model {
  uint32_t abi_version; /* KILN_ABI_VERSION */
  const char *name;
  uint32_t n_inputs;
  const kiln_tensor_info *inputs;
  uint32_t n_outputs;
  const kiln_tensor_info *outputs;
  uint64_t workspace_size;  /* bytes of scratch memory run needs (may be 0) */
  uint32_t workspace_align; /* required alignment of the workspace */
  /* Returns KILN_OK or KILN_ERR_* (NULL, ALIGN, INDEX, DIVIDE). `workspace`
   * may be NULL when workspace_size is 0. Buffers must not overlap. */
  int32_t (*run)(const void *const *inputs, void *const *outputs,
                 void *workspace);
  /* As run, with convolutions and matrix products split over `pool`'s
   * threads (NULL: single-threaded, exactly run). */
  int32_t (*run_pool)(const void *const *inputs, void *const *outputs,
                      void *workspace, const kiln_pool *pool);   /* ABI v2 */
  /* ABI v3: the run schedule and a separate, instrumented entry point (run
   * and run_pool carry no profiling code). run_profile is run_pool calling
   * prof->begin/end around each of the n_nodes steps; prof must not be NULL. */
  uint32_t n_nodes;
  const kiln_node_info *nodes;
  int32_t (*run_profile)(const void *const *inputs, void *const *outputs,
                         void *workspace, const kiln_pool *pool,
                         const kiln_profiler *prof);
} kiln_model;

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && \
    UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(kiln_tensor_info) == 32, "kiln_tensor_info layout");
_Static_assert(sizeof(kiln_model) == 104, "kiln_model layout");
_Static_assert(sizeof(kiln_pool) == 24, "kiln_pool layout");
_Static_assert(sizeof(kiln_node_info) == 24, "kiln_node_info layout");
_Static_assert(sizeof(kiln_profiler) == 24, "kiln_profiler layout");
#endif

/* Validates the ABI version, the number of buffers, their sizes in bytes,
 * null pointers and the workspace alignment; KILN_OK or KILN_ERR_*. */
static inline int32_t kiln_check_run(const kiln_model *m, uint32_t n_in,
                                     const void *const *in,
                                     const uint64_t *in_bytes, uint32_t n_out,
                                     void *const *out,
                                     const uint64_t *out_bytes,
                                     void *workspace) {
  uint32_t i;
  if (m == NULL || m->run == NULL || m->run_pool == NULL) return KILN_ERR_NULL;
  if (m->abi_version < KILN_ABI_VERSION_MIN ||
      m->abi_version > KILN_ABI_VERSION)
    return KILN_ERR_ABI;
  if (n_in != m->n_inputs || n_out != m->n_outputs) return KILN_ERR_ARITY;
  if ((n_in > 0 && (in == NULL || in_bytes == NULL || m->inputs == NULL)) ||
      (n_out > 0 && (out == NULL || out_bytes == NULL || m->outputs == NULL)))
    return KILN_ERR_NULL;
  for (i = 0; i < n_in; i++) {
    if (in[i] == NULL) return KILN_ERR_NULL;
    if (in_bytes[i] != m->inputs[i].nbytes) return KILN_ERR_SIZE;
  }
  for (i = 0; i < n_out; i++) {
    if (out[i] == NULL) return KILN_ERR_NULL;
    if (out_bytes[i] != m->outputs[i].nbytes) return KILN_ERR_SIZE;
  }
  if (m->workspace_size > 0) {
    if (workspace == NULL) return KILN_ERR_NULL;
    if (m->workspace_align > 1 &&
        ((uintptr_t)workspace % (uintptr_t)m->workspace_align) != 0)
      return KILN_ERR_ALIGN;
  }
  return KILN_OK;
}

/* Calls m->run_pool after kiln_check_run (pool may be NULL, but a pool's
 * parallel_for may not: KILN_ERR_NULL). */
static inline int32_t kiln_run_pool_checked(const kiln_model *m, uint32_t n_in,
                                       const void *const *in,
                                       const uint64_t *in_bytes,
                                       uint32_t n_out, void *const *out,
                                       const uint64_t *out_bytes,
                                       void *workspace,
                                       const kiln_pool *pool) {
  int32_t s = kiln_check_run(m, n_in, in, in_bytes, n_out, out, out_bytes,
                             workspace);
  if (s != KILN_OK) return s;
  if (pool != NULL && pool->parallel_for == NULL) return KILN_ERR_NULL;
  return m->run_pool(in, out, workspace, pool);
}

/* Calls m->run_profile after kiln_check_run; KILN_ERR_ABI for a descriptor
 * older than ABI v3 (no profile). */
static inline int32_t kiln_run_profile_checked(
    const kiln_model *m, uint32_t n_in, const void *const *in,
    const uint64_t *in_bytes, uint32_t n_out, void *const *out,
    const uint64_t *out_bytes, void *workspace, const kiln_pool *pool,
    const kiln_profiler *prof) {
  int32_t s = kiln_check_run(m, n_in, in, in_bytes, n_out, out, out_bytes,
                             workspace);
  if (s != KILN_OK) return s;
  if (m->abi_version < 3 || m->run_profile == NULL) return KILN_ERR_ABI;
  if (pool != NULL && pool->parallel_for == NULL) return KILN_ERR_NULL;
  if (prof == NULL || prof->begin == NULL || prof->end == NULL ||
      (m->n_nodes > 0 && m->nodes == NULL))
    return KILN_ERR_NULL;
  return m->run_profile(in, out, workspace, pool, prof);
}

/* kiln_run_pool_checked without a pool (single-threaded). */
static inline int32_t kiln_run_checked(const kiln_model *m, uint32_t n_in,
                                       const void *const *in,
                                       const uint64_t *in_bytes,
                                       uint32_t n_out, void *const *out,
                                       const uint64_t *out_bytes,
                                       void *workspace) {
  return kiln_run_pool_checked(m, n_in, in, in_bytes, n_out, out, out_bytes,
                               workspace, NULL);
}

/* ---- CUDA artefacts (kiln build --target nvptx64-nvidia-cuda) ----
 * Implemented by kiln's runtime built with its `cuda` feature (the CUDA driver is
 * loaded at run time: nothing links libcuda). A `.so` built for the GPU exports
 * `const uint8_t *kiln_cuda_artefact_default(uint64_t *len)` (and
 * `<name>_cuda_artefact`): the bytes to pass to kiln_cuda_load. Every call but
 * kiln_cuda_available returns KILN_CUDA_OK or a KILN_CUDA_ERR_* code, the
 * message of which kiln_cuda_last_error gives (per thread). */
#define KILN_CUDA_OK 0
#define KILN_CUDA_ERR_NO_DRIVER 100 /* libcuda.so not found: no NVIDIA driver */
#define KILN_CUDA_ERR_DRIVER 101    /* a driver call failed (message names it) */
#define KILN_CUDA_ERR_ARTEFACT 102  /* malformed artefact bytes */
#define KILN_CUDA_ERR_ARGS 103      /* null pointer, wrong count or size */

typedef struct kiln_cuda_model kiln_cuda_model;

/* 1 if the NVIDIA driver library can be loaded, else 0 (never fails). */
int32_t kiln_cuda_available(void);
/* The message of this thread's last failed kiln_cuda_* call ("" if none). */
const char *kiln_cuda_last_error(void);
/* Load an artefact on device `ordinal`: module, weights uploaded once, one
 * workspace; *out receives the model. */
int32_t kiln_cuda_load(const uint8_t *data, uint64_t len, int32_t ordinal,
                       kiln_cuda_model **out);
void kiln_cuda_free(kiln_cuda_model *m);
/* Number of inputs (what = 0) or outputs (what = 1), or -1. */
int64_t kiln_cuda_count(kiln_cuda_model *m, int32_t what);
/* Byte size of input (what = 0) or output (1) `index`, or -1. */
int64_t kiln_cuda_tensor_bytes(kiln_cuda_model *m, int32_t what,
                               uint32_t index);
/* Run on host buffers, synchronously (no allocation per call). */
int32_t kiln_cuda_run(kiln_cuda_model *m, const uint8_t *const *inputs,
                      uint8_t *const *outputs);
/* Enqueue a run on device pointers (CUdeviceptr) on `stream` (a CUstream;
 * NULL: the model's own); returns without waiting. */
int32_t kiln_cuda_run_device(kiln_cuda_model *m, const uint64_t *inputs,
                             const uint64_t *outputs, void *stream);
/* 1: the first run is captured as a CUDA graph, later runs replay it. */
int32_t kiln_cuda_set_graph(kiln_cuda_model *m, int32_t on);
/* Wait for the model's stream. */
int32_t kiln_cuda_synchronize(kiln_cuda_model *m);

#ifdef __cplusplus
}
#endif

#endif /* KILN_H */
