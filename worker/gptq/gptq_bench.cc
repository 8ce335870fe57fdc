// gptq_bench: seconds per QuantizeGptq call for Llama-2-7B module shapes.
//
//   gptq_bench [--out FILE] [--device cpu|cuda] [--runs R] [--tokens T] [--small]
//              [--bits B] [--group-size G] [--desc-act] [--block-size S]
//
// Shapes: 4096×4096 (q/k/v/o) and 11008×4096 (gate/up), K = 4096, a random SPD Hessian from
// T (default 2048) random correlated tokens. Runs on CUDA when available, else on the CPU;
// on the CPU the default shapes are scaled down 4× (1024×1024 and 2752×1024) unless --full.
// Prints one line per shape and writes a JSON report to --out (default gptq_bench.json).
// The reference (IST-DASLab gptq.py on one H100) took 1.9 s per module.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "gptq/gptq.h"
#include "gptq/pack.h"

namespace {

struct Options {
  std::string out = "gptq_bench.json";
  std::string device;  // empty: cuda if available
  int runs = 3;
  int64_t tokens = 2048;
  bool full = false;
  bool small = false;
  gptq::QuantConfig config;
};

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--out" && (v = next())) {
      o->out = v;
    } else if (a == "--device" && (v = next())) {
      o->device = v;
    } else if (a == "--runs" && (v = next())) {
      o->runs = std::max(1, std::atoi(v));
    } else if (a == "--tokens" && (v = next())) {
      o->tokens = std::atoll(v);
    } else if (a == "--bits" && (v = next())) {
      o->config.bits = std::atoi(v);
    } else if (a == "--group-size" && (v = next())) {
      o->config.group_size = std::atoi(v);
    } else if (a == "--block-size" && (v = next())) {
      o->config.block_size = std::atoi(v);
    } else if (a == "--desc-act") {
      o->config.desc_act = true;
    } else if (a == "--full") {
      o->full = true;
    } else if (a == "--small") {
      o->small = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--out FILE] [--device cpu|cuda] [--runs R] [--tokens T] "
                   "[--full|--small] [--bits B] [--group-size G] [--block-size S] "
                   "[--desc-act]\n",
                   argv[0]);
      return false;
    }
  }
  return true;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!ParseArgs(argc, argv, &opt)) return 2;
  if (absl::Status s = gptq::ValidateConfig(opt.config); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }
  const bool cuda = opt.device.empty() ? torch::cuda::is_available() : opt.device == "cuda";
  if (cuda && !torch::cuda::is_available()) {
    std::fprintf(stderr, "--device cuda requested but CUDA is not available\n");
    return 2;
  }
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  // fp32 as the reference runs it: no TF32.
  at::globalContext().setFloat32MatmulPrecision("highest");

  int64_t k = 4096;
  std::vector<int64_t> outs = {4096, 11008};
  if ((!cuda && !opt.full) || opt.small) {
    k = 1024;
    outs = {1024, 2752};
  }

  std::string json = "{\n";
  try {
    // Correlated tokens: X = (Z·A)·diag(s); H = 2/T XᵀX through the accumulator.
    at::manual_seed(0);
    const auto fopts = at::TensorOptions().dtype(at::kFloat).device(device);
    const at::Tensor a = at::eye(k, fopts) + 0.6 * at::randn({k, k}, fopts) / std::sqrt(k);
    const at::Tensor s = at::exp(0.7 * at::randn({k}, fopts));
    const at::Tensor x = at::randn({opt.tokens, k}, fopts).matmul(a) * s;
    gptq::HessianAccumulator acc(k, device);
    const auto h0 = std::chrono::steady_clock::now();
    if (absl::Status st = acc.AddBatch(x); !st.ok()) {
      std::fprintf(stderr, "AddBatch: %s\n", st.ToString().c_str());
      return 1;
    }
    const double hessian_seconds =
        (acc.hessian().sum().item<double>(),  // synchronises
         std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count());

    std::printf("device %s, K=%ld, tokens=%ld, bits=%d, group_size=%d, desc_act=%d, block=%d\n",
                device.str().c_str(), static_cast<long>(k), static_cast<long>(opt.tokens),
                opt.config.bits, opt.config.group_size, opt.config.desc_act ? 1 : 0,
                opt.config.block_size);
    json += "  \"device\": \"" + device.str() + "\",\n";
    json += "  \"in_features\": " + std::to_string(k) + ",\n";
    json += "  \"tokens\": " + std::to_string(opt.tokens) + ",\n";
    json += "  \"bits\": " + std::to_string(opt.config.bits) + ",\n";
    json += "  \"group_size\": " + std::to_string(opt.config.group_size) + ",\n";
    json += "  \"desc_act\": " + std::string(opt.config.desc_act ? "true" : "false") + ",\n";
    json += "  \"block_size\": " + std::to_string(opt.config.block_size) + ",\n";
    json += "  \"runs\": " + std::to_string(opt.runs) + ",\n";
    json += "  \"hessian_seconds\": " + std::to_string(hessian_seconds) + ",\n";
    json += "  \"reference_seconds_per_module_h100\": 1.9,\n  \"modules\": [\n";
    for (size_t m = 0; m < outs.size(); ++m) {
      const int64_t n = outs[m];
      const at::Tensor w = 0.02 * at::randn({n, k}, fopts);
      // Warm-up (allocator, cuSOLVER/cuBLAS handles), then timed runs.
      absl::StatusOr<gptq::QuantizedWeight> q = gptq::QuantizeGptq(w, acc.hessian(), opt.config);
      if (!q.ok()) {
        std::fprintf(stderr, "QuantizeGptq: %s\n", q.status().ToString().c_str());
        return 1;
      }
      std::vector<double> times;
      for (int r = 0; r < opt.runs; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        q = gptq::QuantizeGptq(w, acc.hessian(), opt.config);
        if (!q.ok()) {
          std::fprintf(stderr, "QuantizeGptq: %s\n", q.status().ToString().c_str());
          return 1;
        }
        q->codes.sum().item<int64_t>();  // results are complete (loss.item() synced already)
        times.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      const auto r0 = std::chrono::steady_clock::now();
      absl::StatusOr<gptq::QuantizedWeight> rtn = gptq::QuantizeRtn(w, opt.config);
      if (rtn.ok()) rtn->codes.sum().item<int64_t>();
      const double rtn_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
      // Packing for the checkpoint and the dequantized weight the pipeline puts back into the
      // layer (from the packed tensors, and from the codes on the device).
      std::vector<double> pack_times, deq_times, codes_times;
      for (int r = 0; r < opt.runs; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        absl::StatusOr<gptq::PackedWeight> packed = gptq::Pack(*q, gptq::CheckpointFormat::kGptqV1);
        if (!packed.ok()) {
          std::fprintf(stderr, "Pack: %s\n", packed.status().ToString().c_str());
          return 1;
        }
        pack_times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        t0 = std::chrono::steady_clock::now();
        absl::StatusOr<at::Tensor> deq = gptq::Dequantize(*packed, n, k);
        if (deq.ok()) deq->to(device).sum().item<double>();
        deq_times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        t0 = std::chrono::steady_clock::now();
        absl::StatusOr<at::Tensor> deq_codes = gptq::DequantizeCodes(*q);
        if (deq_codes.ok()) deq_codes->sum().item<double>();
        codes_times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("  %5ld x %5ld: pack %.4f s, dequantize packed %.4f s, dequantize codes %.4f s (medians)\n",
                  static_cast<long>(n), static_cast<long>(k), Median(pack_times), Median(deq_times),
                  Median(codes_times));
      const double median = Median(times);
      std::printf(
          "  %5ld x %5ld: median %.4f s (min %.4f, max %.4f) over %d runs; loss %.6g; "
          "damp %.4g; fallback %d; RTN %.4f s\n",
          static_cast<long>(n), static_cast<long>(k), median,
          *std::min_element(times.begin(), times.end()),
          *std::max_element(times.begin(), times.end()), opt.runs, q->loss, q->damp_used,
          q->rtn_fallback ? 1 : 0, rtn_seconds);
      json += "    {\"out_features\": " + std::to_string(n) +
              ", \"in_features\": " + std::to_string(k) +
              ", \"median_seconds\": " + std::to_string(median) + ", \"times\": [";
      for (size_t i = 0; i < times.size(); ++i) {
        json += (i ? ", " : "") + std::to_string(times[i]);
      }
      json += "], \"loss\": " + std::to_string(q->loss) +
              ", \"rtn_fallback\": " + (q->rtn_fallback ? "true" : "false") +
              ", \"rtn_seconds\": " + std::to_string(rtn_seconds) +
              ", \"pack_seconds\": " + std::to_string(Median(pack_times)) +
              ", \"dequantize_packed_seconds\": " + std::to_string(Median(deq_times)) +
              ", \"dequantize_codes_seconds\": " + std::to_string(Median(codes_times)) + "}" +
              (m + 1 < outs.size() ? ",\n" : "\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench setup failed: %s\n", e.what());
    return 1;
  }
  json += "  ]\n}\n";
  std::ofstream(opt.out) << json;
  std::printf("wrote %s\n", opt.out.c_str());
  return 0;
}
