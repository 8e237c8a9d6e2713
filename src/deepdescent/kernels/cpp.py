"""C++ code generation from a traced update: one fused, vectorizable loop over all elements of
all tensors, parallel over chunks, compiled with ``torch.utils.cpp_extension``."""

from __future__ import annotations

import hashlib

from deepdescent.kernels.trace import Trace, live_nodes, uniform_nodes

_FN = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})", "neg": "(-{a})",
       "sqrt": "std::sqrt({a})", "max": "std::max({a}, {b})", "pow": "std::pow({a}, {b})", "abs": "std::abs({a})",
       "where": "({a} > 0 ? {b} : {c})"}


def function_name(trace: Trace) -> str:
    return "k_" + hashlib.sha1(source_body(trace).encode()).hexdigest()[:16]


def source_body(trace: Trace) -> str:
    """The loop body (uniform prologue + element loop): parameters and gradients (lists 0 and 1)
    stored as P, state stored and all arithmetic done in S (float for bfloat16/half parameters)."""
    uni, needed = uniform_nodes(trace), live_nodes(trace)
    pro, body = [], []
    loads = sorted({n[1] for i, n in enumerate(trace.graph.nodes) if n[0] == "load" and i in needed}
                   | set(trace.outputs))
    for i, node in enumerate(trace.graph.nodes):
        if i not in needed:
            continue
        kind = node[0]
        if kind == "load":
            body.append(f"const S v{i} = static_cast<S>(p{node[1]}[j]);")
        elif kind == "scalar":
            pro.append(f"const double v{i} = s[{trace.scalars.index(node[1])}];")
        elif kind == "tensor_scalar":
            pro.append(f"const double v{i} = ts[t * {len(trace.tensor_scalars)} + "
                       f"{trace.tensor_scalars.index(node[1])}];")
        elif kind == "const":
            pro.append(f"const double v{i} = {node[1]!r};")
        elif uni[i]:
            args = dict(zip("abc", (f"v{a}" for a in node[1:])))
            pro.append(f"const double v{i} = " + _FN[kind].format(**args) + ";")
        elif kind == "div" and uni[node[2]]:  # x / u as x · (1/u): a multiply per element, not a divide
            pro.append(f"const double r{i} = 1.0 / v{node[2]};")
            a = f"v{node[1]}" if not uni[node[1]] else f"static_cast<S>(v{node[1]})"
            body.append(f"const S v{i} = ({a} * static_cast<S>(r{i}));")
        else:
            args = [f"v{a}" if not uni[a] else f"static_cast<S>(v{a})" for a in node[1:]]
            body.append(f"const S v{i} = " + _FN[kind].format(**dict(zip("abc", args))) + ";")
    stores = [f"p{li}[j] = static_cast<{'P' if li < 2 else 'S'}>(static_cast<S>(v{n}));"
              for li, n in sorted(trace.outputs.items())]
    ptrs = [f"{'P' if li < 2 else 'S'}* __restrict__ p{li} = static_cast<{'P' if li < 2 else 'S'}*>(ptr[{li}][t]);"
            for li in loads]
    return "\n".join([*pro, *ptrs, "#pragma omp simd", "for (int64_t j = lo; j < hi; ++j) {", *body, *stores, "}"])


def source(trace: Trace) -> str:
    """A complete C++ function ``name(lists, s, ts)``: float and double tensors, and bfloat16/half
    parameters and gradients with float state."""
    name = function_name(trace)
    return f"""
template <typename P, typename S>
static void {name}_impl(const std::vector<std::vector<at::Tensor>>& lists, const std::vector<double>& s,
                        const std::vector<double>& ts) {{
  const int64_t nl = lists.size(), nt = lists[0].size();
  std::vector<std::vector<void*>> ptr(nl, std::vector<void*>(nt));
  std::vector<int64_t> ct, cb, ce;
  const auto device = lists[0][0].device();
  for (int64_t t = 0; t < nt; ++t) {{
    for (int64_t l = 0; l < nl; ++l) {{  // checked before anything is written
      const at::Tensor& x = lists[l][t];
      const auto dtype = l < 2 ? c10::CppTypeToScalarType<P>::value : c10::CppTypeToScalarType<S>::value;
      TORCH_CHECK(x.is_contiguous() && x.scalar_type() == dtype && x.device() == device &&
                  x.numel() == lists[0][t].numel(), "deepdescent-fused: non-contiguous or mixed tensors");
      ptr[l][t] = x.data_ptr();
    }}
    const int64_t n = lists[0][t].numel();
    for (int64_t b = 0; b < n; b += CHUNK) {{ ct.push_back(t); cb.push_back(b); ce.push_back(std::min(n, b + CHUNK)); }}
  }}
  at::parallel_for(0, (int64_t)ct.size(), 1, [&](int64_t c0, int64_t c1) {{
    for (int64_t c = c0; c < c1; ++c) {{
      const int64_t t = ct[c], lo = cb[c], hi = ce[c];
      {source_body(trace)}
    }}
  }});
}}

void {name}(const std::vector<std::vector<at::Tensor>>& lists, const std::vector<double>& s,
           const std::vector<double>& ts) {{
  if (lists[0].empty()) return;
  switch (lists[0][0].scalar_type()) {{
    case at::kDouble: {name}_impl<double, double>(lists, s, ts); break;
    case at::kBFloat16: {name}_impl<at::BFloat16, float>(lists, s, ts); break;
    case at::kHalf: {name}_impl<at::Half, float>(lists, s, ts); break;
    default: {name}_impl<float, float>(lists, s, ts);
  }}
}}
"""


INCLUDES = """
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>
static constexpr int64_t CHUNK = 1 << 16;
"""

HEADER = INCLUDES + """

template <typename T>
static bool any_nonfinite_impl(const std::vector<at::Tensor>& xs) {
  std::vector<const T*> ptr;
  std::vector<int64_t> ct, cb, ce;
  for (size_t t = 0; t < xs.size(); ++t) {
    TORCH_CHECK(xs[t].is_contiguous() && xs[t].scalar_type() == xs[0].scalar_type(),
                "deepdescent-fused: non-contiguous or mixed tensors");
    ptr.push_back(xs[t].data_ptr<T>());
    const int64_t n = xs[t].numel();
    for (int64_t b = 0; b < n; b += CHUNK) { ct.push_back(t); cb.push_back(b); ce.push_back(std::min(n, b + CHUNK)); }
  }
  std::atomic<bool> found{false};
  at::parallel_for(0, (int64_t)ct.size(), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1 && !found.load(std::memory_order_relaxed); ++c) {
      const T* __restrict__ p = ptr[ct[c]];
      T acc = 0;
      #pragma omp simd reduction(+:acc)
      for (int64_t j = cb[c]; j < ce[c]; ++j) acc += p[j] - p[j];  // NaN exactly when p[j] is NaN or ±Inf
      if (acc != acc) found.store(true, std::memory_order_relaxed);
    }
  });
  return found.load();
}

bool any_nonfinite(const std::vector<at::Tensor>& xs) {
  if (xs.empty()) return false;
  return xs[0].scalar_type() == at::kDouble ? any_nonfinite_impl<double>(xs) : any_nonfinite_impl<float>(xs);
}
"""


KERNEL_SIGNATURE = ("void {name}(const std::vector<std::vector<at::Tensor>>& lists, const std::vector<double>& s, "
                    "const std::vector<double>& ts);")


def translation_units(sources: list[str], parts: int) -> list[str]:
    """The kernels' C++ in ``parts`` files that compile in parallel: the first also holds the
    non-finite check; each includes what the kernels need."""
    groups = [sources[i::parts] for i in range(parts)]
    return [HEADER + "\n".join(groups[0])] + [INCLUDES + "\n".join(g) for g in groups[1:] if g]


def bindings(names: list[str]) -> str:
    """The Python module of an extension: declarations of its functions and their bindings."""
    declarations = "\n".join("bool any_nonfinite(const std::vector<at::Tensor>& xs);" if n == "any_nonfinite" else
                             KERNEL_SIGNATURE.format(name=n) for n in names)
    defs = "\n".join(f'  m.def("{n}", &{n}, "{n}");' for n in names)
    return f"#include <torch/extension.h>\n{declarations}\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{\n{defs}\n}}\n"
