// GPTQ fast path. The slow, column-by-column twin lives in reference.cc (gptq_reference) and
// the tests compare the two by normalized MSE.
//
// Layout: the weight is worked on transposed, Wt [K, N] contiguous, so that "column k of W"
// is a contiguous row and the rank-1 / lazy-batch updates are row-major GEMM-friendly.
//
// No host synchronisation happens inside the column loop: grids, the pivot d = Hinv[i, i] and
// the error row stay on the device as tensors; only the damping loop (once per attempt) and
// the final loss read values back.
#include "gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gptq/status_macros.h"
#include "gptq/torch_status.h"

namespace gptq {
namespace {

bool IsFloating(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// fp64 inputs are computed in fp64 (used by the tests to compare with the fp64 twin without
// rounding-tie noise); everything else (fp32/fp16/bf16) in fp32.
at::ScalarType ComputeType(const at::Tensor& weight) {
  return weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The grid of one group (or of whole rows), one entry per output channel.
struct Grid {
  at::Tensor scale;           // [N] compute dtype
  at::Tensor zero;            // [N] compute dtype (integral values)
  at::Tensor neg_zero_scale;  // [N] -zero·scale, so that q - w = codes·scale + this - w
};

// Quantizer.find_params of the reference (per channel, weight=True) on x: [cols, N], i.e. the
// columns of the group as rows. xmin/xmax are clamped to include 0; symmetric grids mirror
// xmax (and, as the reference does, only replace xmin when it is negative); rows that are
// all zero get [-1, 1].
Grid FindParams(const at::Tensor& x, int bits, bool sym) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  at::Tensor xmin = std::get<0>(x.min(0)).clamp_max(0);
  at::Tensor xmax = std::get<0>(x.max(0)).clamp_min(0);
  if (sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin < 0, -xmax, xmin);
  }
  const at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
  xmin = xmin.masked_fill(both_zero, -1);
  xmax = xmax.masked_fill(both_zero, 1);
  Grid grid;
  grid.scale = (xmax - xmin) / maxq;
  grid.zero = sym ? at::full_like(grid.scale, (maxq + 1) / 2) : at::round(-xmin / grid.scale);
  grid.neg_zero_scale = -(grid.zero * grid.scale);
  return grid;
}

// The order in which columns are quantized and where each grid comes from.
struct ColumnPlan {
  std::vector<int64_t> perm;     // perm[p] = original column quantized at position p
  std::vector<int64_t> grid_of;  // grid index used at position p
  // > 0 at positions where a dynamic grid starts: number of (permuted) columns it covers.
  std::vector<int64_t> segment_length;
  int64_t num_groups = 1;
  bool dynamic = false;  // grids computed during the sweep (group_size > 0, !static_groups)
};

int64_t NumGroups(int64_t k, int group_size) {
  return group_size > 0 ? (k + group_size - 1) / group_size : 1;
}

// Indices sorting `values` in decreasing order; ties keep index order (stable).
std::vector<int64_t> StableArgsortDescending(const std::vector<double>& values, int64_t begin,
                                             int64_t end) {
  std::vector<int64_t> idx(end - begin);
  std::iota(idx.begin(), idx.end(), begin);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int64_t a, int64_t b) { return values[a] > values[b]; });
  return idx;
}

// GPTQModel's group-aware reordering (GAR, gar.py): columns are sorted by decreasing diag(H)
// inside each group, and whole groups are ordered by their largest diag(H) (stable). Unlike
// GPTQModel (which drops a trailing partial group), a partial last group is a group like the
// others. Returns the permutation and, in *group_order, the original group at each slot.
std::vector<int64_t> GroupAwarePerm(const std::vector<double>& diag, int64_t group_size,
                                    std::vector<int64_t>* group_order) {
  const int64_t k = static_cast<int64_t>(diag.size());
  const int64_t num_groups = (k + group_size - 1) / group_size;
  std::vector<double> score(num_groups);
  std::vector<std::vector<int64_t>> local(num_groups);
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t begin = g * group_size;
    const int64_t end = std::min(k, begin + group_size);
    local[g] = StableArgsortDescending(diag, begin, end);
    score[g] = diag[local[g].front()];
  }
  *group_order = StableArgsortDescending(score, 0, num_groups);
  std::vector<int64_t> perm;
  perm.reserve(k);
  for (int64_t g : *group_order) perm.insert(perm.end(), local[g].begin(), local[g].end());
  return perm;
}

// diag: diag(H) after dead columns were set to 1.
ColumnPlan MakePlan(const std::vector<double>& diag, const QuantConfig& config) {
  const int64_t k = static_cast<int64_t>(diag.size());
  const int gs = config.group_size;
  ColumnPlan plan;
  plan.num_groups = NumGroups(k, gs);
  plan.grid_of.assign(k, 0);
  plan.segment_length.assign(k, 0);
  std::vector<int64_t> group_order;
  if (config.desc_act) {
    plan.perm = StableArgsortDescending(diag, 0, k);
  } else if (config.act_group_aware) {
    plan.perm = GroupAwarePerm(diag, gs > 0 ? gs : k, &group_order);
  } else {
    plan.perm.resize(k);
    std::iota(plan.perm.begin(), plan.perm.end(), 0);
  }
  if (gs <= 0) return plan;  // one grid per channel, computed up front
  if (config.static_groups) {
    for (int64_t p = 0; p < k; ++p) plan.grid_of[p] = plan.perm[p] / gs;
    return plan;
  }
  plan.dynamic = true;
  if (!config.desc_act && config.act_group_aware) {
    // Whole original groups are contiguous in the permuted order: one grid per segment,
    // indexed by the original group so that g_idx stays k // group_size.
    int64_t p = 0;
    for (int64_t g : group_order) {
      const int64_t length = std::min<int64_t>(k, (g + 1) * gs) - g * gs;
      plan.segment_length[p] = length;
      for (int64_t j = 0; j < length; ++j) plan.grid_of[p + j] = g;
      p += length;
    }
    return plan;
  }
  for (int64_t p = 0; p < k; ++p) {
    plan.grid_of[p] = p / gs;
    if (p % gs == 0) plan.segment_length[p] = std::min<int64_t>(gs, k - p);
  }
  return plan;
}

// Lazy-batch blocks [begin, end). A dynamic grid is computed from the current columns of
// its group, so every group must either start a block (then all its columns have received
// every earlier update) or lie inside one block (then the in-block updates have reached it):
// a block is cut short where a group would straddle its end. With group_size dividing
// block_size (the usual 128/128 or 32/128) the blocks are the plain ones.
std::vector<std::pair<int64_t, int64_t>> MakeBlocks(const ColumnPlan& plan, int block_size) {
  const int64_t k = static_cast<int64_t>(plan.perm.size());
  std::vector<int64_t> segment_start(k, 0);
  int64_t current = 0;
  for (int64_t p = 0; p < k; ++p) {
    if (plan.segment_length[p] > 0) current = p;
    segment_start[p] = current;
  }
  std::vector<std::pair<int64_t, int64_t>> blocks;
  int64_t i1 = 0;
  while (i1 < k) {
    int64_t i2 = std::min<int64_t>(k, i1 + block_size);
    if (plan.dynamic && i2 < k) {
      const int64_t s = segment_start[i2 - 1];
      if (s > i1 && s + plan.segment_length[s] > i2) i2 = s;
    }
    blocks.emplace_back(i1, i2);
    i1 = i2;
  }
  return blocks;
}

std::vector<double> ToHostVector(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

at::Tensor ToDeviceIndex(const std::vector<int64_t>& v, const at::Device& device) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
}

struct HessianInverse {
  at::Tensor hinv;  // upper Cholesky factor of H⁻¹, compute dtype
  double damp = 0;
  bool ok = false;
};

// H⁻¹ = chol(cholesky_inverse(chol(H + damp·mean(diag H)·I)), upper). While H + damp is not
// positive definite (or the factor is not finite, as for a NaN Hessian), damp grows by
// damp_auto_increment as long as 0 < damp < 1 (GPTQModel's hessian_inverse).
HessianInverse InvertHessian(const at::Tensor& h, const QuantConfig& config) {
  HessianInverse result;
  const at::Tensor mean = h.diagonal().mean();
  double damp = config.damp_percent;
  while (damp > 0 && damp < 1) {
    at::Tensor damped = h.clone();
    damped.diagonal().add_(mean * damp);
    at::Tensor lower, info;
    std::tie(lower, info) = at::linalg_cholesky_ex(damped);
    if (info.item<int64_t>() == 0) {
      at::Tensor upper, info2;
      std::tie(upper, info2) = at::linalg_cholesky_ex(at::cholesky_inverse(lower), /*upper=*/true);
      if (info2.item<int64_t>() == 0 && upper.isfinite().all().item<bool>()) {
        result.hinv = upper;
        result.damp = damp;
        result.ok = true;
        return result;
      }
    }
    damp += config.damp_auto_increment;
  }
  result.damp = damp;
  return result;
}

// Fills the outputs shared by GPTQ and RTN from codes in original column order.
//   codes_t: [K, N] compute dtype (original order); scales/zeros: [G, N]; g_idx: [K] long.
void FillResult(const at::Tensor& codes_t, const at::Tensor& scales, const at::Tensor& zeros,
                const at::Tensor& g_idx, const QuantConfig& config, QuantizedWeight* out) {
  const at::Tensor scale_k = scales.index_select(0, g_idx);  // [K, N]
  const at::Tensor zero_k = zeros.index_select(0, g_idx);
  out->dequantized = (scale_k * (codes_t - zero_k)).t().to(at::kFloat).contiguous();
  out->codes = codes_t.t().to(at::kInt).contiguous();
  out->scales = scales.to(at::kFloat).contiguous();
  out->zeros = zeros.to(at::kInt).contiguous();
  out->g_idx = g_idx.to(at::kInt).contiguous();
  out->bits = config.bits;
  out->group_size = config.group_size;
}

// RTN of w: [N, K] compute dtype; grids per channel or per group of original columns.
void RtnImpl(const at::Tensor& w, const QuantConfig& config, QuantizedWeight* out) {
  const int64_t k = w.size(1);
  const double maxq = static_cast<double>((1 << config.bits) - 1);
  const int64_t gs = config.group_size > 0 ? config.group_size : k;
  const int64_t num_groups = NumGroups(k, config.group_size);
  const at::Tensor wt = w.t().contiguous();  // [K, N]
  std::vector<at::Tensor> scales, zeros, codes;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t begin = g * gs;
    const at::Tensor cols = wt.narrow(0, begin, std::min(k, begin + gs) - begin);
    const Grid grid = FindParams(cols, config.bits, config.sym);
    codes.push_back(at::clamp(at::round(cols / grid.scale) + grid.zero, 0, maxq));
    scales.push_back(grid.scale);
    zeros.push_back(grid.zero);
  }
  const at::Tensor g_idx =
      at::div(at::arange(k, w.options().dtype(at::kLong)), gs, /*rounding_mode=*/"floor");
  FillResult(at::cat(codes, 0), at::stack(scales, 0), at::stack(zeros, 0), g_idx, config, out);
}

absl::Status ValidateWeight(const torch::Tensor& weight) {
  if (!weight.defined()) return absl::InvalidArgumentError("weight: tensor is undefined");
  if (weight.dim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: expected a 2-D [out_features, in_features] tensor, got ",
                     weight.dim(), " dimensions"));
  }
  if (!IsFloating(weight)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: expected a float32/float16/bfloat16/float64 tensor, got ",
                     std::string(c10::toString(weight.scalar_type()))));
  }
  if (weight.size(0) == 0 || weight.size(1) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: empty shape [", weight.size(0), ", ", weight.size(1), "]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateFinite(const at::Tensor& w) {
  if (!w.isfinite().all().item<bool>()) {
    return absl::InvalidArgumentError("weight: contains NaN or Inf values");
  }
  return absl::OkStatus();
}

absl::Status GptqImpl(const at::Tensor& weight, const at::Tensor& hessian,
                      const QuantConfig& config, QuantizedWeight* out) {
  const auto start = std::chrono::steady_clock::now();
  const c10::OptionalDeviceGuard device_guard(weight.device());
  const at::ScalarType ct = ComputeType(weight);
  const int64_t k = weight.size(1);
  const double maxq = static_cast<double>((1 << config.bits) - 1);

  at::Tensor w = weight.to(ct, /*non_blocking=*/false, /*copy=*/true);  // [N, K]
  GPTQ_RETURN_IF_ERROR(ValidateFinite(w));
  at::Tensor h = hessian.to(weight.device(), ct, /*non_blocking=*/false, /*copy=*/true);

  // Per-channel grid (group_size -1): from the weight before dead columns are zeroed, as the
  // reference calls find_params first.
  Grid channel_grid;
  if (config.group_size <= 0) channel_grid = FindParams(w.t(), config.bits, config.sym);

  // Dead inputs: H[i,i] = 1 and W[:, i] = 0.
  const at::Tensor dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1);
  w.masked_fill_(dead.unsqueeze(0), 0);

  const ColumnPlan plan = MakePlan(ToHostVector(h.diagonal()), config);
  std::vector<Grid> grids(plan.num_groups);
  if (config.group_size <= 0) {
    grids[0] = channel_grid;
  } else if (config.static_groups) {
    // Static groups: grids on the original column order, before any permutation.
    for (int64_t g = 0; g < plan.num_groups; ++g) {
      const int64_t begin = g * config.group_size;
      const int64_t length = std::min<int64_t>(k, begin + config.group_size) - begin;
      grids[g] = FindParams(w.narrow(1, begin, length).t(), config.bits, config.sym);
    }
  }

  const at::Tensor perm = ToDeviceIndex(plan.perm, w.device());
  at::Tensor wt = w.index_select(1, perm).t().contiguous();  // [K, N], permuted rows
  h = h.index_select(0, perm).index_select(1, perm);

  const HessianInverse inverse = InvertHessian(h, config);
  out->damp_used = inverse.damp;
  if (!inverse.ok) {
    RtnImpl(w, config, out);
    out->rtn_fallback = true;
    out->loss = 0;
    out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return absl::OkStatus();
  }
  const at::Tensor& hinv = inverse.hinv;

  // Per column the reference does err = (w - q) / d and W[:, j] -= err·Hinv[i, j]. Here the
  // division by d = Hinv[i, i] is folded into the block's rows of Hinv once per block
  // (R = Hinv[i, :] / d), so a column costs 7 small ops (codes: 4, q - w: 2, rank-1 update:
  // 1): on a GPU this loop is bound by kernel launches, not by arithmetic.
  at::Tensor codes = at::empty_like(wt);  // [K, N] permuted order
  at::Tensor loss = at::zeros({}, wt.options());
  for (const auto& [i1, i2] : MakeBlocks(plan, config.block_size)) {
    const int64_t count = i2 - i1;
    at::Tensor w1 = wt.narrow(0, i1, count);  // view: updated in place
    const at::Tensor hinv_rows = hinv.narrow(0, i1, count);
    const at::Tensor pivot = hinv_rows.narrow(1, i1, count).diagonal().unsqueeze(1);  // d
    const at::Tensor r1 = hinv_rows.narrow(1, i1, count) / pivot;
    at::Tensor diff1 = at::empty_like(w1);  // q - w per column (= -d·err of the reference)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t p = i1 + i;
      if (plan.dynamic && plan.segment_length[p] > 0) {
        grids[plan.grid_of[p]] =
            FindParams(wt.narrow(0, p, plan.segment_length[p]), config.bits, config.sym);
      }
      const Grid& grid = grids[plan.grid_of[p]];
      const at::Tensor row = w1.select(0, i);
      at::Tensor c = codes.select(0, p);
      at::div_out(c, row, grid.scale);
      c.round_().add_(grid.zero).clamp_(0, maxq);
      at::Tensor e = diff1.select(0, i);
      at::sub_out(e, grid.neg_zero_scale, row).addcmul_(c, grid.scale);
      if (i + 1 < count) {
        w1.narrow(0, i + 1, count - i - 1)
            .addr_(r1.select(0, i).narrow(0, i + 1, count - i - 1), e);
      }
    }
    loss.add_((diff1 / pivot).square().sum());
    if (i2 < k) {
      wt.narrow(0, i2, k - i2).addmm_((hinv_rows.narrow(1, i2, k - i2) / pivot).t(), diff1);
    }
  }

  // Back to the original column order. g_idx[perm[p]] = grid used at p.
  std::vector<int64_t> g_idx(k);
  for (int64_t p = 0; p < k; ++p) g_idx[plan.perm[p]] = plan.grid_of[p];
  std::vector<int64_t> inverse_perm(k);
  for (int64_t p = 0; p < k; ++p) inverse_perm[plan.perm[p]] = p;
  std::vector<at::Tensor> scales, zeros;
  for (const Grid& grid : grids) {
    scales.push_back(grid.scale);
    zeros.push_back(grid.zero);
  }
  FillResult(codes.index_select(0, ToDeviceIndex(inverse_perm, w.device())), at::stack(scales, 0),
             at::stack(zeros, 0), ToDeviceIndex(g_idx, w.device()), config, out);
  out->loss = loss.item<double>() / 2;
  out->rtn_fallback = false;
  out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateConfig(const QuantConfig& config) {
  if (config.bits != 2 && config.bits != 3 && config.bits != 4 && config.bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("QuantConfig.bits must be 2, 3, 4 or 8, got ", config.bits));
  }
  if (config.group_size != -1 && config.group_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "QuantConfig.group_size must be > 0 or -1 (one group per row), got ", config.group_size));
  }
  if (!(config.damp_percent > 0 && config.damp_percent < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "QuantConfig.damp_percent must be in the open interval (0, 1), got ", config.damp_percent));
  }
  if (!(config.damp_auto_increment > 0 && config.damp_auto_increment < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("QuantConfig.damp_auto_increment must be in the open interval (0, 1), got ",
                     config.damp_auto_increment));
  }
  if (config.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("QuantConfig.block_size must be > 0, got ", config.block_size));
  }
  return absl::OkStatus();
}

HessianAccumulator::HessianAccumulator(int64_t columns, torch::Device device) : columns_(columns) {
  if (columns <= 0) {
    init_status_ = absl::InvalidArgumentError(
        absl::StrCat("HessianAccumulator: columns must be > 0, got ", columns));
    return;
  }
  init_status_ = CallTorch("HessianAccumulator", [&] {
    h_ = at::zeros({columns, columns}, at::TensorOptions().dtype(at::kFloat).device(device));
    return absl::OkStatus();
  });
}

absl::Status HessianAccumulator::AddBatch(const torch::Tensor& x) {
  GPTQ_RETURN_IF_ERROR(init_status_);
  if (!x.defined()) return absl::InvalidArgumentError("AddBatch: activations are undefined");
  if (!IsFloating(x)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddBatch: activations must be float32/float16/bfloat16/float64, got ",
                     std::string(c10::toString(x.scalar_type()))));
  }
  if (x.dim() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddBatch: activations must be [tokens, K] or [batch, tokens, K], got ",
                     x.dim(), " dimension(s)"));
  }
  if (x.size(-1) != columns_) {
    return absl::InvalidArgumentError(absl::StrCat("AddBatch: activations have ", x.size(-1),
                                                   " features, the Hessian has ", columns_));
  }
  if (x.numel() == 0) return absl::OkStatus();  // e.g. an MoE expert that saw no token
  return CallTorch("HessianAccumulator::AddBatch", [&] {
    // The reference: H *= n/(n+tmp); n += tmp; inp = sqrt(2/n)·inp; H += inp·inpᵀ, with tmp
    // the batch size (1 for a 2-D input). One addmm with beta = n/(n+tmp), alpha = 2/(n+tmp).
    const c10::OptionalDeviceGuard device_guard(h_.device());
    const int64_t batch = x.dim() == 2 ? 1 : x.size(0);
    const at::Tensor rows = x.reshape({-1, columns_}).to(h_.device(), at::kFloat);
    const double total = static_cast<double>(num_samples_ + batch);
    h_.addmm_(rows.t(), rows, /*beta=*/num_samples_ / total, /*alpha=*/2.0 / total);
    num_samples_ += batch;
    return absl::OkStatus();
  });
}

absl::StatusOr<QuantizedWeight> QuantizeGptq(const torch::Tensor& weight,
                                             const torch::Tensor& hessian,
                                             const QuantConfig& config) {
  GPTQ_RETURN_IF_ERROR(ValidateConfig(config));
  GPTQ_RETURN_IF_ERROR(ValidateWeight(weight));
  if (!hessian.defined()) return absl::InvalidArgumentError("hessian: tensor is undefined");
  const int64_t k = weight.size(1);
  if (hessian.dim() != 2 || hessian.size(0) != k || hessian.size(1) != k) {
    return absl::InvalidArgumentError(absl::StrCat("hessian: expected [", k, ", ", k,
                                                   "] for a weight with in_features ", k, ", got [",
                                                   absl::StrJoin(hessian.sizes(), ", "), "]"));
  }
  if (!IsFloating(hessian)) {
    return absl::InvalidArgumentError(
        absl::StrCat("hessian: expected a float32 (or float64) tensor, got ",
                     std::string(c10::toString(hessian.scalar_type()))));
  }
  if (hessian.device() != weight.device()) {
    return absl::InvalidArgumentError(absl::StrCat("hessian is on ", hessian.device().str(),
                                                   " but weight is on ", weight.device().str(),
                                                   "; both must be on the same device"));
  }
  QuantizedWeight out;
  GPTQ_RETURN_IF_ERROR(CallTorch(
      "QuantizeGptq", [&] { return GptqImpl(weight, hessian, config, &out); }));
  return out;
}

absl::StatusOr<QuantizedWeight> QuantizeRtn(const torch::Tensor& weight,
                                            const QuantConfig& config) {
  GPTQ_RETURN_IF_ERROR(ValidateConfig(config));
  GPTQ_RETURN_IF_ERROR(ValidateWeight(weight));
  QuantizedWeight out;
  GPTQ_RETURN_IF_ERROR(CallTorch("QuantizeRtn", [&] {
    const auto start = std::chrono::steady_clock::now();
    const c10::OptionalDeviceGuard device_guard(weight.device());
    const at::Tensor w = weight.to(ComputeType(weight));
    GPTQ_RETURN_IF_ERROR(ValidateFinite(w));
    RtnImpl(w, config, &out);
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace gptq
