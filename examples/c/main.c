/*
 * classify: run a model compiled by kiln on a float32 .npy input, print its first output and
 * compare it with a reference .npy (exit 1 when they differ by more than rtol 1e-4 / atol 1e-5).
 *
 *   classify INPUT.npy [EXPECTED.npy] [--profile]
 *
 * MODEL_HEADER ("tiny_cnn.h") and MODEL_FN (tiny_cnn_model) come from CMakeLists.txt.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include MODEL_HEADER

/* A little-endian float32 C-order .npy file: its data and element count (NULL on error). */
static float *read_npy_f32(const char *path, uint64_t *count) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  unsigned char pre[10];
  float *data = NULL;
  char header[4096];
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1) goto fail;
  size_t hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
  if (hlen >= sizeof header || fread(header, 1, hlen, f) != hlen) goto fail;
  header[hlen] = '\0';
  if (strstr(header, "'<f4'") == NULL || strstr(header, "'fortran_order': False") == NULL)
    goto fail;
  const char *s = strstr(header, "'shape': (");
  if (s == NULL) goto fail;
  s += 10;
  uint64_t n = 1;
  while (*s && *s != ')') {
    char *end;
    unsigned long long d = strtoull(s, &end, 10);
    if (end == s) break;
    n *= d;
    s = end;
    while (*s == ',' || *s == ' ') s++;
  }
  data = malloc(n * sizeof(float) + 1);
  if (data == NULL || fread(data, sizeof(float), n, f) != n) goto fail;
  fclose(f);
  *count = n;
  return data;
fail:
  free(data);
  fclose(f);
  return NULL;
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* Per-step times of a profiled run (kiln_run_profile_checked). */
typedef struct {
  double start, *ns;
} profile;

static void on_begin(void *ctx, uint32_t i) {
  (void)i;
  ((profile *)ctx)->start = now_ns();
}

static void on_end(void *ctx, uint32_t i) {
  profile *p = ctx;
  p->ns[i] += now_ns() - p->start;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s INPUT.npy [EXPECTED.npy] [--profile]\n", argv[0]);
    return 2;
  }
  int want_profile = argc > 2 && strcmp(argv[argc - 1], "--profile") == 0;
  const char *expected_path = argc > 2 && !(argc == 3 && want_profile) ? argv[2] : NULL;
  const kiln_model *m = MODEL_FN();
  if (m->n_inputs != 1 || m->inputs[0].dtype != KILN_DTYPE_F32 ||
      m->outputs[0].dtype != KILN_DTYPE_F32) {
    fprintf(stderr, "this example runs models with one float32 input and output\n");
    return 2;
  }
  uint64_t n_in = 0;
  float *x = read_npy_f32(argv[1], &n_in);
  if (x == NULL || n_in * sizeof(float) != m->inputs[0].nbytes) {
    fprintf(stderr, "%s: not a float32 .npy of %llu bytes\n", argv[1],
            (unsigned long long)m->inputs[0].nbytes);
    return 2;
  }
  const void *in[1] = {x};
  uint64_t in_bytes[1] = {m->inputs[0].nbytes};
  void **out = calloc(m->n_outputs, sizeof *out);
  uint64_t *out_bytes = calloc(m->n_outputs, sizeof *out_bytes);
  for (uint32_t i = 0; i < m->n_outputs; i++) {
    out_bytes[i] = m->outputs[i].nbytes;
    out[i] = malloc(out_bytes[i] + 1);
  }
  size_t align = m->workspace_align ? m->workspace_align : 1;
  void *ws = m->workspace_size
                 ? aligned_alloc(align, (m->workspace_size + align - 1) / align * align)
                 : NULL;
  int32_t status = kiln_run_checked(m, 1, in, in_bytes, m->n_outputs, out, out_bytes, ws);
  if (status != KILN_OK) {
    fprintf(stderr, "run failed with status %d\n", status);
    return 1;
  }
  const float *y = out[0];
  uint64_t n_out = out_bytes[0] / sizeof(float);
  uint64_t best = 0;
  for (uint64_t i = 1; i < n_out; i++)
    if (y[i] > y[best]) best = i;
  printf("%s: output '%s' has %llu values; largest %.6f at index %llu\n", m->name,
         m->outputs[0].name, (unsigned long long)n_out, y[best], (unsigned long long)best);

  if (want_profile) {
    profile p = {0, calloc(m->n_nodes + 1, sizeof(double))};
    kiln_profiler prof = {&p, on_begin, on_end};
    const int runs = 100;
    for (int r = 0; r < runs && status == KILN_OK; r++)
      status = kiln_run_profile_checked(m, 1, in, in_bytes, m->n_outputs, out, out_bytes, ws,
                                        NULL, &prof);
    if (status != KILN_OK) {
      fprintf(stderr, "profiled run failed with status %d\n", status);
      return 1;
    }
    for (uint32_t i = 0; i < m->n_nodes; i++)
      printf("  %-12s %-16s %8.2f us\n", m->nodes[i].name, m->nodes[i].op, p.ns[i] / runs / 1e3);
    free(p.ns);
  }

  if (expected_path != NULL) {
    uint64_t n_exp = 0;
    float *e = read_npy_f32(expected_path, &n_exp);
    if (e == NULL || n_exp != n_out) {
      fprintf(stderr, "%s: not a float32 .npy of %llu values\n", expected_path,
              (unsigned long long)n_out);
      return 2;
    }
    double worst = 0;
    for (uint64_t i = 0; i < n_out; i++) {
      double err = fabs((double)y[i] - e[i]);
      if (err > 1e-5 + 1e-4 * fabs(e[i])) {
        fprintf(stderr, "mismatch at %llu: kiln %g, expected %g\n", (unsigned long long)i, y[i],
                e[i]);
        return 1;
      }
      if (err > worst) worst = err;
    }
    printf("matches %s (max |diff| %.2e)\n", expected_path, worst);
    free(e);
  }
  for (uint32_t i = 0; i < m->n_outputs; i++) free(out[i]);
  free(out);
  free(out_bytes);
  free(ws);
  free(x);
  return 0;
}
