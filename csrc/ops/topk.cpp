// Validation for topk, shared by the CPU and CUDA entry points.
#include "ops/topk.h"

#include <limits>

namespace medtrt::ops {

TopkParams validate_topk(const std::vector<std::int64_t>& shape, const std::string& dtype,
                         std::int64_t k, const std::string& activation) {
  const char* op = "topk: ";
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  MEDTRT_CHECK(shape.size() == 2, op, "expected logits of rank 2 [batch, classes]; got rank ",
               shape.size(), " with shape (", dims, ")");
  MEDTRT_CHECK(dtype == "float32" || dtype == "float16", op,
               "expected float32 or float16 logits; got ", dtype);
  MEDTRT_CHECK(shape[0] >= 1, op, "expected at least one row; got an empty batch, shape (", dims,
               ")");
  MEDTRT_CHECK(shape[1] >= 1, op, "expected at least one class; got shape (", dims, ")");
  // classes <= 2^30 keeps the kernel's lane loop (c += 32) far from int32 overflow.
  MEDTRT_CHECK(shape[0] <= std::numeric_limits<std::int32_t>::max() && shape[1] <= (1 << 30), op,
               "shape (", dims, ") exceeds the limits of 2^31-1 rows and 2^30 classes");
  MEDTRT_CHECK(k >= 1 && k <= shape[1], op, "k must be in [1, classes=", shape[1], "]; got ", k);

  TopkParams p{};
  if (activation == "softmax") p.activation = Activation::kSoftmax;
  else if (activation == "sigmoid") p.activation = Activation::kSigmoid;
  else if (activation == "none") p.activation = Activation::kNone;
  else MEDTRT_CHECK(false, op, "activation must be 'softmax', 'sigmoid' or 'none'; got '",
                    activation, "'");
  p.batch = static_cast<std::int32_t>(shape[0]);
  p.classes = static_cast<std::int32_t>(shape[1]);
  p.k = static_cast<std::int32_t>(k);
  p.logit_type = dtype == "float32" ? LogitType::kF32 : LogitType::kF16;
  return p;
}

}  // namespace medtrt::ops
