// File: benchmarks/probes/expert_branches.cu
// Build and run (outside Bazel; CUDA 12.4+ for conditional nodes; run on the GPU machine):
//   /usr/local/cuda/bin/nvcc -O2 -arch=sm_90 -std=c++17 benchmarks/probes/expert_branches.cu -lcublas -o expert_branches && ./expert_branches
// Results: benchmarks/RESULTS.md, session 9.
// Probe: 8B expert GEMMs (M=4: gate [2048,16384], up [2048,8192], wo [8192,2048]) for 20 of 32
// experts, as eager launches, graphs with plain serial / parallel branches, and conditional nodes.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <functional>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#define CK(x) do { cudaError_t err_ = (x); if (err_ != cudaSuccess) { printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(err_)); exit(1); } } while (0)
#define CB(x) do { cublasStatus_t st_ = (x); if (st_ != CUBLAS_STATUS_SUCCESS) { printf("%s:%d %s: %d\n", __FILE__, __LINE__, #x, int(st_)); exit(1); } } while (0)
constexpr int E = 32, M = 4, H = 2048, I = 8192;
constexpr size_t WS = 4 << 20;
struct Handles { cudaGraphConditionalHandle h[E]; };
__global__ void SetConditions(Handles hs, const int* active) {
  int e = threadIdx.x;
  if (e < E) cudaGraphSetConditional(hs.h[e], active[e] ? 1u : 0u);
}
cublasHandle_t h; char* ws; float alpha = 1, beta = 0;
__nv_bfloat16 *wg, *wu, *wo, *x, *g, *u, *o;
void gemm(cudaStream_t st, int e, const __nv_bfloat16* A, int K, const __nv_bfloat16* W, int N, __nv_bfloat16* C) {
  CB(cublasSetStream(h, st)); CB(cublasSetWorkspace(h, ws + e * WS, WS));
  CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, W, CUDA_R_16BF, N, A, CUDA_R_16BF, K, &beta, C, CUDA_R_16BF, N,
                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
void expert(cudaStream_t st, int e) {
  gemm(st, e, x + size_t(e) * M * H, H, wg + size_t(e) * H * 2 * I, 2 * I, g + size_t(e) * M * 2 * I);
  gemm(st, e, x + size_t(e) * M * H, H, wu + size_t(e) * H * I, I, u + size_t(e) * M * I);
  gemm(st, e, u + size_t(e) * M * I, I, wo + size_t(e) * I * H, H, o + size_t(e) * M * H);
}
float Time(cudaStream_t s, const std::function<void()>& run) {
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  for (int r = 0; r < 3; ++r) run();
  CK(cudaEventRecord(a, s)); for (int r = 0; r < 20; ++r) run(); CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b)); float ms; CK(cudaEventElapsedTime(&ms, a, b));
  return ms * 1e3f / 20;
}
int main() {
  cudaStream_t s, body_s, par[E]; CK(cudaStreamCreate(&s)); CK(cudaStreamCreateWithFlags(&body_s, cudaStreamNonBlocking));
  for (auto& p : par) CK(cudaStreamCreateWithFlags(&p, cudaStreamNonBlocking));
  CB(cublasCreate(&h)); CK(cudaMalloc(&ws, E * WS));
  CK(cudaMalloc(&wg, size_t(E) * H * 2 * I * 2)); CK(cudaMalloc(&wu, size_t(E) * H * I * 2)); CK(cudaMalloc(&wo, size_t(E) * I * H * 2));
  CK(cudaMalloc(&x, size_t(E) * M * H * 2)); CK(cudaMalloc(&g, size_t(E) * M * 2 * I * 2)); CK(cudaMalloc(&u, size_t(E) * M * I * 2)); CK(cudaMalloc(&o, size_t(E) * M * H * 2));
  CK(cudaMemset(wg, 0x3c, size_t(E) * H * 2 * I * 2)); CK(cudaMemset(wu, 0x3c, size_t(E) * H * I * 2)); CK(cudaMemset(wo, 0x3c, size_t(E) * I * H * 2));
  CK(cudaMemset(x, 0x3c, size_t(E) * M * H * 2));
  int* active; CK(cudaMalloc(&active, E * 4));
  std::vector<int> act(E, 0); int na = 0;
  for (int e = 0; e < E; ++e) if ((e * 7) % 32 < 20) act[e] = 1, ++na;
  CK(cudaMemcpy(active, act.data(), E * 4, cudaMemcpyHostToDevice));
  const double bytes = double(na) * 4.0 * H * I * 2;  // per active expert: gate 2HI + up HI + wo IH elements, bf16
  auto report = [&](const char* what, float us) { printf("%-58s %8.1f us  %.2f TB/s\n", what, us, bytes / (us * 1e-6) / 1e12); };
  for (int e = 0; e < E; ++e) expert(s, e);
  CK(cudaStreamSynchronize(s));
  report("eager, active experts, one stream", Time(s, [&] { for (int e = 0; e < E; ++e) if (act[e]) expert(s, e); }));
  auto capture = [&](const std::function<void()>& body) {
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed)); body();
    cudaGraph_t graph; CK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec; CK(cudaGraphInstantiate(&exec, graph, 0)); return exec;
  };
  cudaEvent_t fork, join[E]; CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  for (auto& j : join) CK(cudaEventCreateWithFlags(&j, cudaEventDisableTiming));
  cudaGraphExec_t serial = capture([&] { for (int e = 0; e < E; ++e) if (act[e]) expert(s, e); });
  report("graph, active experts serial", Time(s, [&] { CK(cudaGraphLaunch(serial, s)); }));
  cudaGraphExec_t parallel = capture([&] {
    CK(cudaEventRecord(fork, s));
    for (int e = 0; e < E; ++e) if (act[e]) { CK(cudaStreamWaitEvent(par[e], fork)); expert(par[e], e); CK(cudaEventRecord(join[e], par[e])); }
    for (int e = 0; e < E; ++e) if (act[e]) CK(cudaStreamWaitEvent(s, join[e]));
  });
  report("graph, active experts parallel branches", Time(s, [&] { CK(cudaGraphLaunch(parallel, s)); }));
  for (int conc : {0, 1}) {
    cudaGraphExec_t cond = capture([&] {
      cudaStreamCaptureStatus st; cudaGraph_t gr; const cudaGraphNode_t* deps; const cudaGraphEdgeData* ed; size_t nd;
      CK(cudaStreamGetCaptureInfo(s, &st, nullptr, &gr, &deps, &ed, &nd));
      Handles hs;
      for (int e = 0; e < E; ++e) CK(cudaGraphConditionalHandleCreate(&hs.h[e], gr, 0, cudaGraphCondAssignDefault));
      SetConditions<<<1, E, 0, s>>>(hs, active);
      CK(cudaStreamGetCaptureInfo(s, &st, nullptr, &gr, &deps, &ed, &nd));
      std::vector<cudaGraphNode_t> after(deps, deps + nd), nodes;
      for (int e = 0; e < E; ++e) {
        if (!conc) { CK(cudaStreamGetCaptureInfo(s, &st, nullptr, &gr, &deps, &ed, &nd)); after.assign(deps, deps + nd); }
        cudaGraphNodeParams p = {};
        p.type = cudaGraphNodeTypeConditional; p.conditional.handle = hs.h[e]; p.conditional.type = cudaGraphCondTypeIf; p.conditional.size = 1;
        cudaGraphNode_t node; CK(cudaGraphAddNode(&node, gr, after.data(), nullptr, after.size(), &p));
        CK(cudaStreamBeginCaptureToGraph(body_s, p.conditional.phGraph_out[0], nullptr, nullptr, 0, cudaStreamCaptureModeRelaxed));
        expert(body_s, e);
        cudaGraph_t out; CK(cudaStreamEndCapture(body_s, &out));
        nodes.push_back(node);
        if (!conc) CK(cudaStreamUpdateCaptureDependencies(s, &node, nullptr, 1, cudaStreamSetCaptureDependencies));
      }
      if (conc) CK(cudaStreamUpdateCaptureDependencies(s, nodes.data(), nullptr, nodes.size(), cudaStreamSetCaptureDependencies));
    });
    report(conc ? "graph, 32 conditional nodes in parallel" : "graph, 32 conditional nodes in series", Time(s, [&] { CK(cudaGraphLaunch(cond, s)); }));
  }
  // all 32 experts as 3 strided-batched GEMMs (reads every expert)
  auto batched = [&](cudaStream_t st, const __nv_bfloat16* A, int K, const __nv_bfloat16* W, int N, __nv_bfloat16* C) {
    CB(cublasSetStream(h, st)); CB(cublasSetWorkspace(h, ws, WS));
    CB(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, W, CUDA_R_16BF, N, size_t(K) * N, A, CUDA_R_16BF, K,
                                  size_t(M) * K, &beta, C, CUDA_R_16BF, N, size_t(M) * N, E, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  report("strided batched over all 32 experts (bytes of 20)", Time(s, [&] {
    batched(s, x, H, wg, 2 * I, g); batched(s, x, H, wu, I, u); batched(s, u, I, wo, H, o); }));
  return 0;
}
