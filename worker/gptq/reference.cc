// The slow twin. Reads like the Python it ports; speed is not a goal.
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "gptq/status_macros.h"
#include "gptq/torch_status.h"

namespace gptq {
namespace reference {
namespace {

using at::indexing::None;
using at::indexing::Slice;

// Quantizer (perchannel=True, weight=True, mse=False) of the reference quant.py.
struct Quantizer {
  int bits = 4;
  bool sym = true;
  double maxq = 15;
  at::Tensor scale;  // [N, 1] float64
  at::Tensor zero;   // [N, 1] float64

  // x: [N, cols].
  void FindParams(const at::Tensor& x) {
    const int64_t rows = x.size(0);
    const at::Tensor tmp = at::zeros({rows}, x.options());
    at::Tensor xmin = at::minimum(std::get<0>(x.min(1)), tmp);
    at::Tensor xmax = at::maximum(std::get<0>(x.max(1)), tmp);
    if (sym) {
      xmax = at::maximum(at::abs(xmin), xmax);
      for (int64_t r = 0; r < rows; ++r) {
        if (xmin[r].item<double>() < 0) xmin[r] = -xmax[r].item<double>();
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (xmin[r].item<double>() == 0 && xmax[r].item<double>() == 0) {
        xmin[r] = -1.0;
        xmax[r] = 1.0;
      }
    }
    scale = (xmax - xmin) / maxq;
    if (sym) {
      zero = at::full_like(scale, (maxq + 1) / 2);
    } else {
      zero = at::round(-xmin / scale);
    }
    scale = scale.reshape({-1, 1});
    zero = zero.reshape({-1, 1});
  }

  // Integer codes of x: [N, 1].
  at::Tensor Codes(const at::Tensor& x) const {
    return at::clamp(at::round(x / scale) + zero, 0, maxq);
  }
  // quantize(): scale * (q - zero).
  at::Tensor Quantize(const at::Tensor& x) const { return scale * (Codes(x) - zero); }
};

Quantizer MakeQuantizer(const QuantConfig& config) {
  Quantizer q;
  q.bits = config.bits;
  q.sym = config.sym;
  q.maxq = std::pow(2.0, config.bits) - 1;
  return q;
}

// torch.argsort(values, descending=True), ties in index order.
std::vector<int64_t> ArgsortDescending(const std::vector<double>& values) {
  std::vector<int64_t> idx(values.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int64_t a, int64_t b) { return values[a] > values[b]; });
  return idx;
}

// gar_ref.py: compute_local_perms_original, compute_global_perm_original,
// compose_final_perm_original; the trailing partial group (when group_size does not divide
// K) is one more group.
std::vector<int64_t> GarPerm(const std::vector<double>& diag, int64_t group_size,
                             std::vector<int64_t>* global_perm) {
  const int64_t n = static_cast<int64_t>(diag.size());
  const int64_t num_groups = (n + group_size - 1) / group_size;
  std::vector<std::vector<int64_t>> local_perms;
  std::vector<double> group_metric;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t start = g * group_size;
    const int64_t end = std::min(n, start + group_size);
    std::vector<double> sub(diag.begin() + start, diag.begin() + end);
    local_perms.push_back(ArgsortDescending(sub));
    group_metric.push_back(*std::max_element(sub.begin(), sub.end()));
  }
  *global_perm = ArgsortDescending(group_metric);
  std::vector<int64_t> final_perm;
  for (int64_t new_group = 0; new_group < num_groups; ++new_group) {
    const int64_t orig_group = (*global_perm)[new_group];
    for (int64_t idx : local_perms[orig_group]) final_perm.push_back(idx + orig_group * group_size);
  }
  return final_perm;
}

at::Tensor IndexTensor(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

void RtnInto(const at::Tensor& w, const QuantConfig& config, QuantizedWeight* out) {
  const int64_t columns = w.size(1);
  const int64_t gs = config.group_size == -1 ? columns : config.group_size;
  std::vector<at::Tensor> q_cols, c_cols, scale, zero;
  Quantizer quantizer = MakeQuantizer(config);
  for (int64_t i = 0; i < columns; i += gs) {
    const at::Tensor cols = w.index({Slice(), Slice(i, i + gs)});
    quantizer.FindParams(cols);
    c_cols.push_back(quantizer.Codes(cols));
    q_cols.push_back(quantizer.Quantize(cols));
    scale.push_back(quantizer.scale);
    zero.push_back(quantizer.zero);
  }
  std::vector<int64_t> g_idx(columns);
  for (int64_t i = 0; i < columns; ++i) g_idx[i] = i / gs;
  out->codes = at::cat(c_cols, 1).to(at::kInt);
  out->dequantized = at::cat(q_cols, 1).to(at::kFloat);
  out->scales = at::cat(scale, 1).t().to(at::kFloat).contiguous();
  out->zeros = at::cat(zero, 1).t().to(at::kInt).contiguous();
  out->g_idx = IndexTensor(g_idx).to(at::kInt);
  out->bits = config.bits;
  out->group_size = config.group_size;
}

absl::Status GptqInto(const at::Tensor& weight, const at::Tensor& hessian,
                      const QuantConfig& config, QuantizedWeight* out) {
  const int64_t columns = weight.size(1);
  const int64_t gs = config.group_size;
  at::Tensor W = weight.to(at::kCPU, at::kDouble).clone();
  at::Tensor H = hessian.to(at::kCPU, at::kDouble).clone();
  Quantizer quantizer = MakeQuantizer(config);
  if (gs == -1) quantizer.FindParams(W);

  // dead = torch.diag(H) == 0; H[dead, dead] = 1; W[:, dead] = 0
  for (int64_t i = 0; i < columns; ++i) {
    if (H[i][i].item<double>() == 0) {
      H[i][i] = 1.0;
      W.index_put_({Slice(), i}, 0.0);
    }
  }

  std::vector<Quantizer> groups;
  if (config.static_groups && gs != -1) {
    for (int64_t i = 0; i < columns; i += gs) {
      Quantizer q = MakeQuantizer(config);
      q.FindParams(W.index({Slice(), Slice(i, i + gs)}));
      groups.push_back(q);
    }
  }

  std::vector<double> diag(columns);
  for (int64_t i = 0; i < columns; ++i) diag[i] = H[i][i].item<double>();
  std::vector<int64_t> perm(columns);
  std::iota(perm.begin(), perm.end(), 0);
  std::vector<int64_t> global_perm;
  const bool gar = !config.desc_act && config.act_group_aware;
  if (config.desc_act) {
    perm = ArgsortDescending(diag);
  } else if (gar) {
    perm = GarPerm(diag, gs == -1 ? columns : gs, &global_perm);
  }
  const at::Tensor perm_t = IndexTensor(perm);
  W = W.index_select(1, perm_t);
  H = H.index_select(0, perm_t).index_select(1, perm_t);
  std::vector<int64_t> invperm(columns);
  for (int64_t i = 0; i < columns; ++i) invperm[perm[i]] = i;

  // hessian_inverse (GPTQModel): try damp, damp + inc, ... while 0 < damp < 1.
  const double mean = H.diagonal().mean().item<double>();
  double damp = config.damp_percent;
  at::Tensor Hinv;
  while (0 < damp && damp < 1) {
    at::Tensor H2 = H.clone();
    for (int64_t i = 0; i < columns; ++i) H2[i][i] += damp * mean;
    at::Tensor L, info;
    std::tie(L, info) = at::linalg_cholesky_ex(H2);
    bool ok = info.item<int64_t>() == 0;
    if (ok) {
      std::tie(Hinv, info) = at::linalg_cholesky_ex(at::cholesky_inverse(L), /*upper=*/true);
      ok = info.item<int64_t>() == 0 && at::isfinite(Hinv).all().item<bool>();
    }
    if (ok) break;
    Hinv = at::Tensor();
    damp += config.damp_auto_increment;
  }
  out->damp_used = damp;
  if (!Hinv.defined()) {
    // RTN fallback on the (dead-zeroed) weight in the original column order.
    RtnInto(W.index_select(1, IndexTensor(invperm)), config, out);
    out->rtn_fallback = true;
    out->loss = 0;
    return absl::OkStatus();
  }

  // GAR segment starts: each original group, in global_perm order, is one run.
  std::vector<int64_t> gar_start(columns, -1);
  if (gar && gs != -1) {
    int64_t pos = 0;
    for (int64_t g : global_perm) {
      const int64_t length = std::min(columns, (g + 1) * gs) - g * gs;
      gar_start[pos] = length;
      pos += length;
    }
  }

  at::Tensor Q = at::zeros_like(W);
  at::Tensor C = at::zeros_like(W);
  double loss = 0;
  std::vector<at::Tensor> scale, zero;
  for (int64_t i = 0; i < columns; ++i) {
    if (gs != -1) {
      if (!config.static_groups) {
        const bool starts = gar ? gar_start[i] > 0 : i % gs == 0;
        if (starts) {
          const int64_t length = gar ? gar_start[i] : gs;
          quantizer.FindParams(W.index({Slice(), Slice(i, i + length)}));
          scale.push_back(quantizer.scale);
          zero.push_back(quantizer.zero);
        }
      } else {
        int64_t idx = i;
        if (config.desc_act || gar) idx = perm[idx];
        quantizer = groups[idx / gs];
      }
    }
    const at::Tensor w = W.index({Slice(), Slice(i, i + 1)});  // [N, 1]
    const double d = Hinv[i][i].item<double>();
    const at::Tensor q = quantizer.Quantize(w);
    C.index_put_({Slice(), Slice(i, i + 1)}, quantizer.Codes(w));
    Q.index_put_({Slice(), Slice(i, i + 1)}, q);
    loss += ((w - q).pow(2) / (d * d)).sum().item<double>() / 2;
    const at::Tensor err = (w - q) / d;
    W.index({Slice(), Slice(i, None)})
        .sub_(err.matmul(Hinv.index({Slice(i, i + 1), Slice(i, None)})));
  }

  // g_idx as the reference builds it, then back to the original order.
  const int64_t group = gs == -1 ? columns : gs;
  std::vector<int64_t> g_idx(columns);
  for (int64_t i = 0; i < columns; ++i) {
    g_idx[i] = (config.static_groups && (config.desc_act || gar)) ? perm[i] / group : i / group;
  }
  if (gar && !config.static_groups) {
    for (int64_t i = 0; i < columns; ++i) g_idx[i] = perm[i] / group;  // trivial after invperm
  }
  std::vector<int64_t> g_idx_orig(columns);
  for (int64_t k = 0; k < columns; ++k) g_idx_orig[k] = g_idx[invperm[k]];

  if (gs == -1) {
    scale = {quantizer.scale};
    zero = {quantizer.zero};
  } else if (config.static_groups) {
    for (const Quantizer& q : groups) {
      scale.push_back(q.scale);
      zero.push_back(q.zero);
    }
  } else if (gar) {
    // scale = [scale[i] for i in inv_global_perm]
    std::vector<int64_t> inv_global(global_perm.size());
    for (size_t i = 0; i < global_perm.size(); ++i) inv_global[global_perm[i]] = i;
    std::vector<at::Tensor> s2, z2;
    for (int64_t i : inv_global) {
      s2.push_back(scale[i]);
      z2.push_back(zero[i]);
    }
    scale = s2;
    zero = z2;
  }

  const at::Tensor inv_t = IndexTensor(invperm);
  out->codes = C.index_select(1, inv_t).to(at::kInt).contiguous();
  out->dequantized = Q.index_select(1, inv_t).to(at::kFloat).contiguous();
  out->scales = at::cat(scale, 1).t().to(at::kFloat).contiguous();
  out->zeros = at::cat(zero, 1).t().to(at::kInt).contiguous();
  out->g_idx = IndexTensor(g_idx_orig).to(at::kInt);
  out->bits = config.bits;
  out->group_size = config.group_size;
  out->loss = loss;
  out->rtn_fallback = false;
  return absl::OkStatus();
}

absl::Status CheckWeight(const torch::Tensor& weight) {
  if (!weight.defined() || weight.dim() != 2 || !weight.is_floating_point() ||
      weight.numel() == 0) {
    return absl::InvalidArgumentError("reference: weight must be a non-empty 2-D float tensor");
  }
  return absl::OkStatus();
}

}  // namespace

ReferenceHessian::ReferenceHessian(int64_t columns, at::ScalarType dtype)
    : columns_(columns), h_(at::zeros({columns, columns}, at::TensorOptions().dtype(dtype))) {}

absl::Status ReferenceHessian::AddBatch(const torch::Tensor& x) {
  if (!x.defined() || x.dim() < 2 || x.size(-1) != columns_) {
    return absl::InvalidArgumentError(
        absl::StrCat("reference AddBatch: expected [..., ", columns_, "] activations"));
  }
  return CallTorch("ReferenceHessian::AddBatch", [&] {
    at::Tensor inp = x.to(at::kCPU);
    if (inp.dim() == 2) inp = inp.unsqueeze(0);
    const int64_t tmp = inp.size(0);
    inp = inp.reshape({-1, inp.size(-1)}).t();
    h_ *= static_cast<double>(num_samples_) / static_cast<double>(num_samples_ + tmp);
    num_samples_ += tmp;
    inp = std::sqrt(2.0 / static_cast<double>(num_samples_)) * inp.to(h_.scalar_type());
    h_ += inp.matmul(inp.t());
    return absl::OkStatus();
  });
}

absl::StatusOr<QuantizedWeight> ReferenceGptq(const torch::Tensor& weight,
                                              const torch::Tensor& hessian,
                                              const QuantConfig& config) {
  GPTQ_RETURN_IF_ERROR(ValidateConfig(config));
  GPTQ_RETURN_IF_ERROR(CheckWeight(weight));
  const int64_t k = weight.size(1);
  if (!hessian.defined() || hessian.dim() != 2 || hessian.size(0) != k || hessian.size(1) != k) {
    return absl::InvalidArgumentError("reference: hessian must be [K, K]");
  }
  QuantizedWeight out;
  GPTQ_RETURN_IF_ERROR(CallTorch(
      "ReferenceGptq", [&] { return GptqInto(weight, hessian, config, &out); }));
  return out;
}

absl::StatusOr<QuantizedWeight> ReferenceRtn(const torch::Tensor& weight,
                                             const QuantConfig& config) {
  GPTQ_RETURN_IF_ERROR(ValidateConfig(config));
  GPTQ_RETURN_IF_ERROR(CheckWeight(weight));
  QuantizedWeight out;
  GPTQ_RETURN_IF_ERROR(CallTorch("ReferenceRtn", [&] {
    RtnInto(weight.to(at::kCPU, at::kDouble), config, &out);
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace reference
}  // namespace gptq
