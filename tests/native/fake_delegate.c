/* Stand-ins for libedgetpu in tests/test_tpu_probe.py, built with gcc during the test.
 *
 * They export the TFLite external delegate plugin ABI that libedgetpu exports
 * (tensorflow/lite/delegates/external/external_delegate_interface.h):
 *   TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
 *                                                 void (*report_error)(const char*));
 *   void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);
 * plus libedgetpu's `const char* edgetpu_version(void)` (tflite/public/edgetpu_c.h).
 *
 * One behaviour per build, chosen with -D:
 *   FAKE_CRASH  create segfaults (a NULL write, as an ABI mismatch does)
 *   FAKE_HANG   create never returns
 *   FAKE_NULL   create reports an error and returns NULL
 *   FAKE_NOOP   create returns a delegate that claims no nodes: the model runs on the CPU kernels
 */
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#define FAKE_VERSION "BuildLabel(fake_delegate.c), RuntimeVersion(0)"

/* TfLiteDelegate's leading fields as in tensorflow/lite/core/c/common.h. Later TFLite versions append
 * fields (opaque_delegate_builder, ...); the zeroed tail keeps those NULL, which TFLite reads as "unset". */
typedef struct FakeDelegate {
  void* data_;
  int (*Prepare)(void* context, struct FakeDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* tail[8];
} FakeDelegate;

#if defined(FAKE_NOOP)
static int prepare_nothing(void* context, FakeDelegate* delegate) {
  (void)context;
  (void)delegate;
  return 0; /* kTfLiteOk, no node replaced */
}

static FakeDelegate noop_delegate = {NULL, prepare_nothing, NULL, NULL, NULL, 0, {NULL}};
#endif

const char* edgetpu_version(void) { return FAKE_VERSION; }

void* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
                                    void (*report_error)(const char*)) {
  (void)keys;
  (void)values;
  (void)num_options;
#if defined(FAKE_CRASH)
  (void)report_error;
  volatile int* nowhere = NULL;
  *nowhere = 1;
  return NULL;
#elif defined(FAKE_HANG)
  (void)report_error;
  for (;;) sleep(60);
#elif defined(FAKE_NULL)
  if (report_error != NULL) report_error("fake_delegate: no Edge TPU here");
  return NULL;
#elif defined(FAKE_NOOP)
  (void)report_error;
  return &noop_delegate;
#else
#error "build with one of -DFAKE_CRASH -DFAKE_HANG -DFAKE_NULL -DFAKE_NOOP"
#endif
}

void tflite_plugin_destroy_delegate(void* delegate) { (void)delegate; }
