// RunQuantizeJob: load → calibrate → (evaluate before) → layer-by-layer GPTQ with packing and
// streaming write → (evaluate after, from the packed tensors) → report.
#include <malloc.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <memory>
#include <set>
#include <sstream>
#include <utility>

#include <ATen/ATen.h>

#if defined(GPTQ_RUNTIME_WITH_CUDA) && __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define GPTQ_RUNTIME_CUDA_STATS 1
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gptq/gptq.h"
#include "gptq/pack.h"
#include "gptq/posix_fs.h"
#include "gptq/status_macros.h"
#include "model/decoder.h"
#include "pipeline/layer_runner.h"
#include "quantize_job.h"
#include "gptq/torch_status.h"
#include "worker/runtime/data/datasets.h"
#include "worker/runtime/tokenizer/tokenizer.h"
#include "worker/runtime/writer/checkpoint_writer.h"

namespace gptq::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status ValidateOptions(const QuantizeOptions& o, gptq::QuantConfig* config,
                             gptq::CheckpointFormat* format) {
  if (o.model_dir.empty()) return absl::InvalidArgumentError("model_dir is empty");
  if (o.output_dir.empty()) return absl::InvalidArgumentError("output_dir is empty");
  config->bits = o.bits;
  config->group_size = o.group_size;
  config->sym = o.sym;
  config->desc_act = o.desc_act;
  config->static_groups = o.static_groups;
  config->act_group_aware = o.desc_act ? false : o.act_group_aware.value_or(true);
  config->damp_percent = o.damp_percent;
  config->damp_auto_increment = o.damp_auto_increment;
  GPTQ_RETURN_IF_ERROR(gptq::ValidateConfig(*config));
  if (o.format == "gptq") {
    *format = o.sym ? gptq::CheckpointFormat::kGptqV1 : gptq::CheckpointFormat::kGptqV2;
  } else if (o.format == "gptq_v2") {
    *format = gptq::CheckpointFormat::kGptqV2;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("format \"", o.format, "\": expected gptq or gptq_v2"));
  }
  if (o.calibration.nsamples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("nsamples ", o.calibration.nsamples, " < 1"));
  }
  if (o.calibration.seqlen < 0 || o.eval_seqlen < 0) {
    return absl::InvalidArgumentError("seqlen must be >= 0 (0: the model context, capped at 2048)");
  }
  if (o.batch_size < 1) return absl::InvalidArgumentError(absl::StrCat("batch_size ", o.batch_size, " < 1"));
  return absl::OkStatus();
}

// The model's tokenizer: tokenizer.model, or a llama2.c tokenizer .bin beside the checkpoint
// (stories260K ships tok512.bin). `model_bytes` receives the serialized model when it was
// rebuilt from a .bin, so the output checkpoint can carry a tokenizer.model.
absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> LoadModelTokenizer(const std::string& dir,
                                                                        std::string* model_bytes) {
  if (fsutil::IsRegularFile(dir + "/tokenizer.model")) return tokenizer::Tokenizer::Load(dir);
  for (const char* bin : {"tokenizer.bin", "tok512.bin"}) {
    const std::string path = absl::StrCat(dir, "/", bin);
    if (!fsutil::IsRegularFile(path)) continue;
    GPTQ_ASSIGN_OR_RETURN(std::string bytes, tokenizer::BuildSentencePieceModelFromLlama2c(path));
    GPTQ_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::FromSerializedModel(bytes, path));
    *model_bytes = std::move(bytes);
    return tok;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "no tokenizer in ", dir, " (tokenizer.model or a llama2.c tokenizer.bin); pass calibration token ids "
      "and no evaluation datasets"));
}

// Progress accounting: stage weights of the whole job.
class Progress {
 public:
  Progress(ProgressSink& sink, int num_layers, int num_evals)
      : sink_(sink), num_layers_(num_layers), start_(Clock::now()) {
    // Relative costs: evaluation passes are roughly a quantization layer each.
    eval_weight_ = num_evals > 0 ? 0.15 : 0.0;
  }
  void Stage(const std::string& stage, int layer = -1) {
    ProgressEvent e;
    e.kind = ProgressEvent::Kind::kStage;
    e.stage = stage;
    e.layer = layer;
    e.num_layers = num_layers_;
    Fill(e);
    sink_.OnEvent(e);
  }
  void Log(const std::string& message, const std::string& level = "info") {
    ProgressEvent e;
    e.kind = ProgressEvent::Kind::kLog;
    e.message = message;
    e.level = level;
    Fill(e);
    sink_.OnEvent(e);
  }
  void Emit(ProgressEvent e) {
    e.num_layers = num_layers_;
    Fill(e);
    sink_.OnEvent(e);
  }
  // Fractions of each part done, in [0, 1].
  void SetQuantize(double f) { quantize_ = f; }
  void SetEvalBefore(double f) { before_ = f; }
  void SetEvalAfter(double f) { after_ = f; }
  void SetWrite(double f) { write_ = f; }
  double Fraction() const {
    const double q_w = 1.0 - 2 * eval_weight_ - 0.05;
    return std::min(1.0, eval_weight_ * before_ + q_w * quantize_ + 0.05 * write_ + eval_weight_ * after_);
  }

 private:
  void Fill(ProgressEvent& e) const {
    e.fraction = Fraction();
    const double elapsed = SecondsSince(start_);
    e.eta_seconds = e.fraction > 0.02 ? elapsed * (1.0 - e.fraction) / e.fraction : -1.0;
  }
  ProgressSink& sink_;
  int num_layers_;
  Clock::time_point start_;
  double eval_weight_ = 0.0;
  double quantize_ = 0, before_ = 0, after_ = 0, write_ = 0;
};

void ResetPeakGpu(const ComputeSpec& spec) {
#ifdef GPTQ_RUNTIME_CUDA_STATS
  if (spec.device.is_cuda()) {
    // The caching allocator sets its per-device state up lazily, on the first allocation; its
    // stats calls refuse ("Invalid device argument") before that. Allocate once to initialize.
    (void)at::empty({1}, at::TensorOptions().device(spec.device));
    c10::cuda::CUDACachingAllocator::resetPeakStats(spec.device.index());
  }
#else
  (void)spec;
#endif
}

int64_t PeakGpuBytes(const ComputeSpec& spec) {
#ifdef GPTQ_RUNTIME_CUDA_STATS
  if (spec.device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(spec.device.index());
    return stats.allocated_bytes[0].peak;  // StatType::AGGREGATE
  }
#else
  (void)spec;
#endif
  return 0;
}

// Safetensors dtype spelling of a tensor written by the runtime.
const char* StDtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat16: return "F16";
    case torch::kFloat32: return "F32";
    case torch::kBFloat16: return "BF16";
    case torch::kInt32: return "I32";
    default: return "";
  }
}

absl::Status AddTensor(CheckpointWriter& writer, const std::string& name, const torch::Tensor& t0) {
  return CallTorch(absl::StrCat("writing ", name), [&]() -> absl::Status {
    const torch::Tensor t = t0.detach().to(torch::kCPU).contiguous();
    TensorView v;
    v.name = name;
    v.dtype = StDtype(t.scalar_type());
    v.shape = t.sizes().vec();
    v.data = t.data_ptr();
    v.num_bytes = static_cast<size_t>(t.numel()) * t.element_size();
    return writer.AddTensor(v);
  });
}

struct QuantizedModule {
  gptq::PackedWeight packed;
  int64_t rows = 0, columns = 0;
};

class Job {
 public:
  Job(const QuantizeOptions& o, ProgressSink& sink, const CancelToken& cancel)
      : o_(o), sink_(sink), cancel_(cancel) {}

  absl::StatusOr<QuantizeReport> Run() {
    const auto t_total = Clock::now();
    GPTQ_RETURN_IF_ERROR(ValidateOptions(o_, &config_, &format_));
    // ---- load ----
    auto t0 = Clock::now();
    GPTQ_ASSIGN_OR_RETURN(model_, DecoderModel::Open(o_.model_dir));
    const ModelConfig& c = model_->config();
    progress_ = std::make_unique<Progress>(sink_, static_cast<int>(c.num_layers),
                                           static_cast<int>(o_.eval_datasets.size()));
    progress_->Stage("load");
    GPTQ_ASSIGN_OR_RETURN(spec_, ResolveCompute(o_.device, c, o_.batch_size));
    report_.device = spec_.device.str();
    ResetPeakGpu(spec_);
    seqlen_ = o_.calibration.seqlen > 0
                  ? o_.calibration.seqlen
                  : static_cast<int>(std::min<int64_t>(c.max_position_embeddings, 2048));
    eval_seqlen_ = o_.eval_seqlen > 0 ? o_.eval_seqlen : seqlen_;
    const bool need_tokenizer = (o_.calibration.token_ids.empty()) || !o_.eval_datasets.empty();
    if (need_tokenizer) {
      GPTQ_ASSIGN_OR_RETURN(tokenizer_, LoadModelTokenizer(o_.model_dir, &tokenizer_model_bytes_));
    }
    GPTQ_ASSIGN_OR_RETURN(head_, model_->LoadHead(spec_.dtype, spec_.device));
    // Fail on an unusable output directory before any long work.
    CheckpointWriterOptions wo;
    wo.output_dir = o_.output_dir;
    wo.max_shard_bytes = o_.max_shard_bytes;
    wo.tokenizer_source_dir = o_.model_dir;
    wo.torch_dtype = "float16";
    QuantizationConfig qc;
    qc.bits = o_.bits;
    qc.group_size = o_.group_size;
    qc.desc_act = o_.desc_act;
    qc.sym = o_.sym;
    qc.damp_percent = o_.damp_percent;
    qc.true_sequential = o_.true_sequential;
    qc.static_groups = o_.static_groups;
    qc.checkpoint_format = format_ == gptq::CheckpointFormat::kGptqV1 ? "gptq" : "gptq_v2";
    qc.damp_auto_increment = o_.damp_auto_increment;
    qc.act_group_aware = config_.act_group_aware;
    wo.quantization = qc;
    GPTQ_ASSIGN_OR_RETURN(writer_, CheckpointWriter::Create(wo));
    report_.seconds["load"] = SecondsSince(t0);

    // ---- calibrate ----
    t0 = Clock::now();
    progress_->Stage("calibrate");
    GPTQ_RETURN_IF_ERROR(PrepareCalibration());
    report_.seconds["calibrate"] = SecondsSince(t0);

    // ---- evaluate before ----
    double eval_seconds = 0.0;
    if (!o_.eval_datasets.empty()) {
      t0 = Clock::now();
      progress_->Stage("evaluate");
      GPTQ_RETURN_IF_ERROR(Evaluate("before"));
      eval_seconds += SecondsSince(t0);
    }

    // ---- quantize (+ pack, + stream to the writer) ----
    t0 = Clock::now();
    GPTQ_RETURN_IF_ERROR(QuantizeLayers());
    report_.seconds["quantize"] = SecondsSince(t0) - pack_seconds_ - write_seconds_;
    report_.seconds["pack"] = pack_seconds_;

    // ---- write ----
    t0 = Clock::now();
    progress_->Stage("write");
    GPTQ_RETURN_IF_ERROR(FinishWrite());
    report_.seconds["write"] = write_seconds_ + SecondsSince(t0);
    progress_->SetWrite(1.0);

    // ---- evaluate after (from the packed tensors) ----
    if (!o_.eval_datasets.empty()) {
      t0 = Clock::now();
      progress_->Stage("evaluate");
      GPTQ_RETURN_IF_ERROR(Evaluate("after"));
      eval_seconds += SecondsSince(t0);
    }
    report_.seconds["evaluate"] = eval_seconds;
    report_.seconds["total"] = SecondsSince(t_total);
    report_.peak_gpu_bytes = PeakGpuBytes(spec_);
    return std::move(report_);
  }

 private:
  absl::Status CheckCancel() const {
    if (cancel_.cancelled()) return absl::CancelledError("quantization job cancelled");
    return absl::OkStatus();
  }

  absl::Status PrepareCalibration() {
    const CalibrationOptions& cal = o_.calibration;
    const int32_t vocab = static_cast<int32_t>(model_->config().vocab_size);
    std::vector<int32_t> tokens;
    std::string source;
    if (!cal.token_ids.empty()) {
      tokens = cal.token_ids;
      source = "token ids";
    } else if (!cal.texts.empty()) {
      GPTQ_ASSIGN_OR_RETURN(tokens, data::TokenizeTexts(*tokenizer_, cal.texts));
      source = absl::StrCat(cal.texts.size(), " inline text(s)");
    } else if (!cal.file.empty()) {
      GPTQ_ASSIGN_OR_RETURN(std::string text, data::ReadTextFile(cal.file));
      tokens = tokenizer_->Encode(text, /*add_bos=*/false);
      source = cal.file;
    } else {
      GPTQ_ASSIGN_OR_RETURN(tokens, data::LoadCalibrationTokens(cal.dataset, *tokenizer_, DataDir()));
      source = absl::StrCat("dataset ", cal.dataset);
    }
    GPTQ_RETURN_IF_ERROR(data::ValidateTokenIds(tokens, vocab));
    GPTQ_ASSIGN_OR_RETURN(auto windows, data::SampleWindows(tokens, cal.nsamples, seqlen_, cal.seed));
    progress_->Log(absl::StrFormat("calibration: %d windows of %d tokens from %s (%d tokens)",
                                   static_cast<int>(windows.size()), seqlen_, source,
                                   static_cast<int>(tokens.size())));
    return CallTorch("calibration inputs", [&]() -> absl::Status {
      torch::NoGradGuard no_grad;
      std::vector<int32_t> flat;
      flat.reserve(windows.size() * seqlen_);
      for (const auto& w : windows) flat.insert(flat.end(), w.begin(), w.end());
      const torch::Tensor ids = torch::from_blob(flat.data(), {static_cast<int64_t>(windows.size()), seqlen_},
                                                 torch::kInt32)
                                    .to(torch::kInt64)
                                    .to(spec_.device);
      inputs_ = Embed(head_, ids);  // the inputs of decoder layer 0 for every window
      return absl::OkStatus();
    });
  }

  std::string DataDir() const { return o_.data_dir.empty() ? data::DefaultDataDir() : o_.data_dir; }

  // Layer weights for the "after" evaluation: quantized modules from the packed tensors, every
  // other tensor rounded through fp16 as the checkpoint stores it.
  absl::StatusOr<LayerWeights> ArtifactLayer(int layer) {
    GPTQ_ASSIGN_OR_RETURN(LayerWeights w, model_->LoadLayer(layer, spec_.dtype, spec_.device));
    return CallTorch(absl::StrCat("layer ", layer, " from packed tensors"), [&]() -> absl::StatusOr<LayerWeights> {
      auto fp16 = [&](const torch::Tensor& t) { return t.to(torch::kFloat16).to(spec_.dtype); };
      w.input_norm = fp16(w.input_norm);
      w.post_norm = fp16(w.post_norm);
      for (auto& [name, lin] : w.linears) {
        if (lin.bias.defined()) lin.bias = fp16(lin.bias);
        auto it = quantized_.find(DecoderModel::ModulePrefix(layer, name));
        if (it == quantized_.end()) {
          lin.weight = fp16(lin.weight);
          continue;
        }
        GPTQ_ASSIGN_OR_RETURN(torch::Tensor deq,
                              gptq::Dequantize(it->second.packed, it->second.rows, it->second.columns));
        lin.weight = deq.to(spec_.device, spec_.dtype);
      }
      return w;
    });
  }

  absl::Status Evaluate(const std::string& phase) {
    HeadWeights head = head_;
    LayerProvider layers;
    if (phase == "before") {
      layers = [&](int layer) { return model_->LoadLayer(layer, spec_.dtype, spec_.device); };
    } else {
      GPTQ_RETURN_IF_ERROR(CallTorch("head", [&]() -> absl::Status {
        auto fp16 = [&](const torch::Tensor& t) { return t.to(torch::kFloat16).to(spec_.dtype); };
        head.embed = fp16(head_.embed);
        head.final_norm = fp16(head_.final_norm);
        head.lm_head = model_->config().tie_word_embeddings ? head.embed : fp16(head_.lm_head);
        return absl::OkStatus();
      }));
      layers = [&](int layer) { return ArtifactLayer(layer); };
    }
    const size_t n = o_.eval_datasets.size();
    for (size_t i = 0; i < n; ++i) {
      const std::string& ds = o_.eval_datasets[i];
      GPTQ_RETURN_IF_ERROR(CheckCancel());
      if (eval_tokens_.count(ds) == 0) {
        GPTQ_ASSIGN_OR_RETURN(auto tokens, data::LoadEvaluationTokens(ds, *tokenizer_, DataDir()));
        GPTQ_RETURN_IF_ERROR(data::ValidateTokenIds(tokens, static_cast<int32_t>(model_->config().vocab_size)));
        eval_tokens_[ds] = std::move(tokens);
      }
      const auto t0 = Clock::now();
      const int num_layers = static_cast<int>(model_->config().num_layers);
      GPTQ_ASSIGN_OR_RETURN(
          PerplexityResult r,
          EvaluatePerplexity(*model_, head, layers, eval_tokens_[ds], eval_seqlen_, spec_, cancel_, [&](int layer) {
            const double f = (i + static_cast<double>(layer + 1) / num_layers) / n;
            if (phase == "before") progress_->SetEvalBefore(f); else progress_->SetEvalAfter(f);
          }));
      PerplexityReport* pr = nullptr;
      for (auto& p : report_.perplexity) {
        if (p.dataset == ds) pr = &p;
      }
      if (pr == nullptr) {
        report_.perplexity.emplace_back();
        pr = &report_.perplexity.back();
        pr->dataset = ds;
      }
      pr->seqlen = eval_seqlen_;
      pr->num_tokens = r.num_tokens;
      (phase == "before" ? pr->before : pr->after) = r.perplexity;
      ProgressEvent e;
      e.kind = ProgressEvent::Kind::kPerplexity;
      e.stage = "evaluate";
      e.dataset = ds;
      e.phase = phase;
      e.value = r.perplexity;
      e.num_tokens = r.num_tokens;
      e.seqlen = eval_seqlen_;
      e.seconds = SecondsSince(t0);
      progress_->Emit(e);
    }
    return absl::OkStatus();
  }

  // Runs `w` over every calibration window. With `capture` set, each Linear-group input at
  // the requested points goes to the accumulators; `stop_after` ends the forward early.
  // With `outputs` set, the layer's outputs are stored there.
  absl::Status RunLayer(int layer, const LayerWeights& w, const AttentionContext& ctx,
                        std::map<CapturePoint, gptq::HessianAccumulator*>* accumulators, int stop_after,
                        torch::Tensor* outputs) {
    const int64_t num = inputs_.size(0);
    const int64_t chunk = ChooseBatchWindows(model_->config(), seqlen_, spec_);
    CaptureFn capture = [&](CapturePoint p, const torch::Tensor& x) -> absl::Status {
      if (accumulators == nullptr) return absl::OkStatus();
      auto it = accumulators->find(p);
      if (it == accumulators->end()) return absl::OkStatus();
      return it->second->AddBatch(x);
    };
    return CallTorch(absl::StrCat("layer ", layer, " forward"), [&]() -> absl::Status {
      torch::NoGradGuard no_grad;
      return ForEachChunk(num, chunk, cancel_, [&](int64_t b, int64_t n) -> absl::Status {
        absl::Status capture_status;
        torch::Tensor y = DecoderLayerForward(model_->config(), layer, w, inputs_.narrow(0, b, n), ctx,
                                              &capture, stop_after, &capture_status);
        GPTQ_RETURN_IF_ERROR(capture_status);
        if (outputs != nullptr) outputs->narrow(0, b, n).copy_(y);
        return absl::OkStatus();
      });
    });
  }

  absl::Status QuantizeModule(int layer, const std::string& module, LayerWeights& w,
                              const torch::Tensor& hessian, int index_in_layer) {
    GPTQ_RETURN_IF_ERROR(CheckCancel());
    const std::string prefix = DecoderModel::ModulePrefix(layer, module);
    LinearWeights& lin = w.linears.at(module);
    const int64_t rows = lin.weight.size(0), columns = lin.weight.size(1);
    ModuleReport mr;
    mr.layer = layer;
    mr.name = prefix;
    mr.rows = static_cast<int>(rows);
    mr.columns = static_cast<int>(columns);
    const auto t0 = Clock::now();
    const absl::Status packable = gptq::CheckPackable(rows, columns, o_.bits);
    if (!packable.ok()) {
      mr.unquantized = true;
      progress_->Log(absl::StrCat(prefix, " [", rows, "x", columns, "] left unquantized in fp16: ",
                                  packable.message()),
                     "warning");
    } else {
      GPTQ_ASSIGN_OR_RETURN(gptq::QuantizedWeight q, gptq::QuantizeGptq(lin.weight, hessian, config_));
      mr.loss = q.loss;
      mr.damp = q.damp_used;
      mr.rtn_fallback = q.rtn_fallback;
      const auto tp = Clock::now();
      GPTQ_ASSIGN_OR_RETURN(gptq::PackedWeight packed, gptq::Pack(q, format_));
      // The rest of the layer (and the next layers' inputs) see exactly what the artifact holds:
      // DequantizeCodes is bit-equal to dequantizing `packed`, computed where the codes are.
      GPTQ_ASSIGN_OR_RETURN(torch::Tensor deq, gptq::DequantizeCodes(q));
      GPTQ_RETURN_IF_ERROR(CallTorch(prefix, [&]() -> absl::Status {
        lin.weight = deq.to(spec_.device, spec_.dtype);
        return absl::OkStatus();
      }));
      pack_seconds_ += SecondsSince(tp);
      quantized_[prefix] = QuantizedModule{std::move(packed), rows, columns};
      if (q.rtn_fallback) {
        progress_->Log(absl::StrCat(prefix, ": Hessian not positive definite below damp 1; round-to-nearest used"),
                       "warning");
      }
    }
    mr.seconds = SecondsSince(t0);
    report_.modules.push_back(mr);
    modules_done_++;
    progress_->SetQuantize(static_cast<double>(modules_done_) / total_modules_);
    ProgressEvent e;
    e.kind = ProgressEvent::Kind::kModule;
    e.stage = "quantize";
    e.layer = layer;
    e.module = module;
    e.rows = mr.rows;
    e.columns = mr.columns;
    e.loss = mr.loss;
    e.damp = mr.damp;
    e.rtn_fallback = mr.rtn_fallback;
    e.unquantized = mr.unquantized;
    e.samples = static_cast<int>(inputs_.size(0));
    e.seconds = mr.seconds;
    progress_->Emit(e);
    (void)index_in_layer;
    return absl::OkStatus();
  }

  absl::Status WriteLayer(int layer, const LayerWeights& w) {
    const auto t0 = Clock::now();
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    auto fp16 = [](const torch::Tensor& t) { return t.to(torch::kFloat16); };
    // Norms and biases from the checkpoint itself (the in-memory layer holds the same values).
    GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, p + "input_layernorm.weight", fp16(w.input_norm)));
    GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, p + "post_attention_layernorm.weight", fp16(w.post_norm)));
    for (const std::string& m : DecoderModel::LayerModules()) {
      const std::string prefix = p + m;
      const LinearWeights& lin = w.linears.at(m);
      auto it = quantized_.find(prefix);
      if (it == quantized_.end()) {
        GPTQ_ASSIGN_OR_RETURN(torch::Tensor orig, model_->reader().Get(prefix + ".weight"));
        GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, prefix + ".weight", fp16(orig)));
      } else {
        const gptq::PackedWeight& pk = it->second.packed;
        GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, prefix + ".qweight", pk.qweight));
        GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, prefix + ".qzeros", pk.qzeros));
        GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, prefix + ".scales", pk.scales));
        GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, prefix + ".g_idx", pk.g_idx));
      }
      if (lin.bias.defined()) GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, prefix + ".bias", fp16(lin.bias)));
    }
    write_seconds_ += SecondsSince(t0);
    return absl::OkStatus();
  }

  absl::Status QuantizeLayers() {
    const ModelConfig& c = model_->config();
    const int num_layers = static_cast<int>(c.num_layers);
    total_modules_ = num_layers * static_cast<int>(DecoderModel::LayerModules().size());
    GPTQ_ASSIGN_OR_RETURN(const AttentionContext ctx,
                          CallTorch("attention context", [&]() -> absl::StatusOr<AttentionContext> {
                            return MakeAttentionContext(c, seqlen_, spec_.dtype, spec_.device);
                          }));
    const auto groups = SequentialGroups(c.architecture);
    for (int layer = 0; layer < num_layers; ++layer) {
      GPTQ_RETURN_IF_ERROR(CheckCancel());
      progress_->Stage("quantize", layer);
      GPTQ_ASSIGN_OR_RETURN(LayerWeights w, model_->LoadLayer(layer, spec_.dtype, spec_.device));
      // The layer's weights are views of the mapped checkpoint on CPU: own them before
      // replacing any (a later group must see quantized, not original, weights).
      GPTQ_RETURN_IF_ERROR(CallTorch("layer copy", [&]() -> absl::Status {
        for (auto& [name, lin] : w.linears) lin.weight = lin.weight.clone();
        return absl::OkStatus();
      }));
      std::vector<std::vector<std::string>> passes;
      if (o_.true_sequential) {
        passes = groups;
      } else {
        passes.emplace_back();
        for (const auto& g : groups) passes.back().insert(passes.back().end(), g.begin(), g.end());
      }
      int index = 0;
      for (const auto& modules : passes) {
        // One accumulator per distinct input among this pass's modules.
        std::map<CapturePoint, std::unique_ptr<gptq::HessianAccumulator>> owned;
        std::map<CapturePoint, gptq::HessianAccumulator*> acc;
        int stop_after = -1;
        for (const auto& m : modules) {
          const CapturePoint p = InputPointOf(m);
          if (owned.count(p) == 0) {
            owned[p] = std::make_unique<gptq::HessianAccumulator>(w.linears.at(m).weight.size(1), spec_.device);
            acc[p] = owned[p].get();
          }
          stop_after = std::max(stop_after, static_cast<int>(p));
        }
        GPTQ_RETURN_IF_ERROR(RunLayer(layer, w, ctx, &acc, stop_after, nullptr));
        for (const auto& m : modules) {
          GPTQ_RETURN_IF_ERROR(QuantizeModule(layer, m, w, owned.at(InputPointOf(m))->hessian(), index++));
        }
      }
      // The quantized layer produces the next layer's inputs.
      torch::Tensor outputs;
      GPTQ_RETURN_IF_ERROR(CallTorch("outputs", [&]() -> absl::Status {
        outputs = torch::empty_like(inputs_);
        return absl::OkStatus();
      }));
      GPTQ_RETURN_IF_ERROR(RunLayer(layer, w, ctx, nullptr, -1, &outputs));
      inputs_ = outputs;
      GPTQ_RETURN_IF_ERROR(WriteLayer(layer, w));
    }
    return absl::OkStatus();
  }

  absl::Status FinishWrite() {
    const ModelConfig& c = model_->config();
    auto fp16 = [](const torch::Tensor& t) { return t.to(torch::kFloat16); };
    GPTQ_ASSIGN_OR_RETURN(torch::Tensor embed, model_->reader().Get("model.embed_tokens.weight"));
    GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, "model.embed_tokens.weight", fp16(embed)));
    GPTQ_ASSIGN_OR_RETURN(torch::Tensor norm, model_->reader().Get("model.norm.weight"));
    GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, "model.norm.weight", fp16(norm)));
    if (!c.tie_word_embeddings) {
      GPTQ_ASSIGN_OR_RETURN(torch::Tensor lm, model_->reader().Get("lm_head.weight"));
      GPTQ_RETURN_IF_ERROR(AddTensor(*writer_, "lm_head.weight", fp16(lm)));
    }
    if (!tokenizer_model_bytes_.empty()) {
      GPTQ_RETURN_IF_ERROR(writer_->AddFile("tokenizer.model", tokenizer_model_bytes_));
    }
    GPTQ_RETURN_IF_ERROR(CheckCancel());
    GPTQ_ASSIGN_OR_RETURN(std::vector<WrittenFile> files,
                          writer_->Finish(ReadWholeFile(o_.model_dir + "/config.json")));
    report_.output_dir = o_.output_dir;
    char* abs = realpath(o_.output_dir.c_str(), nullptr);
    if (abs != nullptr) {
      report_.output_dir = abs;
      free(abs);
    }
    progress_->SetWrite(1.0);
    for (const WrittenFile& f : files) {
      report_.files.push_back({f.name, static_cast<int64_t>(f.size_bytes), f.sha256_hex});
      ProgressEvent e;
      e.kind = ProgressEvent::Kind::kArtifact;
      e.stage = "write";
      e.message = f.name;
      e.size_bytes = static_cast<int64_t>(f.size_bytes);
      e.sha256 = f.sha256_hex;
      progress_->Emit(e);
    }
    return absl::OkStatus();
  }

  const QuantizeOptions& o_;
  ProgressSink& sink_;
  const CancelToken& cancel_;
  gptq::QuantConfig config_;
  gptq::CheckpointFormat format_ = gptq::CheckpointFormat::kGptqV1;
  std::unique_ptr<DecoderModel> model_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::string tokenizer_model_bytes_;
  std::unique_ptr<Progress> progress_;
  std::unique_ptr<CheckpointWriter> writer_;
  ComputeSpec spec_;
  HeadWeights head_;
  int seqlen_ = 0, eval_seqlen_ = 0;
  torch::Tensor inputs_;  // [nsamples, seqlen, hidden] on the compute device
  std::map<std::string, QuantizedModule> quantized_;
  std::map<std::string, std::vector<int32_t>> eval_tokens_;
  QuantizeReport report_;
  double pack_seconds_ = 0.0, write_seconds_ = 0.0;
  int modules_done_ = 0, total_modules_ = 1;
};

}  // namespace

absl::StatusOr<QuantizeReport> RunQuantizeJob(const QuantizeOptions& options, ProgressSink& sink,
                                              const CancelToken& cancel) {
  // The CPU forward allocates and frees tens of MiB per chunk; with glibc's defaults those
  // blocks go back to the OS each time and page faults on re-allocation cost more system time
  // than the matmuls (stories260K: 14 s sys vs 11 s user). The worker process exists to run
  // this job, so keep freed blocks in the heap (process-wide, once).
  static std::once_flag malloc_tuned;
  std::call_once(malloc_tuned, [] {
    mallopt(M_MMAP_THRESHOLD, 512 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
  // No exception escapes: everything Torch runs inside CallTorch, and this is the last net.
  return CallTorch("quantize job", [&]() -> absl::StatusOr<QuantizeReport> {
    Job job(options, sink, cancel);
    return job.Run();
  });
}

}  // namespace gptq::runtime
