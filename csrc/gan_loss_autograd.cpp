// GAN losses: autograd for gencore::gan_loss, in C++ (one kernel for every device).
//
// Why C++ and not torch.library.register_autograd in Python (the DESIGN.md default): GAN losses
// run on tiny tensors, where the Python autograd.Function round trip (forward and backward) costs
// more than the whole reference loss. Here the forward redispatches to the device kernel, saves the
// two gradients the kernel computed, and the backward only scales them by the incoming gradient.
// The fake kernel stays in Python (gencore/ops/_gan_loss.py); opcheck and torch.compile see an
// ordinary op with an Autograd kernel.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>


namespace gencore {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_call(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, int64_t role,
    int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gencore::gan_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const std::optional<at::Tensor>&, const at::Tensor&, int64_t, int64_t,
                           int64_t)>();
  return op.call(real, fake, kind, role, reduction);
}

// Whether g is a CPU tensor holding the single value 1 (read without a dispatch).
bool is_cpu_one(const at::Tensor& g) {
  if (!g.defined() || !g.device().is_cpu()) return false;
  // Not for tensor subclasses (fake, functional: tracing under torch.compile), whose data is
  // absent or must not steer the trace, nor for symbolic shapes.
  constexpr c10::DispatchKeySet kWrapped({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  if (g.key_set().has_any(kWrapped) || g.unsafeGetTensorImpl()->has_symbolic_sizes_strides())
    return false;
  if (g.numel() != 1 || !g.has_storage() || g.const_data_ptr() == nullptr) return false;
  switch (g.scalar_type()) {
    case at::kFloat: return *g.const_data_ptr<float>() == 1.0f;
    case at::kDouble: return *g.const_data_ptr<double>() == 1.0;
    case at::kBFloat16: return static_cast<float>(*g.const_data_ptr<at::BFloat16>()) == 1.0f;
    case at::kHalf: return static_cast<float>(*g.const_data_ptr<at::Half>()) == 1.0f;
    default: return false;
  }
}

constexpr const char* kNoDoubleBackward =
    "gencore.ops.gan_loss does not support double backward (second derivatives of the loss); "
    "use impl='reference' for that";

// create_graph=True: the saved gradients carry no graph back to the logits, so a second
// derivative through them would be silently wrong. The results pass through this identity, made a
// function of the logits they depend on, whose backward raises. (Public autograd API only: the
// autograd internals that could attach an error node directly differ between torch releases.)
struct NoDoubleBackward : public torch::autograd::Function<NoDoubleBackward> {
  static variable_list forward(AutogradContext*, const at::Tensor& grad,
                               const at::Tensor& /*logits*/) {
    return {grad};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, kNoDoubleBackward);
    return {};
  }
};

struct GanLossFunction : public torch::autograd::Function<GanLossFunction> {
  static variable_list forward(AutogradContext* ctx, const std::optional<at::Tensor>& real,
                               const at::Tensor& fake, int64_t kind, int64_t role,
                               int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_real, grad_fake] = gan_loss_call(real, fake, kind, role, reduction);
    // Everything the backward needs is in these four (no saved_data: its string-keyed entries
    // cost more than this whole op's kernel at GAN batch sizes). The logits also anchor the graph
    // of a create_graph=True backward (see NoDoubleBackward).
    ctx->save_for_backward({grad_real, grad_fake, real.value_or(at::Tensor()), fake});
    ctx->mark_non_differentiable({grad_real, grad_fake});
    return {loss, grad_real, grad_fake};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    // needs_input_grad counts tensor inputs only: fake is input 0 when real is None. grad_real is
    // an empty tensor where the loss does not read real_logits.
    const bool has_real = saved[2].defined();
    const bool want_r = has_real && saved[0].sizes() == saved[2].sizes() && ctx->needs_input_grad(0);
    const bool want_f = ctx->needs_input_grad(has_real ? 1 : 0);
    at::Tensor dr, df;
    if (!at::GradMode::is_enabled() && is_cpu_one(g)) {
      // The usual loss.backward(): the saved gradients are the answer. (The engine and
      // AccumulateGrad only steal or write into a gradient nobody else holds.)
      if (want_r) dr = saved[0];
      if (want_f) df = saved[1];
      return {dr, df, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    {
      at::NoGradGuard no_grad;
      if (want_r) dr = at::mul(saved[0], g);
      if (want_f) df = at::mul(saved[1], g);
    }
    if (at::GradMode::is_enabled()) {
      if (dr.defined()) dr = NoDoubleBackward::apply(dr, saved[2])[0];
      if (df.defined()) df = NoDoubleBackward::apply(df, saved[3])[0];
    }
    return {dr, df, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_autograd(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, int64_t role,
    int64_t reduction) {
  auto out = GanLossFunction::apply(real, fake, kind, role, reduction);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace gencore

TORCH_LIBRARY_IMPL(gencore, Autograd, m) {
  m.impl("gan_loss", &gencore::gan_loss_autograd);
}
