/*
 * driver.c - main() of standalone executables built by `kiln build --emit exe`.
 *
 * Linked with a compiled model object that exports kiln_model_default():
 *     cc -O2 driver.c model.o -lm -lpthread
 *
 * Usage: prog [--input NAME=FILE.npy]... [FILE.npy]... [--output-dir DIR]
 *             [--bench N] [--threads N] [--info]
 *             [--profile] [--profile-json FILE] [--profile-runs N]
 *
 * Self-contained on purpose: the ABI structs below mirror runtime/include/kiln.h.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define KILN_ABI_VERSION 3

typedef struct kiln_tensor_info {
  const char *name;
  int32_t dtype;
  int32_t rank;
  const int64_t *dims;
  uint64_t nbytes;
} kiln_tensor_info;

typedef void (*kiln_task_fn)(void *arg, int64_t begin, int64_t end);

typedef struct kiln_pool {
  void *ctx;
  int32_t threads;
  void (*parallel_for)(void *ctx, kiln_task_fn fn, void *arg, int64_t n);
} kiln_pool;

typedef struct kiln_node_info {
  const char *name;
  const char *op;
  uint64_t flops;
} kiln_node_info;

typedef struct kiln_profiler {
  void *ctx;
  void (*begin)(void *ctx, uint32_t node);
  void (*end)(void *ctx, uint32_t node);
} kiln_profiler;

typedef struct kiln_model {
  uint32_t abi_version;
  const char *name;
  uint32_t n_inputs;
  const kiln_tensor_info *inputs;
  uint32_t n_outputs;
  const kiln_tensor_info *outputs;
  uint64_t workspace_size;
  uint32_t workspace_align;
  int32_t (*run)(const void *const *inputs, void *const *outputs,
                 void *workspace);
  int32_t (*run_pool)(const void *const *inputs, void *const *outputs,
                      void *workspace, const struct kiln_pool *pool);
  uint32_t n_nodes;
  const kiln_node_info *nodes;
  int32_t (*run_profile)(const void *const *inputs, void *const *outputs,
                         void *workspace, const struct kiln_pool *pool,
                         const kiln_profiler *prof);
} kiln_model;

extern const kiln_model *kiln_model_default(void);

#define EXIT_RUN 1
#define EXIT_USAGE 2
#define MAX_HEADER_LEN (1u << 20)
#define BUF_ALIGN 64

static const char *prog = "model";

/* ---- dtypes ------------------------------------------------------------ */

/* npy type string (without byte order) and element size of an ABI dtype. */
static const char *dtype_npy(int32_t code, size_t *size) {
  switch (code) {
  case 1: *size = 4; return "f4";
  case 2: *size = 1; return "u1";
  case 3: *size = 1; return "i1";
  case 4: *size = 2; return "u2";
  case 5: *size = 2; return "i2";
  case 6: *size = 4; return "i4";
  case 7: *size = 8; return "i8";
  case 9: *size = 1; return "b1";
  case 10: *size = 2; return "f2";
  case 11: *size = 8; return "f8";
  case 12: *size = 4; return "u4";
  case 13: *size = 8; return "u8";
  case 16: *size = 2; return "V2";
  default: *size = 0; return NULL;
  }
}

static const char *dtype_name(int32_t code) {
  switch (code) {
  case 1: return "f32";
  case 2: return "u8";
  case 3: return "i8";
  case 4: return "u16";
  case 5: return "i16";
  case 6: return "i32";
  case 7: return "i64";
  case 9: return "bool";
  case 10: return "f16";
  case 11: return "f64";
  case 12: return "u32";
  case 13: return "u64";
  case 16: return "bf16";
  default: return "?";
  }
}

/* Full descr written for an ABI dtype ("<f4", "|u1", ...). */
static void dtype_descr(int32_t code, char out[8]) {
  size_t size;
  const char *t = dtype_npy(code, &size);
  snprintf(out, 8, "%c%s", size == 1 ? '|' : '<', t ? t : "V0");
}

/* Does a file's descr match the model's dtype? */
static int descr_matches(const char *descr, int32_t code) {
  size_t size;
  const char *t = dtype_npy(code, &size);
  if (t == NULL || strlen(descr) != 3 || strcmp(descr + 1, t) != 0) return 0;
  switch (descr[0]) {
  case '<': case '|': return 1;
  case '=': {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
  }
  case '>': return size == 1;
  default: return 0;
  }
}

static void print_shape(FILE *f, int rank, const int64_t *dims) {
  fputc('[', f);
  for (int i = 0; i < rank; i++)
    fprintf(f, "%s%lld", i ? ", " : "", (long long)dims[i]);
  fputc(']', f);
}

/* ---- memory ------------------------------------------------------------ */

/* Aligned allocation of at least `size` bytes (size may be 0). */
static void *alloc_aligned(size_t size, size_t align) {
  if (align < BUF_ALIGN) align = BUF_ALIGN;
  size_t rounded = (size + align - 1) / align * align;
  if (rounded == 0) rounded = align;
  if (rounded < size) return NULL;
  return aligned_alloc(align, rounded);
}

/* ---- .npy reading ------------------------------------------------------ */

/* Returns a pointer just after `'key':` (and spaces) in a header dict. */
static const char *find_key(const char *h, const char *key) {
  char pat[32];
  for (int q = 0; q < 2; q++) {
    char c = q ? '"' : '\'';
    snprintf(pat, sizeof pat, "%c%s%c", c, key, c);
    const char *p = strstr(h, pat);
    if (p == NULL) continue;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
  }
  return NULL;
}

/* Reads FILE into a freshly allocated aligned buffer after checking it against the model's
 * tensor `t`. Returns NULL after printing an error. */
static void *read_npy(const char *path, const char *what,
                      const kiln_tensor_info *t) {
  void *data = NULL;
  char *header = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "%s: %s '%s': cannot open %s: %s\n", prog, what, t->name,
            path, strerror(errno));
    return NULL;
  }
#define FAIL(...)                                                       \
  do {                                                                  \
    fprintf(stderr, "%s: %s '%s' (%s): ", prog, what, t->name, path);   \
    fprintf(stderr, __VA_ARGS__);                                       \
    fputc('\n', stderr);                                                \
    goto fail;                                                          \
  } while (0)
  struct stat st;
  if (fstat(fileno(f), &st) != 0) FAIL("cannot stat: %s", strerror(errno));
  uint64_t file_len = (uint64_t)st.st_size;
  unsigned char pre[12];
  if (file_len < 10 || fread(pre, 1, 10, f) != 10)
    FAIL("not a .npy file (too short)");
  if (memcmp(pre, "\x93NUMPY", 6) != 0) FAIL("not a .npy file (bad magic)");
  uint64_t hlen, start;
  if (pre[6] == 1) {
    hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
    start = 10;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (file_len < 12 || fread(pre + 10, 1, 2, f) != 2)
      FAIL("truncated header");
    hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 |
           (uint64_t)pre[11] << 24;
    start = 12;
  } else {
    FAIL("unsupported .npy format version %d.%d", pre[6], pre[7]);
  }
  if (hlen > MAX_HEADER_LEN) FAIL("header too large");
  if (start + hlen > file_len) FAIL("truncated header");
  header = malloc(hlen + 1);
  if (header == NULL) FAIL("out of memory");
  if (fread(header, 1, hlen, f) != hlen) FAIL("truncated header");
  header[hlen] = '\0';
  if (strlen(header) != hlen) FAIL("malformed header (NUL byte)");

  /* descr */
  const char *p = find_key(header, "descr");
  if (p == NULL || (*p != '\'' && *p != '"')) FAIL("header lacks a simple 'descr'");
  char q = *p++;
  const char *e = strchr(p, q);
  if (e == NULL) FAIL("malformed header (descr)");
  char descr[16];
  size_t dl = (size_t)(e - p);
  if (dl >= sizeof descr) dl = sizeof descr - 1;
  memcpy(descr, p, dl);
  descr[dl] = '\0';
  if (!descr_matches(descr, t->dtype)) {
    char want[8];
    dtype_descr(t->dtype, want);
    FAIL("dtype '%s' does not match the model's %s ('%s')", descr,
         dtype_name(t->dtype), want);
  }

  /* fortran_order */
  p = find_key(header, "fortran_order");
  if (p == NULL) FAIL("header lacks 'fortran_order'");
  if (strncmp(p, "True", 4) == 0)
    FAIL("Fortran-order arrays are not supported (use np.ascontiguousarray)");
  if (strncmp(p, "False", 5) != 0) FAIL("malformed header (fortran_order)");

  /* shape */
  p = find_key(header, "shape");
  if (p == NULL || *p != '(') FAIL("header lacks 'shape'");
  p++;
  int rank = 0, shape_ok = 1;
  int64_t dims[64];
  for (;;) {
    while (*p == ' ') p++;
    if (*p == ')') break;
    if (*p < '0' || *p > '9') FAIL("malformed header (shape)");
    errno = 0;
    char *end;
    unsigned long long d = strtoull(p, &end, 10);
    if (errno != 0 || d > INT64_MAX) FAIL("malformed header (shape)");
    p = end;
    if (*p == 'L') p++;
    if (rank < 64) dims[rank] = (int64_t)d;
    if (rank >= t->rank || t->dims[rank] != (int64_t)d) shape_ok = 0;
    rank++;
    while (*p == ' ') p++;
    if (*p == ',') p++;
    else if (*p != ')') FAIL("malformed header (shape)");
  }
  if (rank != t->rank) shape_ok = 0;
  if (!shape_ok) {
    fprintf(stderr, "%s: %s '%s' (%s): shape ", prog, what, t->name, path);
    if (rank <= 64) print_shape(stderr, rank, dims);
    else fprintf(stderr, "(rank %d)", rank);
    fprintf(stderr, " does not match the model's ");
    print_shape(stderr, t->rank, t->dims);
    fputc('\n', stderr);
    goto fail;
  }
  if (file_len - start - hlen != t->nbytes)
    FAIL("expected %llu data bytes, file has %llu",
         (unsigned long long)t->nbytes,
         (unsigned long long)(file_len - start - hlen));
  data = alloc_aligned((size_t)t->nbytes, BUF_ALIGN);
  if (data == NULL) FAIL("out of memory");
  if (t->nbytes > 0 && fread(data, 1, (size_t)t->nbytes, f) != t->nbytes)
    FAIL("read error");
  free(header);
  fclose(f);
  return data;
#undef FAIL
fail:
  free(data);
  free(header);
  fclose(f);
  return NULL;
}

/* ---- .npy writing ------------------------------------------------------ */

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Writes an output atomically: DIR/.FILE.tmpXXXXXX then rename to DIR/FILE. */
static int write_npy(const char *dir, const char *file,
                     const kiln_tensor_info *t, const void *data) {
  char header[4096];
  char descr[8];
  dtype_descr(t->dtype, descr);
  int n = snprintf(header, sizeof header,
                   "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  for (int i = 0; i < t->rank && n < (int)sizeof header; i++)
    n += snprintf(header + n, sizeof header - (size_t)n, "%s%lld%s",
                  i ? ", " : "", (long long)t->dims[i],
                  t->rank == 1 ? "," : "");
  if (n < (int)sizeof header)
    n += snprintf(header + n, sizeof header - (size_t)n, "), }");
  if (n + 64 >= (int)sizeof header) {
    fprintf(stderr, "%s: output '%s': rank too large for a .npy header\n",
            prog, t->name);
    return -1;
  }
  /* pad so the data starts at a multiple of 64 bytes */
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  memset(header + n, ' ', pad);
  header[(size_t)n + pad] = '\n';
  size_t hlen = (size_t)n + pad + 1;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                           (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};

  size_t plen = strlen(dir) + strlen(file) + 16;
  char *final = malloc(plen), *tmp = malloc(plen);
  if (final == NULL || tmp == NULL) {
    free(final);
    free(tmp);
    fprintf(stderr, "%s: out of memory\n", prog);
    return -1;
  }
  snprintf(final, plen, "%s/%s", dir, file);
  snprintf(tmp, plen, "%s/.%s.tmpXXXXXX", dir, file);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    fprintf(stderr, "%s: output '%s': cannot create %s: %s\n", prog, t->name,
            tmp, strerror(errno));
    free(final);
    free(tmp);
    return -1;
  }
  mode_t mask = umask(0);
  umask(mask);
  int rc = 0;
  if (fchmod(fd, 0666 & ~mask) != 0 || write_all(fd, pre, sizeof pre) != 0 ||
      write_all(fd, header, hlen) != 0 ||
      write_all(fd, data, (size_t)t->nbytes) != 0 || fsync(fd) != 0) {
    fprintf(stderr, "%s: output '%s': cannot write %s: %s\n", prog, t->name,
            tmp, strerror(errno));
    rc = -1;
  }
  if (close(fd) != 0 && rc == 0) {
    fprintf(stderr, "%s: output '%s': cannot write %s: %s\n", prog, t->name,
            tmp, strerror(errno));
    rc = -1;
  }
  if (rc == 0 && rename(tmp, final) != 0) {
    fprintf(stderr, "%s: output '%s': cannot rename to %s: %s\n", prog,
            t->name, final, strerror(errno));
    rc = -1;
  }
  if (rc != 0) unlink(tmp);
  free(final);
  free(tmp);
  return rc;
}

/* File name for output i: the name with unsafe characters replaced by '_'. */
static char *output_file_name(const kiln_model *m, uint32_t i) {
  const char *name = m->outputs[i].name;
  size_t n = strlen(name);
  char *s = malloc(n + 32);
  if (s == NULL) return NULL;
  for (size_t k = 0; k < n; k++) {
    char c = name[k];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '_' || c == '-' ||
             (c == '.' && k > 0);
    s[k] = ok ? c : '_';
  }
  if (n == 0) n = (size_t)sprintf(s, "output_%u", i);
  else s[n] = '\0';
  /* disambiguate names that collide after sanitizing */
  for (uint32_t j = 0; j < i; j++) {
    char *other = output_file_name(m, j);
    int same = other != NULL && strcmp(other, s) == 0;
    free(other);
    if (same) {
      sprintf(s + n, "_%u", i);
      break;
    }
  }
  strcat(s, ".npy");
  return s;
}

/* ---- thread pool (--threads) ------------------------------------------- */

/* Workers started once. A job's items are handed out in chunks from one
 * atomic word (job number << 32 | next item) by compare-and-swap, so the
 * calling thread takes every chunk itself when a worker is slow to wake
 * (a busy machine), and a late worker can never take a chunk of a newer job.
 * Between jobs workers spin on the job counter for a while (jobs come in
 * bursts: one per convolution), then sleep on a condition variable. */
#include <sched.h>
#include <stdatomic.h>

#define POOL_SPIN 20000

typedef struct pool_state {
  pthread_mutex_t mu;
  pthread_cond_t start;
  int threads;
  atomic_ulong generation;  /* job number; bumped to publish a job */
  atomic_ullong next;       /* job number << 32 | next item */
  atomic_llong done;        /* items of the current job finished */
  atomic_int stop, sleepers;
  /* the job (atomics: a late worker may read them while the next job is set) */
  _Atomic(kiln_task_fn) fn;
  _Atomic(void *) arg;
  atomic_llong n, chunk;
} pool_state;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Take and run chunks of job `job` until none is left. */
static void pool_work(pool_state *p, unsigned long job, kiln_task_fn fn, void *arg,
                      int64_t n, int64_t chunk) {
  for (;;) {
    unsigned long long v = atomic_load(&p->next);
    if ((unsigned long)(v >> 32) != (job & 0xffffffffu)) return;
    int64_t b = (int64_t)(v & 0xffffffffu);
    if (b >= n) return;
    int64_t e = b + chunk < n ? b + chunk : n;
    unsigned long long w = (v & ~0xffffffffull) | (unsigned long long)e;
    if (!atomic_compare_exchange_weak(&p->next, &v, w)) continue;
    fn(arg, b, e);
    atomic_fetch_add(&p->done, e - b);
  }
}

static void *pool_worker(void *a) {
  pool_state *p = a;
  unsigned long seen = 0;
  for (;;) {
    unsigned long g;
    int spins = 0;
    while ((g = atomic_load(&p->generation)) == seen && spins < POOL_SPIN) {
      cpu_relax();
      spins++;
    }
    if (g == seen) {
      pthread_mutex_lock(&p->mu);
      atomic_fetch_add(&p->sleepers, 1);
      while ((g = atomic_load(&p->generation)) == seen)
        pthread_cond_wait(&p->start, &p->mu);
      atomic_fetch_sub(&p->sleepers, 1);
      pthread_mutex_unlock(&p->mu);
    }
    seen = g;
    if (atomic_load(&p->stop)) break;
    /* a snapshot of the job; pool_work re-checks the job number on every take */
    pool_work(p, g, atomic_load(&p->fn), atomic_load(&p->arg), atomic_load(&p->n),
              atomic_load(&p->chunk));
  }
  return NULL;
}

static void pool_parallel_for(void *ctx, kiln_task_fn fn, void *arg, int64_t n) {
  pool_state *p = ctx;
  if (p->threads <= 1 || n <= 1 || n > 0xffffffffll) {
    if (n > 0) fn(arg, 0, n);
    return;
  }
  unsigned long job = atomic_load(&p->generation) + 1;
  int64_t chunk = n / (4 * (int64_t)p->threads);
  if (chunk < 1) chunk = 1;
  atomic_store(&p->fn, fn);
  atomic_store(&p->arg, arg);
  atomic_store(&p->n, n);
  atomic_store(&p->chunk, chunk);
  atomic_store(&p->done, 0);
  atomic_store(&p->next, (unsigned long long)(job & 0xffffffffu) << 32);
  atomic_store(&p->generation, job); /* publishes the job (seq_cst) */
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
  }
  pool_work(p, job, fn, arg, n, chunk);
  int spins = 0;
  while (atomic_load(&p->done) < n) {
    if (++spins < POOL_SPIN) {
      cpu_relax();
    } else {
      sched_yield();
    }
  }
}

static pool_state pool_st;
static pthread_t pool_tids[256];
static int pool_started;

/* Stop and join the workers (none left running at exit: nothing leaks). */
static void pool_destroy(void) {
  if (pool_started == 0) return;
  atomic_store(&pool_st.stop, 1);
  atomic_fetch_add(&pool_st.generation, 1); /* wakes spinners and sleepers */
  pthread_mutex_lock(&pool_st.mu);
  pthread_cond_broadcast(&pool_st.start);
  pthread_mutex_unlock(&pool_st.mu);
  for (int i = 0; i < pool_started; i++) pthread_join(pool_tids[i], NULL);
  pool_started = 0;
}

/* Start threads-1 workers; NULL on failure. */
static kiln_pool *pool_create(int threads) {
  pool_state *st = &pool_st;
  static kiln_pool pool;
  if (threads > 256) threads = 256;
  pthread_mutex_init(&st->mu, NULL);
  pthread_cond_init(&st->start, NULL);
  st->threads = threads;
  for (int i = 1; i < threads; i++) {
    if (pthread_create(&pool_tids[pool_started], NULL, pool_worker, st) != 0) {
      pool_destroy();
      return NULL;
    }
    pool_started++;
  }
  pool.ctx = st;
  pool.threads = threads;
  pool.parallel_for = pool_parallel_for;
  return &pool;
}

/* ---- main -------------------------------------------------------------- */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- profiling (--profile, --profile-json) ------------------------------ */

/* Per run r and step i: start and duration in ns since `origin`. */
typedef struct prof_state {
  uint32_t n;
  long runs, run;
  double origin_ms;
  double *start, *dur;          /* runs * n */
  double *run_start, *run_wall; /* runs */
} prof_state;

static double prof_now_ns(const prof_state *p) {
  return (now_ms() - p->origin_ms) * 1e6;
}

static void prof_begin(void *ctx, uint32_t i) {
  prof_state *p = ctx;
  if (i < p->n) p->start[(size_t)p->run * p->n + i] = prof_now_ns(p);
}

static void prof_end(void *ctx, uint32_t i) {
  prof_state *p = ctx;
  if (i < p->n) {
    size_t k = (size_t)p->run * p->n + i;
    p->dur[k] = prof_now_ns(p) - p->start[k];
  }
}

static double *prof_mean_ms; /* for the sort comparator */

static int cmp_step(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  double tx = prof_mean_ms[x], ty = prof_mean_ms[y];
  if (tx != ty) return tx < ty ? 1 : -1;
  return (x > y) - (x < y);
}

static void print_clipped(const char *s, int w) {
  int n = (int)strlen(s);
  if (n <= w) printf("%-*s", w, s);
  else printf("%.*s~", w - 1, s);
}

/* The per-step table, slowest first (the same columns as kiln run --profile). */
static int prof_table(const kiln_model *m, const prof_state *p) {
  uint32_t n = p->n;
  double *mean = calloc(n + 1, sizeof *mean);
  uint32_t *order = calloc(n + 1, sizeof *order);
  if (mean == NULL || order == NULL) {
    free(mean);
    free(order);
    return -1;
  }
  double total = 0, wall = 0;
  for (uint32_t i = 0; i < n; i++) {
    for (long r = 0; r < p->runs; r++) mean[i] += p->dur[(size_t)r * n + i];
    total += mean[i];
    mean[i] /= (double)p->runs * 1e6;
    order[i] = i;
  }
  for (long r = 0; r < p->runs; r++) wall += p->run_wall[r];
  prof_mean_ms = mean;
  qsort(order, n, sizeof *order, cmp_step);
  int nw = 4, ow = 2;
  for (uint32_t i = 0; i < n; i++) {
    int a = (int)strlen(m->nodes[i].name), b = (int)strlen(m->nodes[i].op);
    if (a > nw) nw = a;
    if (b > ow) ow = b;
  }
  if (nw > 40) nw = 40;
  if (ow > 28) ow = 28;
  printf("profile of '%s': %ld run%s, %.3f ms per run (%.3f ms in %u steps)\n",
         m->name, p->runs, p->runs == 1 ? "" : "s", wall / (double)p->runs / 1e6,
         total / (double)p->runs / 1e6, n);
  printf("%5s  %-*s  %-*s  %10s  %6s  %8s\n", "#", nw, "node", ow, "op", "ms",
         "%", "GFLOP/s");
  for (uint32_t k = 0; k < n; k++) {
    uint32_t i = order[k];
    double ms = mean[i];
    double pct = total > 0 ? 100.0 * ms * (double)p->runs * 1e6 / total : 0.0;
    double gf = ms > 0 ? (double)m->nodes[i].flops / (ms * 1e6) : 0.0;
    printf("%5u  ", i);
    print_clipped(m->nodes[i].name, nw);
    printf("  ");
    print_clipped(m->nodes[i].op, ow);
    printf("  %10.4f  %6.2f  %8.2f\n", ms, pct, gf);
  }
  free(mean);
  free(order);
  return 0;
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\r') fputs("\\r", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

/* A Chrome trace of the profiled runs (as kiln run --profile-json writes it),
 * written to a temporary file and renamed into place. */
static int prof_json(const kiln_model *m, const prof_state *p, const char *path) {
  size_t len = strlen(path);
  char *tmp = malloc(len + 16);
  if (tmp == NULL) return -1;
  snprintf(tmp, len + 16, "%s.tmpXXXXXX", path);
  int fd = mkstemp(tmp);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (f == NULL) {
    fprintf(stderr, "%s: cannot create %s: %s\n", prog, tmp, strerror(errno));
    if (fd >= 0) close(fd), unlink(tmp);
    free(tmp);
    return -1;
  }
  fputs("[\n", f);
  for (long r = 0; r < p->runs; r++) {
    fprintf(f, "%s{\"cat\":\"Session\",\"pid\":1,\"tid\":1,\"ph\":\"X\",\"ts\":%.3f,"
               "\"dur\":%.3f,\"name\":\"model_run\",\"args\":{\"model\":",
            r ? ",\n" : "", p->run_start[r] / 1e3, p->run_wall[r] / 1e3);
    json_str(f, m->name);
    fprintf(f, ",\"run\":%ld}}", r);
    for (uint32_t i = 0; i < p->n; i++) {
      size_t k = (size_t)r * p->n + i;
      fprintf(f, ",\n{\"cat\":\"Node\",\"pid\":1,\"tid\":1,\"ph\":\"X\",\"ts\":%.3f,"
                 "\"dur\":%.3f,\"name\":", p->start[k] / 1e3, p->dur[k] / 1e3);
      json_str(f, m->nodes[i].name);
      fputs(",\"args\":{\"op_name\":", f);
      json_str(f, m->nodes[i].op);
      fprintf(f, ",\"flops\":%llu,\"index\":%u,\"run\":%ld}}",
              (unsigned long long)m->nodes[i].flops, i, r);
    }
  }
  fputs("\n]\n", f);
  int rc = 0;
  if (fflush(f) != 0 || fsync(fileno(f)) != 0) rc = -1;
  if (fclose(f) != 0) rc = -1;
  if (rc == 0 && rename(tmp, path) != 0) rc = -1;
  if (rc != 0) {
    fprintf(stderr, "%s: cannot write %s: %s\n", prog, path, strerror(errno));
    unlink(tmp);
  }
  free(tmp);
  return rc;
}

/* `runs` profiled runs; prints the table (--profile) and writes the trace
 * (--profile-json). Returns the model's status, or -1. */
static int32_t profile_runs(const kiln_model *m, const void **in, void **out,
                            void *ws, const kiln_pool *pool, long runs,
                            int table, const char *json) {
  prof_state p = {0};
  p.n = m->n_nodes;
  p.runs = runs;
  size_t cells = (size_t)runs * (p.n ? p.n : 1);
  p.start = calloc(cells, sizeof(double));
  p.dur = calloc(cells, sizeof(double));
  p.run_start = calloc((size_t)runs, sizeof(double));
  p.run_wall = calloc((size_t)runs, sizeof(double));
  int32_t status = 0;
  if (p.start == NULL || p.dur == NULL || p.run_start == NULL || p.run_wall == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    status = -1;
    goto done;
  }
  kiln_profiler prof = {&p, prof_begin, prof_end};
  p.origin_ms = now_ms();
  for (p.run = 0; p.run < runs && status == 0; p.run++) {
    p.run_start[p.run] = prof_now_ns(&p);
    status = m->run_profile((const void *const *)in, (void *const *)out, ws, pool, &prof);
    p.run_wall[p.run] = prof_now_ns(&p) - p.run_start[p.run];
  }
  if (status != 0) goto done;
  if (table && prof_table(m, &p) != 0) {
    fprintf(stderr, "%s: out of memory\n", prog);
    status = -1;
  }
  if (status == 0 && json != NULL && prof_json(m, &p, json) != 0) status = -1;
done:
  free(p.start);
  free(p.dur);
  free(p.run_start);
  free(p.run_wall);
  return status;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [--input NAME=FILE.npy]... [FILE.npy]... [--output-dir DIR]\n"
          "          [--bench N] [--threads N] [--info]\n"
          "          [--profile] [--profile-json FILE] [--profile-runs N]\n"
          "  --input NAME=FILE  input NAME from a .npy file (inputs may also be\n"
          "                     given positionally, in the model's order)\n"
          "  --output-dir DIR   where outputs are written as <name>.npy (default .)\n"
          "  --bench N          run N times after one warm-up; print median/min\n"
          "  --threads N        split convolutions and matrix products over N\n"
          "                     threads (default 1)\n"
          "  --info             print the model's inputs and outputs\n"
          "  --profile          print each step's time (ms, %%, GFLOP/s), slowest\n"
          "                     first, over --profile-runs runs (default 10)\n"
          "  --profile-json F   write those runs as a Chrome trace (chrome://tracing,\n"
          "                     Perfetto) to F\n"
          "  --profile-runs N   number of profiled runs (default 10)\n",
          prog);
}

static void print_info(const kiln_model *m) {
  printf("model: %s\n", m->name);
  printf("workspace: %llu bytes (align %u)\n",
         (unsigned long long)m->workspace_size, m->workspace_align);
  for (int k = 0; k < 2; k++) {
    uint32_t n = k ? m->n_outputs : m->n_inputs;
    const kiln_tensor_info *ts = k ? m->outputs : m->inputs;
    for (uint32_t i = 0; i < n; i++) {
      printf("%s %u: %s %s ", k ? "output" : "input", i, ts[i].name,
             dtype_name(ts[i].dtype));
      print_shape(stdout, ts[i].rank, ts[i].dims);
      printf(" (%llu bytes)\n", (unsigned long long)ts[i].nbytes);
    }
  }
}

int main(int argc, char **argv) {
  if (argc > 0 && argv[0] && argv[0][0]) {
    const char *slash = strrchr(argv[0], '/');
    prog = slash ? slash + 1 : argv[0];
  }
  const kiln_model *m = kiln_model_default();
  if (m == NULL || m->abi_version != KILN_ABI_VERSION || m->run == NULL ||
      m->run_pool == NULL || m->run_profile == NULL ||
      (m->n_nodes && m->nodes == NULL) ||
      (m->n_inputs && m->inputs == NULL) || (m->n_outputs && m->outputs == NULL)) {
    fprintf(stderr, "%s: invalid model descriptor (ABI version %u, expected %d)\n",
            prog, m ? m->abi_version : 0, KILN_ABI_VERSION);
    return EXIT_RUN;
  }
  uint32_t n_in = m->n_inputs, n_out = m->n_outputs;
  const char **files = calloc(n_in + 1, sizeof *files);
  if (files == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return EXIT_RUN;
  }
  const char *out_dir = ".";
  long bench = 0, threads = 1, prof_runs = 10;
  int info = 0, profile = 0;
  const char *prof_json_path = NULL;
  uint32_t next_pos = 0;

  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    const char *val = NULL;
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    int is_input = strcmp(arg, "--input") == 0 || strcmp(arg, "-i") == 0;
    int is_out = strcmp(arg, "--output-dir") == 0 || strcmp(arg, "-o") == 0;
    int is_bench = strcmp(arg, "--bench") == 0;
    int is_threads = strcmp(arg, "--threads") == 0;
    int is_pjson = strcmp(arg, "--profile-json") == 0;
    int is_pruns = strcmp(arg, "--profile-runs") == 0;
    if (strncmp(arg, "--profile-json=", 15) == 0) {
      is_pjson = 1;
      val = arg + 15;
    } else if (strncmp(arg, "--profile-runs=", 15) == 0) {
      is_pruns = 1;
      val = arg + 15;
    } else if (strncmp(arg, "--input=", 8) == 0) {
      is_input = 1;
      val = arg + 8;
    } else if (strncmp(arg, "--output-dir=", 13) == 0) {
      is_out = 1;
      val = arg + 13;
    } else if (strncmp(arg, "--bench=", 8) == 0) {
      is_bench = 1;
      val = arg + 8;
    } else if (strncmp(arg, "--threads=", 10) == 0) {
      is_threads = 1;
      val = arg + 10;
    }
    if ((is_input || is_out || is_bench || is_threads || is_pjson || is_pruns) &&
        val == NULL) {
      if (a + 1 >= argc) {
        fprintf(stderr, "%s: %s needs a value\n", prog, arg);
        usage(stderr);
        return EXIT_USAGE;
      }
      val = argv[++a];
    }
    if (is_out) {
      out_dir = val;
    } else if (is_pjson) {
      prof_json_path = val;
    } else if (is_pruns) {
      char *end;
      errno = 0;
      prof_runs = strtol(val, &end, 10);
      if (errno || *end || end == val || prof_runs < 1 || prof_runs > 1000000) {
        fprintf(stderr, "%s: --profile-runs needs an integer in 1..1000000, got '%s'\n",
                prog, val);
        return EXIT_USAGE;
      }
    } else if (strcmp(arg, "--profile") == 0) {
      profile = 1;
    } else if (is_bench) {
      char *end;
      errno = 0;
      bench = strtol(val, &end, 10);
      if (errno || *end || end == val || bench < 1) {
        fprintf(stderr, "%s: --bench needs a positive integer, got '%s'\n",
                prog, val);
        return EXIT_USAGE;
      }
    } else if (is_threads) {
      char *end;
      errno = 0;
      threads = strtol(val, &end, 10);
      if (errno || *end || end == val || threads < 1 || threads > 256) {
        fprintf(stderr, "%s: --threads needs an integer in 1..256, got '%s'\n",
                prog, val);
        return EXIT_USAGE;
      }
    } else if (strcmp(arg, "--info") == 0) {
      info = 1;
    } else if (is_input) {
      const char *eq = strchr(val, '=');
      int found = 0;
      if (eq != NULL) {
        size_t nl = (size_t)(eq - val);
        for (uint32_t i = 0; i < n_in; i++) {
          if (strlen(m->inputs[i].name) == nl &&
              strncmp(m->inputs[i].name, val, nl) == 0) {
            if (files[i] != NULL) {
              fprintf(stderr, "%s: input '%s' given twice\n", prog,
                      m->inputs[i].name);
              return EXIT_USAGE;
            }
            files[i] = eq + 1;
            found = 1;
            break;
          }
        }
        if (!found) {
          fprintf(stderr, "%s: the model has no input named '%.*s'\n", prog,
                  (int)nl, val);
          print_info(m);
          return EXIT_USAGE;
        }
      } else {
        arg = val;
        goto positional;
      }
    } else if (arg[0] == '-' && arg[1] != '\0' && strcmp(arg, "--") != 0) {
      fprintf(stderr, "%s: unknown option '%s'\n", prog, arg);
      usage(stderr);
      return EXIT_USAGE;
    } else {
      if (strcmp(arg, "--") == 0) continue;
    positional:
      while (next_pos < n_in && files[next_pos] != NULL) next_pos++;
      if (next_pos >= n_in) {
        fprintf(stderr, "%s: too many inputs ('%s'); the model takes %u\n",
                prog, arg, n_in);
        return EXIT_USAGE;
      }
      files[next_pos++] = arg;
    }
  }

  if (info) {
    print_info(m);
    int any = 0;
    for (uint32_t i = 0; i < n_in; i++) any |= files[i] != NULL;
    if (!any && n_in > 0) return 0;
  }
  for (uint32_t i = 0; i < n_in; i++) {
    if (files[i] == NULL) {
      fprintf(stderr, "%s: missing input %u '%s' (--input %s=FILE.npy)\n",
              prog, i, m->inputs[i].name, m->inputs[i].name);
      usage(stderr);
      return EXIT_USAGE;
    }
  }

  struct stat st;
  if (stat(out_dir, &st) != 0 && mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: cannot create output directory %s: %s\n", prog, out_dir, strerror(errno));
    return EXIT_RUN;
  }
  if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "%s: output directory %s does not exist\n", prog, out_dir);
    return EXIT_RUN;
  }

  const void **in = calloc(n_in + 1, sizeof *in);
  void **out = calloc(n_out + 1, sizeof *out);
  if (in == NULL || out == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return EXIT_RUN;
  }
  for (uint32_t i = 0; i < n_in; i++) {
    in[i] = read_npy(files[i], "input", &m->inputs[i]);
    if (in[i] == NULL) return EXIT_RUN;
  }
  for (uint32_t i = 0; i < n_out; i++) {
    out[i] = alloc_aligned((size_t)m->outputs[i].nbytes, BUF_ALIGN);
    if (out[i] == NULL) {
      fprintf(stderr, "%s: output '%s': cannot allocate %llu bytes\n", prog,
              m->outputs[i].name, (unsigned long long)m->outputs[i].nbytes);
      return EXIT_RUN;
    }
    memset(out[i], 0, (size_t)m->outputs[i].nbytes);
  }
  void *ws = NULL;
  if (m->workspace_size > 0) {
    size_t align = m->workspace_align ? m->workspace_align : 1;
    if ((align & (align - 1)) != 0) {
      fprintf(stderr, "%s: invalid workspace alignment %zu\n", prog, align);
      return EXIT_RUN;
    }
    ws = alloc_aligned((size_t)m->workspace_size, align);
    if (ws == NULL) {
      fprintf(stderr, "%s: cannot allocate a %llu-byte workspace\n", prog,
              (unsigned long long)m->workspace_size);
      return EXIT_RUN;
    }
  }

  const kiln_pool *pool = NULL;
  if (threads > 1) {
    pool = pool_create((int)threads);
    if (pool == NULL) {
      fprintf(stderr, "%s: cannot start %ld threads\n", prog, threads);
      return EXIT_RUN;
    }
  }
  int32_t status =
      m->run_pool((const void *const *)in, (void *const *)out, ws, pool);
  if (status == 0 && bench > 0) {
    double *times = malloc((size_t)bench * sizeof *times);
    if (times == NULL) {
      fprintf(stderr, "%s: out of memory\n", prog);
      return EXIT_RUN;
    }
    for (long r = 0; r < bench && status == 0; r++) {
      double t0 = now_ms();
      status = m->run_pool((const void *const *)in, (void *const *)out, ws, pool);
      times[r] = now_ms() - t0;
    }
    if (status == 0) {
      qsort(times, (size_t)bench, sizeof *times, cmp_double);
      double median = bench % 2 ? times[bench / 2]
                                : (times[bench / 2 - 1] + times[bench / 2]) / 2;
      printf("median: %.4f ms\n", median);
      printf("min: %.4f ms\n", times[0]);
      printf("runs: %ld\n", bench);
    }
    free(times);
  }
  if (status == 0 && (profile || prof_json_path != NULL))
    status = profile_runs(m, in, out, ws, pool, prof_runs, profile, prof_json_path);
  pool_destroy();
  if (status < 0) return EXIT_RUN;
  if (status != 0) {
    /* KILN_ERR_* of kiln.h */
    static const char *const names[] = {
        "ok",
        "null pointer",
        "misaligned workspace",
        "wrong number of buffers",
        "wrong buffer size",
        "unsupported ABI version",
        "index out of range",
        "integer division by zero or overflow"};
    fprintf(stderr, "%s: model '%s' failed with status %d (%s)\n", prog,
            m->name, status,
            status > 0 && status < 8 ? names[status] : "error");
    return EXIT_RUN;
  }

  for (uint32_t i = 0; i < n_out; i++) {
    char *file = output_file_name(m, i);
    if (file == NULL) {
      fprintf(stderr, "%s: out of memory\n", prog);
      return EXIT_RUN;
    }
    int rc = write_npy(out_dir, file, &m->outputs[i], out[i]);
    free(file);
    if (rc != 0) return EXIT_RUN;
  }

  for (uint32_t i = 0; i < n_in; i++) free((void *)in[i]);
  for (uint32_t i = 0; i < n_out; i++) free(out[i]);
  free(in);
  free(out);
  free(ws);
  free(files);
  return 0;
}
