"""First optimizer step in a new process with HF-style decay/no-decay groups (weight_decay listed
first, an lr_scale tag) and a scheduler that adds keys (OneCycleLR with cycle_momentum, or CyclicLR):
it must load the standard fused kernels that scripts/setup.sh built, never compile (issue 11).

    .venv/bin/python bench/first_step.py adam|sgd|rmsprop|adagrad|adadelta
"""
import time, sys, torch
from torch import nn
from deepdescent import optim
name = sys.argv[1]
m = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
groups = [{"params": [m[0].weight], "weight_decay": 0.01, "lr_scale": 0.5},  # HF's decay group, a timm-style tag
          {"params": [m[0].bias, m[2].weight, m[2].bias], "weight_decay": 0.0}]
make = {"adam": lambda: optim.Adam(groups, lr=1e-3),
        "sgd": lambda: optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True),
        "rmsprop": lambda: optim.RMSProp(groups, lr=1e-3, momentum=0.9),
        "adagrad": lambda: optim.AdaGrad(groups),
        "adadelta": lambda: optim.AdaDelta(groups)}[name]
opt = make()
if name in ("sgd", "rmsprop", "adam"):
    s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=True)
else:
    s = torch.optim.lr_scheduler.CyclicLR(opt, 0.01, 0.1, cycle_momentum=False)
x = torch.randn(32, 64); m(x).sum().backward()
t = time.perf_counter(); opt.step(); dt = time.perf_counter() - t
s.step(); m(x).sum().backward(); opt.step()
# compiling takes about a minute on 2 cores (the runtime) plus 2 s an algorithm; loading them, milliseconds
print(name, f"first step {dt * 1000:.1f} ms", f"(path {opt.path})")
