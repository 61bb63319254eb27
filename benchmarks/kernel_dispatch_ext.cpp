// The C++-extension candidate measured by benchmarks/kernel_dispatch.py --cpp (not shipped):
// the same C kernels behind an operator registered with TORCH_LIBRARY and a C++ autograd
// function, built with torch.utils.cpp_extension. Only the peephole step, float32/float64.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#define restrict __restrict
extern "C" {
#include "cell_kernels.c"
}

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

static std::tuple<Tensor, Tensor, Tensor> forward_cpu(const Tensor& g, const Tensor& c, const Tensor& p) {
  TORCH_CHECK(c.dim() == 2 && g.sizes() == at::IntArrayRef({c.size(0), 4 * c.size(1)}) &&
              p.sizes() == at::IntArrayRef({3, c.size(1)}), "peephole_step: wrong shapes");
  TORCH_CHECK(g.scalar_type() == c.scalar_type() && p.scalar_type() == c.scalar_type(), "dtypes differ");
  int64_t B = c.size(0), H = c.size(1);
  auto gc = g.contiguous(), cc = c.contiguous(), pc = p.contiguous();
  auto h = at::empty_like(cc), cn = at::empty_like(cc), s = at::empty({B, 5 * H}, cc.options());
  if (c.scalar_type() == at::kFloat)
    peephole_forward_f32(B, H, gc.data_ptr<float>(), cc.data_ptr<float>(), pc.data_ptr<float>(),
                         h.data_ptr<float>(), cn.data_ptr<float>(), s.data_ptr<float>());
  else
    peephole_forward_f64(B, H, gc.data_ptr<double>(), cc.data_ptr<double>(), pc.data_ptr<double>(),
                         h.data_ptr<double>(), cn.data_ptr<double>(), s.data_ptr<double>());
  return {h, cn, s};
}

class PeepholeStep : public torch::autograd::Function<PeepholeStep> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& g, const Tensor& c, const Tensor& p) {
    auto [h, cn, s] = forward_cpu(g, c, p);
    ctx->save_for_backward({s, c.contiguous(), cn, p.contiguous()});
    ctx->set_materialize_grads(false);
    return {h, cn};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &s = saved[0], &c = saved[1], &cn = saved[2], &p = saved[3];
    int64_t B = c.size(0), H = c.size(1);
    auto gh = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(c);
    auto gcn = grads[1].defined() ? grads[1].contiguous() : at::zeros_like(c);
    auto gg = at::empty({B, 4 * H}, c.options()), gcp = at::empty_like(c), gp = at::zeros_like(p);
    if (c.scalar_type() == at::kFloat)
      peephole_backward_f32(B, H, gh.data_ptr<float>(), gcn.data_ptr<float>(), s.data_ptr<float>(),
                            c.data_ptr<float>(), cn.data_ptr<float>(), p.data_ptr<float>(),
                            gg.data_ptr<float>(), gcp.data_ptr<float>(), gp.data_ptr<float>());
    else
      peephole_backward_f64(B, H, gh.data_ptr<double>(), gcn.data_ptr<double>(), s.data_ptr<double>(),
                            c.data_ptr<double>(), cn.data_ptr<double>(), p.data_ptr<double>(),
                            gg.data_ptr<double>(), gcp.data_ptr<double>(), gp.data_ptr<double>());
    return {gg, gcp, gp};
  }
};

static std::tuple<Tensor, Tensor> step_cpu(const Tensor& g, const Tensor& c, const Tensor& p) {
  auto [h, cn, s] = forward_cpu(g, c, p);
  return {h, cn};
}

static std::tuple<Tensor, Tensor> step_autograd(const Tensor& g, const Tensor& c, const Tensor& p) {
  auto out = PeepholeStep::apply(g, c, p);
  return {out[0], out[1]};
}

TORCH_LIBRARY(harness_bench_ext, m) {
  m.def("peephole_step(Tensor gates, Tensor c_prev, Tensor p) -> (Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(harness_bench_ext, CPU, m) { m.impl("peephole_step", step_cpu); }
TORCH_LIBRARY_IMPL(harness_bench_ext, Autograd, m) { m.impl("peephole_step", step_autograd); }
