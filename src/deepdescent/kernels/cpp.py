"""C++ code generation from a traced update: one fused, vectorizable loop over the elements of a
chunk of one tensor.

Two kinds of compiled code, so that an algorithm's kernels compile in about a second:

* the kernels (:func:`kernel_library`): plain C++ with no torch header, one shared library per
  algorithm, each kernel in four instantiations (float32, float64, and bfloat16/float16
  parameters with float32 state and arithmetic), loaded with ``ctypes``;
* the runtime (:data:`RUNTIME`): one small torch extension, built once, that checks the tensor
  lists' layout, cuts them into chunks and runs a kernel over them with ``at::parallel_for``
  (torch's threads), and holds the read-only non-finite check.
"""

from __future__ import annotations

import hashlib

from deepdescent.kernels.trace import Trace, live_nodes, uniform_nodes

_FN = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})", "neg": "(-{a})",
       "sqrt": "std::sqrt({a})", "max": "dd_max({a}, {b})", "pow": "std::pow({a}, {b})", "abs": "std::abs({a})",
       "where": "({a} > 0 ? {b} : {c})", "fma": "std::fma({a}, {b}, {c})", "lerp": "dd_lerp({a}, {b}, {c})"}

def function_name(trace: Trace) -> str:
    return "k_" + hashlib.sha1(source_body(trace).encode()).hexdigest()[:16]


def source_body(trace: Trace) -> str:
    """The loop body (uniform prologue + element loops): parameters and gradients (lists 0 and 1)
    stored as P, state stored and all arithmetic done in S (float for bfloat16/half parameters).

    Every elementwise node rounds to S once, as the eager op it records does (compiled with
    ``-ffp-contract=off``: no multiply-add is fused but those the trace names). Uniform nodes are
    Python's arithmetic on the hyperparameters, in double, rounded to S where a tensor op reads
    them (as ATen converts a Python scalar). Square roots are the processor's (correctly rounded,
    as :func:`deepdescent.algorithms.common.sqrt` takes them on the eager path): one loop."""
    uni, needed = uniform_nodes(trace), live_nodes(trace)
    loads = sorted({n[1] for i, n in enumerate(trace.graph.nodes) if n[0] == "load" and i in needed}
                   | set(trace.outputs))
    pro: list[str] = []
    for i, node in enumerate(trace.graph.nodes):
        if i not in needed or not uni[i]:
            continue
        kind = node[0]
        if kind == "scalar":
            pro.append(f"const double v{i} = s[{trace.scalars.index(node[1])}];")
        elif kind == "tensor_scalar":
            pro.append(f"const double v{i} = ts[{trace.tensor_scalars.index(node[1])}];")
        elif kind == "const":
            pro.append(f"const double v{i} = {node[1]!r};")
        else:
            pro.append(f"const double v{i} = " + _FN[kind].format(**dict(zip("abc", (f"v{a}" for a in node[1:]))))
                       + ";")

    def value(a: int) -> str:
        if uni[a]:
            return f"static_cast<S>(v{a})"
        if trace.graph.nodes[a][0] == "load":
            return f"static_cast<S>(p{trace.graph.nodes[a][1]}[j])"
        return f"v{a}"

    body = []
    # the element nodes the outputs need (a uniform node depends on uniform nodes only)
    for i in sorted(i for i in needed if not uni[i] and trace.graph.nodes[i][0] != "load"):
        node = trace.graph.nodes[i]
        args = dict(zip("abc", (value(a) for a in node[1:])))
        if node[0] == "where" and uni[node[1]]:  # a per-tensor branch, decided in double as Python decides it
            args["a"] = f"v{node[1]}"
        body.append(f"const S v{i} = " + _FN[node[0]].format(**args) + ";")
    stores = [f"p{li}[j] = static_cast<{'P' if li < 2 else 'S'}>({value(n)});" for li, n in sorted(trace.outputs.items())]
    ptrs = [f"{'P' if li < 2 else 'S'}* __restrict__ p{li} = static_cast<{'P' if li < 2 else 'S'}*>(ptr[{li}]);"
            for li in loads]
    return "\n".join([*pro, *ptrs, "#pragma omp simd", "for (int64_t j = lo; j < hi; ++j) {", *body, *stores, "}"])


#: The instantiations of every kernel: suffix, parameter type P, state and arithmetic type S.
VARIANTS = (("f32", "float", "float"), ("f64", "double", "double"), ("bf16", "dd_bf16", "float"),
            ("f16", "_Float16", "float"))


def source(trace: Trace) -> str:
    """A kernel as C functions ``<name>_<variant>(ptr, lo, hi, s, ts)``: the update of elements
    [lo, hi) of one tensor whose lists start at ``ptr[0..]``, hyperparameters ``s``, this tensor's
    own scalars (its step t) ``ts``."""
    name = function_name(trace)
    body = source_body(trace)
    body = "const int64_t lo = lo0, hi = hi0;\n" + body
    variants = "\n".join(
        f'extern "C" void {name}_{suffix}(void* const* ptr, int64_t lo0, int64_t hi0, const double* s, '
        f"const double* ts) {{ {name}_body<{p}, {s}>(ptr, lo0, hi0, s, ts); }}" for suffix, p, s in VARIANTS)
    return f"""
template <typename P, typename S>
static inline void {name}_body(void* const* ptr, const int64_t lo0, const int64_t hi0, const double* s,
                               const double* ts) {{
{body}
}}
{variants}
"""


#: What every kernel library starts with: the elementwise ops as ATen's CPU kernels compute them
#: (the eager path's rounding), and bfloat16 as c10 rounds it.
PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

struct dd_bf16 {  // c10::BFloat16's conversions: exact widening, rounding to nearest even
  uint16_t x;
  dd_bf16(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    x = (f != f) ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  operator float() const { uint32_t u = uint32_t(x) << 16; float f; std::memcpy(&f, &u, 4); return f; }
};

template <typename S> static inline S dd_max(S a, S b) {  // torch.maximum / clamp_min: NaN propagates
  return (a != a) ? a : ((b != b) ? b : (a < b ? b : a));
}
template <typename S, typename W> static inline S dd_lerp(S a, S b, W w_) {  // ATen's lerp_vec
  const S w = static_cast<S>(w_);
  const bool small = std::abs(w) < S(0.5);
  return std::fma(small ? w : w - S(1), b - a, small ? a : b);
}

"""


def kernel_library(sources: list[str]) -> str:
    """The C++ of one kernel library (an algorithm's kernels)."""
    return PRELUDE + "\n".join(sources)


#: The torch extension every kernel runs through (built once; no algorithm's code in it).
RUNTIME = r"""
#include <torch/extension.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <vector>

static constexpr int64_t CHUNK = 1 << 16;
using Kernel = void (*)(void* const*, int64_t, int64_t, const double*, const double*);

// The elements of a tensor list cut into chunks of at most CHUNK elements of one tensor: chunk c is
// elements [b[c], b[c] + cum[c + 1] - cum[c]) of tensor t[c]; cum[c] elements come before it.
struct Chunks {
  std::vector<int64_t> t, b, cum{0};
  void add(int64_t tensor, int64_t n) {
    for (int64_t x = 0; x < n; x += CHUNK) {
      t.push_back(tensor); b.push_back(x);
      cum.push_back(cum.back() + std::min(n - x, CHUNK));
    }
  }
  // Where a thread's share starting near element x of the whole list begins: in x's chunk, at a
  // multiple of 16 elements from the tensor's start (a 64-byte line of float32).
  int64_t align(int64_t x) const {
    if (x >= cum.back()) return cum.back();
    const int64_t c = std::upper_bound(cum.begin(), cum.end(), x) - cum.begin() - 1;
    return cum[c] + ((x - cum[c]) & ~int64_t(15));  // chunks start at multiples of CHUNK
  }
  // f(chunk, lo, hi) over every element, the threads sharing the elements evenly: splitting the
  // chunks by count would give one thread most of a model's elements when its small tensors (batch
  // norm's vectors) cluster on one side (ResNet-50: 60% to one of two threads).
  template <typename F> void for_each(F f) const {
    if (t.empty()) return;
    at::parallel_for(0, cum.back(), CHUNK, [&](int64_t x0, int64_t x1) {
      const int64_t a0 = align(x0), a1 = align(x1);
      for (int64_t c = std::upper_bound(cum.begin(), cum.end(), a0) - cum.begin() - 1;
           c < (int64_t)t.size() && cum[c] < a1; ++c) {
        const int64_t lo = std::max(a0, cum[c]) - cum[c] + b[c], hi = std::min(a1, cum[c + 1]) - cum[c] + b[c];
        if (lo < hi && !f(c, lo, hi)) return;
      }
    });
  }
};

// The items of a Python list or tuple, borrowed (the caller's sequence keeps them alive).
static std::pair<Py_ssize_t, PyObject**> items_of(PyObject* seq) {
  TORCH_CHECK(PyList_Check(seq) || PyTuple_Check(seq), "deepdescent-fused: expected a list of tensors");
  return {PySequence_Fast_GET_SIZE(seq), PySequence_Fast_ITEMS(seq)};
}

// The tensors of a Python list (or tuple), read in place: no reference is taken. pybind11's
// std::vector<at::Tensor> conversion costs about 40 ns a tensor — 120 µs of a step over 600
// parameters and their state —, this about 4.
static std::vector<const at::Tensor*> tensors_of(PyObject* seq) {
  const auto [n, items] = items_of(seq);
  std::vector<const at::Tensor*> out(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    TORCH_CHECK(THPVariable_Check(items[i]), "deepdescent-fused: expected a list of tensors");
    out[i] = &THPVariable_Unpack(items[i]);
  }
  return out;
}

// Run a kernel (its four instantiations' addresses, as VARIANTS orders them) over tensor lists
// [params, grads, state...]: every tensor checked before anything is written, then the elements in
// parallel, each thread an even share.
void run_kernel(const std::vector<int64_t>& fns, const py::object& lists_, const std::vector<double>& s,
                const std::vector<double>& ts) {
  std::vector<std::vector<const at::Tensor*>> lists;
  const auto [nl_, outer] = items_of(lists_.ptr());
  for (Py_ssize_t l = 0; l < nl_; ++l) lists.push_back(tensors_of(outer[l]));
  const int64_t nl = lists.size(), nt = nl ? lists[0].size() : 0;
  if (nt == 0) return;
  for (const auto& l : lists) TORCH_CHECK((int64_t)l.size() == nt, "deepdescent-fused: lists of different lengths");
  const auto pt = lists[0][0]->scalar_type();
  const int v = pt == at::kFloat ? 0 : pt == at::kDouble ? 1 : pt == at::kBFloat16 ? 2 : pt == at::kHalf ? 3 : -1;
  TORCH_CHECK(v >= 0 && (int64_t)fns.size() == 4, "deepdescent-fused: non-contiguous or mixed tensors");
  const auto st = v == 1 ? at::kDouble : at::kFloat;
  const auto device = lists[0][0]->device();
  std::vector<void*> table(nt * nl);
  Chunks chunks;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t n = lists[0][t]->numel();
    for (int64_t l = 0; l < nl; ++l) {
      const at::Tensor& x = *lists[l][t];
      TORCH_CHECK(x.is_contiguous() && x.scalar_type() == (l < 2 ? pt : st) && x.device() == device &&
                  x.numel() == n, "deepdescent-fused: non-contiguous or mixed tensors");
      table[t * nl + l] = x.data_ptr();
    }
    chunks.add(t, n);
  }
  const Kernel fn = reinterpret_cast<Kernel>(fns[v]);
  const int64_t nts = (int64_t)ts.size() / nt;
  chunks.for_each([&](int64_t c, int64_t lo, int64_t hi) {
    fn(&table[chunks.t[c] * nl], lo, hi, s.data(), ts.data() + chunks.t[c] * nts);
    return true;
  });
}

template <typename T>
static bool any_nonfinite_impl(const std::vector<const at::Tensor*>& xs) {
  std::vector<const T*> ptr;
  Chunks chunks;
  for (size_t t = 0; t < xs.size(); ++t) {
    TORCH_CHECK(xs[t]->is_contiguous() && xs[t]->scalar_type() == xs[0]->scalar_type(),
                "deepdescent-fused: non-contiguous or mixed tensors");
    ptr.push_back(xs[t]->data_ptr<T>());
    chunks.add(t, xs[t]->numel());
  }
  std::atomic<bool> found{false};
  chunks.for_each([&](int64_t c, int64_t lo, int64_t hi) {
    if (found.load(std::memory_order_relaxed)) return false;
    const T* __restrict__ p = ptr[chunks.t[c]];
    T acc = 0;
    #pragma omp simd reduction(+:acc)
    for (int64_t j = lo; j < hi; ++j) acc += p[j] - p[j];  // NaN exactly when p[j] is NaN or ±Inf
    if (acc != acc) found.store(true, std::memory_order_relaxed);
    return true;
  });
  return found.load();
}

bool any_nonfinite(const py::object& xs_) {
  const auto xs = tensors_of(xs_.ptr());
  if (xs.empty()) return false;
  return xs[0]->scalar_type() == at::kDouble ? any_nonfinite_impl<double>(xs) : any_nonfinite_impl<float>(xs);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run_kernel", &run_kernel, "run a generated kernel over tensor lists");
  m.def("any_nonfinite", &any_nonfinite, "whether some element is NaN or ±Inf");
}
"""
