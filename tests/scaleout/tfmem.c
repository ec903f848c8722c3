/* tfmem: memory of the TensorFlow C++ runtime, without Python, as it loads and runs a SavedModel:
   the loader stock tensorflow_model_server uses (LoadSavedModel, through the C API), the same
   kernels. Prints RSS (anonymous and file-backed) after each step (docs/sizing.md).

   TF=.venv/lib/python3.11/site-packages/tensorflow
   gcc -O1 -o /tmp/tfmem tests/scaleout/tfmem.c -I$TF/include $TF/libtensorflow_cc.so.2 \
       $TF/libtensorflow_framework.so.2 -Wl,-rpath,$TF
   OUT_OP=StatefulPartitionedCall /tmp/tfmem <saved_model_dir> <image> 1 8 16 32

   Input op serving_default_images (a string tensor of encoded images); output 1 of OUT_OP
   (default StatefulPartitionedCall_1: `saved_model_cli show --all` names it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

static void mem(const char* what) {
  FILE* f = fopen("/proc/self/status", "r"); char line[256]; long rss = 0, hwm = 0, anon = 0, file = 0;
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "VmRSS:", 6)) rss = atol(line + 6);
    if (!strncmp(line, "VmHWM:", 6)) hwm = atol(line + 6);
    if (!strncmp(line, "RssAnon:", 8)) anon = atol(line + 8);
    if (!strncmp(line, "RssFile:", 8)) file = atol(line + 8);
  }
  fclose(f);
  printf("%-34s RSS %5ld MiB (anon %5ld, file %4ld)  peak %5ld MiB\n", what, rss / 1024, anon / 1024, file / 1024, hwm / 1024); fflush(stdout);
}

static void check(TF_Status* s, const char* what) {
  if (TF_GetCode(s) != TF_OK) { fprintf(stderr, "%s: %s\n", what, TF_Message(s)); exit(1); }
}

static TF_Session* load(const char* dir, TF_Graph** graph) {
  TF_Status* s = TF_NewStatus(); TF_SessionOptions* o = TF_NewSessionOptions();
  *graph = TF_NewGraph();
  const char* tags[] = {"serve"};
  TF_Session* sess = TF_LoadSessionFromSavedModel(o, NULL, dir, tags, 1, *graph, NULL, s);
  check(s, "load"); TF_DeleteSessionOptions(o); TF_DeleteStatus(s);
  return sess;
}

static void run(TF_Session* sess, TF_Graph* g, const char* data, size_t len, int n) {
  TF_Status* s = TF_NewStatus();
  TF_Output in = {TF_GraphOperationByName(g, "serving_default_images"), 0};
  TF_Output out = {TF_GraphOperationByName(g, getenv("OUT_OP") ? getenv("OUT_OP") : "StatefulPartitionedCall_1"), 1};
  if (!in.oper || !out.oper) { fprintf(stderr, "signature ops not found\n"); exit(1); }
  int64_t dims[1] = {n};
  TF_Tensor* t = TF_AllocateTensor(TF_STRING, dims, 1, n * sizeof(TF_TString));
  TF_TString* p = (TF_TString*)TF_TensorData(t);
  for (int i = 0; i < n; i++) { TF_StringInit(&p[i]); TF_StringCopy(&p[i], data, len); }
  TF_Tensor* result = NULL;
  TF_SessionRun(sess, NULL, &in, &t, 1, &out, &result, 1, NULL, 0, NULL, s);
  check(s, "run");
  TF_DeleteTensor(t); TF_DeleteTensor(result); TF_DeleteStatus(s);
}

int main(int argc, char** argv) {
  mem("process started, TF linked");
  FILE* f = fopen(argv[2], "rb"); fseek(f, 0, SEEK_END); long len = ftell(f); rewind(f);
  char* data = malloc(len); fread(data, 1, len, f); fclose(f);
  TF_Graph* g1; TF_Session* s1 = load(argv[1], &g1); mem("v1 loaded");
  char label[64];
  for (int i = 3; i < argc; i++) {
    int n = atoi(argv[i]);
    for (int k = 0; k < 3; k++) run(s1, g1, data, len, n);
    snprintf(label, sizeof label, "v1 batch %d x3", n); mem(label);
  }
  TF_Graph* g2; TF_Session* s2 = load(argv[1], &g2); run(s2, g2, data, len, 1);
  mem("v2 loaded beside v1, batch 1");
  TF_Status* s = TF_NewStatus(); TF_CloseSession(s1, s); TF_DeleteSession(s1, s); TF_DeleteGraph(g1);
  mem("v1 closed");
  return 0;
}
