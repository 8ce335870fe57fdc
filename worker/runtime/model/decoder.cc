#include "model/decoder.h"

#include <cmath>
#include <set>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gptq/status_macros.h"
#include "gptq/torch_status.h"

namespace gptq::runtime {

CapturePoint InputPointOf(const std::string& module) {
  if (module == kQProj || module == kKProj || module == kVProj) return CapturePoint::kAttentionInput;
  if (module == kOProj) return CapturePoint::kAttentionOutput;
  if (module == kGateProj || module == kUpProj) return CapturePoint::kMlpInput;
  return CapturePoint::kMlpHidden;
}

std::vector<std::vector<std::string>> SequentialGroups(Architecture /*arch*/) {
  return {{kQProj, kKProj, kVProj}, {kOProj}, {kGateProj, kUpProj}, {kDownProj}};
}

std::string DecoderModel::ModulePrefix(int layer, const std::string& module) {
  return absl::StrCat("model.layers.", layer, ".", module);
}

std::vector<std::string> DecoderModel::LayerModules() {
  return {kQProj, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj};
}

namespace {

struct Expected {
  std::vector<int64_t> shape;
};

std::map<std::string, Expected> ExpectedTensors(const ModelConfig& c) {
  std::map<std::string, Expected> e;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim,
                ffn = c.intermediate_size;
  e["model.embed_tokens.weight"] = {{c.vocab_size, h}};
  e["model.norm.weight"] = {{h}};
  if (!c.tie_word_embeddings) e["lm_head.weight"] = {{c.vocab_size, h}};
  for (int i = 0; i < c.num_layers; ++i) {
    auto p = [&](const std::string& m) { return absl::StrCat("model.layers.", i, ".", m); };
    e[p("input_layernorm.weight")] = {{h}};
    e[p("post_attention_layernorm.weight")] = {{h}};
    e[p(kQProj) + ".weight"] = {{q, h}};
    e[p(kKProj) + ".weight"] = {{kv, h}};
    e[p(kVProj) + ".weight"] = {{kv, h}};
    e[p(kOProj) + ".weight"] = {{h, q}};
    e[p(kGateProj) + ".weight"] = {{ffn, h}};
    e[p(kUpProj) + ".weight"] = {{ffn, h}};
    e[p(kDownProj) + ".weight"] = {{h, ffn}};
    if (c.qkv_bias) {
      e[p(kQProj) + ".bias"] = {{q}};
      e[p(kKProj) + ".bias"] = {{kv}};
      e[p(kVProj) + ".bias"] = {{kv}};
    }
    if (c.o_bias) e[p(kOProj) + ".bias"] = {{h}};
    if (c.mlp_bias) {
      e[p(kGateProj) + ".bias"] = {{ffn}};
      e[p(kUpProj) + ".bias"] = {{ffn}};
      e[p(kDownProj) + ".bias"] = {{h}};
    }
  }
  return e;
}

// Tensors some exporters add that carry nothing the forward needs.
bool IsIgnorable(const std::string& name, const ModelConfig& c) {
  if (absl::EndsWith(name, ".rotary_emb.inv_freq")) return true;
  if (c.tie_word_embeddings && name == "lm_head.weight") return true;  // a tied copy
  return false;
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  torch::Tensor xf = x.to(torch::kFloat32);
  const torch::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor Linear(const torch::Tensor& x, const LinearWeights& l) {
  return at::linear(x, l.weight, l.bias.defined() ? c10::optional<at::Tensor>(l.bias) : c10::nullopt);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::Open(const std::string& model_dir) {
  GPTQ_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  GPTQ_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(model_dir));
  const auto expected = ExpectedTensors(config);
  std::vector<std::string> missing;
  for (const auto& [name, e] : expected) {
    const TensorInfo* info = reader->Info(name);
    if (info == nullptr) {
      missing.push_back(name);
      continue;
    }
    if (info->shape != e.shape) {
      return absl::FailedPreconditionError(absl::StrCat(
          reader->FileOf(name), ": tensor \"", name, "\" has shape [", absl::StrJoin(info->shape, ", "),
          "] but config.json (", config.architecture_name, ") implies [", absl::StrJoin(e.shape, ", "), "]"));
    }
    if (info->dtype != "F32" && info->dtype != "F16" && info->dtype != "BF16") {
      return absl::FailedPreconditionError(absl::StrCat(reader->FileOf(name), ": tensor \"", name,
                                                        "\" has dtype ", info->dtype,
                                                        "; supported: F32, F16, BF16"));
    }
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 5);
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", model_dir, " (", config.architecture_name, ") is missing ", missing.size(),
        " tensor(s): ", absl::StrJoin(missing.begin(), missing.begin() + shown, ", "),
        missing.size() > shown ? ", ..." : ""));
  }
  for (const std::string& name : reader->Names()) {
    if (expected.count(name) == 0 && !IsIgnorable(name, config)) {
      return absl::FailedPreconditionError(absl::StrCat(
          reader->FileOf(name), ": unexpected tensor \"", name, "\" for ", config.architecture_name,
          " with ", config.num_layers, " layers (tie_word_embeddings=",
          config.tie_word_embeddings ? "true" : "false", ")"));
    }
  }
  auto model = std::unique_ptr<DecoderModel>(new DecoderModel());
  model->dir_ = model_dir;
  model->config_ = std::move(config);
  model->reader_ = std::move(reader);
  return model;
}

absl::StatusOr<LayerWeights> DecoderModel::LoadLayer(int layer, torch::ScalarType dtype,
                                                     torch::Device device) const {
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::OutOfRangeError(absl::StrCat("layer ", layer, " out of range [0, ", config_.num_layers, ")"));
  }
  return CallTorch(absl::StrCat("loading layer ", layer), [&]() -> absl::StatusOr<LayerWeights> {
    auto get = [&](const std::string& name) -> absl::StatusOr<torch::Tensor> {
      const TensorInfo* info = reader_->Info(name);
      if (info == nullptr) return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, ": missing tensor \"", name, "\""));
      GPTQ_ASSIGN_OR_RETURN(torch::Tensor t, reader_->GetFloat(name, info->shape, dtype));
      return t.to(device);
    };
    LayerWeights w;
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    GPTQ_ASSIGN_OR_RETURN(w.input_norm, get(p + "input_layernorm.weight"));
    GPTQ_ASSIGN_OR_RETURN(w.post_norm, get(p + "post_attention_layernorm.weight"));
    for (const std::string& m : LayerModules()) {
      LinearWeights l;
      GPTQ_ASSIGN_OR_RETURN(l.weight, get(p + m + ".weight"));
      if (reader_->Has(p + m + ".bias")) {
        GPTQ_ASSIGN_OR_RETURN(l.bias, get(p + m + ".bias"));
      }
      w.linears[m] = std::move(l);
    }
    return w;
  });
}

absl::StatusOr<HeadWeights> DecoderModel::LoadHead(torch::ScalarType dtype, torch::Device device) const {
  return CallTorch("loading embeddings and head", [&]() -> absl::StatusOr<HeadWeights> {
    const std::vector<int64_t> vh = {config_.vocab_size, config_.hidden_size};
    HeadWeights h;
    GPTQ_ASSIGN_OR_RETURN(torch::Tensor embed, reader_->GetFloat("model.embed_tokens.weight", vh, dtype));
    h.embed = embed.to(device);
    GPTQ_ASSIGN_OR_RETURN(torch::Tensor norm, reader_->GetFloat("model.norm.weight", {config_.hidden_size}, dtype));
    h.final_norm = norm.to(device);
    if (config_.tie_word_embeddings) {
      h.lm_head = h.embed;
    } else {
      GPTQ_ASSIGN_OR_RETURN(torch::Tensor lm, reader_->GetFloat("lm_head.weight", vh, dtype));
      h.lm_head = lm.to(device);
    }
    return h;
  });
}

torch::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t d = c.head_dim;
  torch::Tensor inv_freq =
      1.0 / at::pow(c.rope.theta, at::arange(0, d, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                                     static_cast<double>(d));
  if (c.rope.type == "linear") {
    inv_freq = inv_freq / c.rope.factor;
  } else if (c.rope.type == "llama3") {
    // transformers' _compute_llama3_parameters: long wavelengths are divided by `factor`,
    // short ones kept, the band in between interpolated smoothly.
    const double factor = c.rope.factor, low = c.rope.low_freq_factor, high = c.rope.high_freq_factor;
    const double old_len = static_cast<double>(c.rope.original_max_position_embeddings);
    const double low_wavelen = old_len / low, high_wavelen = old_len / high;
    const torch::Tensor wavelen = 2 * M_PI / inv_freq;
    torch::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / factor, inv_freq);
    const torch::Tensor smooth = (old_len / wavelen - low) / (high - low);
    const torch::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    const torch::Tensor is_medium = at::logical_not(wavelen < high_wavelen).logical_and(
        at::logical_not(wavelen > low_wavelen));
    inv_freq = at::where(is_medium, smoothed, scaled);
  }
  return inv_freq;
}

AttentionContext MakeAttentionContext(const ModelConfig& c, int64_t seqlen, torch::ScalarType dtype,
                                      torch::Device device) {
  AttentionContext ctx;
  const torch::Tensor inv_freq = RopeInverseFrequencies(c);
  const torch::Tensor pos = at::arange(seqlen, at::TensorOptions().dtype(at::kLong)).to(at::kFloat);
  const torch::Tensor freqs = at::outer(pos, inv_freq);  // [T, d/2] fp32
  const torch::Tensor emb = at::cat({freqs, freqs}, -1);
  ctx.cos = emb.cos().to(dtype).to(device);
  ctx.sin = emb.sin().to(dtype).to(device);
  std::set<int64_t> windows(c.sliding_window.begin(), c.sliding_window.end());
  const torch::Tensor i = at::arange(seqlen, at::TensorOptions().dtype(at::kLong)).unsqueeze(1);
  const torch::Tensor j = at::arange(seqlen, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  for (int64_t w : windows) {
    torch::Tensor blocked = j > i;
    if (w > 0) blocked = blocked.logical_or((i - j) >= w);
    torch::Tensor mask = at::zeros({seqlen, seqlen}, at::TensorOptions().dtype(at::kFloat));
    mask.masked_fill_(blocked, -std::numeric_limits<float>::infinity());
    ctx.masks[w] = mask.to(dtype).to(device);
  }
  return ctx;
}

torch::Tensor DecoderLayerForward(const ModelConfig& c, int layer, const LayerWeights& w,
                                  const torch::Tensor& x, const AttentionContext& ctx,
                                  const CaptureFn* capture, int stop_after, absl::Status* capture_status) {
  auto observe = [&](CapturePoint point, const torch::Tensor& t) -> bool {
    if (capture != nullptr && *capture) {
      absl::Status s = (*capture)(point, t);
      if (!s.ok()) {
        if (capture_status != nullptr) *capture_status = s;
        return true;  // stop
      }
    }
    return stop_after == static_cast<int>(point);
  };
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const torch::Tensor h = RmsNorm(x, w.input_norm, c.rms_norm_eps);
  if (observe(CapturePoint::kAttentionInput, h)) return {};
  torch::Tensor q = Linear(h, w.linears.at(kQProj)).view({b, t, nh, hd}).transpose(1, 2);
  torch::Tensor k = Linear(h, w.linears.at(kKProj)).view({b, t, nkv, hd}).transpose(1, 2);
  torch::Tensor v = Linear(h, w.linears.at(kVProj)).view({b, t, nkv, hd}).transpose(1, 2);
  const torch::Tensor cos = ctx.cos.narrow(0, 0, t), sin = ctx.sin.narrow(0, 0, t);
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;
  if (nkv != nh) {
    k = k.repeat_interleave(nh / nkv, 1);
    v = v.repeat_interleave(nh / nkv, 1);
  }
  const int64_t window = c.sliding_window.empty() ? 0 : c.sliding_window[layer];
  const torch::Tensor& full_mask = ctx.masks.at(window);
  const torch::Tensor mask = full_mask.narrow(0, 0, t).narrow(1, 0, t);
  torch::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(hd)));
  scores = scores + mask;
  const torch::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  const torch::Tensor attn = at::matmul(probs, v).transpose(1, 2).reshape({b, t, nh * hd});
  if (observe(CapturePoint::kAttentionOutput, attn)) return {};
  torch::Tensor out = x + Linear(attn, w.linears.at(kOProj));
  const torch::Tensor h2 = RmsNorm(out, w.post_norm, c.rms_norm_eps);
  if (observe(CapturePoint::kMlpInput, h2)) return {};
  const torch::Tensor act = at::silu(Linear(h2, w.linears.at(kGateProj))) * Linear(h2, w.linears.at(kUpProj));
  if (observe(CapturePoint::kMlpHidden, act)) return {};
  return out + Linear(act, w.linears.at(kDownProj));
}

torch::Tensor Embed(const HeadWeights& head, const torch::Tensor& ids) {
  return at::embedding(head.embed, ids);
}

torch::Tensor LmHead(const ModelConfig& c, const HeadWeights& head, const torch::Tensor& hidden) {
  const torch::Tensor h = RmsNorm(hidden, head.final_norm, c.rms_norm_eps);
  return at::linear(h, head.lm_head).to(at::kFloat);
}

double SumNll(const ModelConfig& c, const HeadWeights& head, const torch::Tensor& hidden,
              const torch::Tensor& ids) {
  const int64_t b = hidden.size(0), t = hidden.size(1);
  // Small chunks of fp32 logits (~32 MiB): big transient buffers cost more in page faults
  // than the extra matmul calls cost.
  const int64_t row_bytes = (t - 1) * c.vocab_size * 4;
  const int64_t rows = std::max<int64_t>(1, (int64_t{32} << 20) / std::max<int64_t>(1, row_bytes));
  double total = 0.0;
  for (int64_t r = 0; r < b; r += rows) {
    const int64_t n = std::min(rows, b - r);
    const torch::Tensor logits = LmHead(c, head, hidden.narrow(0, r, n).narrow(1, 0, t - 1));
    const torch::Tensor target = ids.narrow(0, r, n).narrow(1, 1, t - 1).to(logits.device()).unsqueeze(-1);
    // NLL = logsumexp(logits) - logit[target], without materializing log_softmax.
    const torch::Tensor nll = at::logsumexp(logits, -1) - logits.gather(-1, target).squeeze(-1);
    total += nll.sum().to(at::kDouble).cpu().item<double>();
  }
  return total;
}

absl::StatusOr<torch::Tensor> ForwardLogits(const DecoderModel& model, const torch::Tensor& ids,
                                            torch::ScalarType dtype, torch::Device device) {
  const ModelConfig& c = model.config();
  GPTQ_ASSIGN_OR_RETURN(HeadWeights head, model.LoadHead(dtype, device));
  return CallTorch("forward", [&]() -> absl::StatusOr<torch::Tensor> {
    const AttentionContext ctx = MakeAttentionContext(c, ids.size(1), dtype, device);
    torch::Tensor x = Embed(head, ids.to(device));
    for (int i = 0; i < c.num_layers; ++i) {
      GPTQ_ASSIGN_OR_RETURN(LayerWeights w, model.LoadLayer(i, dtype, device));
      x = DecoderLayerForward(c, i, w, x, ctx, nullptr);
    }
    return LmHead(c, head, x);
  });
}

absl::StatusOr<std::vector<int64_t>> GreedyGenerate(const DecoderModel& model,
                                                    const std::vector<int64_t>& prompt, int num_new) {
  std::vector<int64_t> ids = prompt;
  std::vector<int64_t> out;
  for (int step = 0; step < num_new; ++step) {
    GPTQ_ASSIGN_OR_RETURN(
        torch::Tensor logits,
        ForwardLogits(model,
                      torch::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0),
                      at::kFloat, torch::kCPU));
    const int64_t next = logits[0][-1].argmax().item<int64_t>();
    ids.push_back(next);
    out.push_back(next);
  }
  return out;
}

}  // namespace gptq::runtime
