"""Where a small fused layer's backward host time goes on the GPU machine: the autograd engine runs CUDA
backward nodes on its device thread, so a Python backward (an autograd.Function) runs there too. This times the
same torch calls on the main thread and inside a Function's backward, and lists the Python threads alive.

    python benchmarks/probe_autograd_thread.py
"""

from __future__ import annotations

import sys
import threading
import time

import torch


def per_call_us(fn, n=300, reps=7):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> None:
    dev = "cuda"
    print("python threads:", [t.name for t in threading.enumerate()], "switchinterval", sys.getswitchinterval())
    x = torch.randn(256, 1024, device=dev, requires_grad=True)
    a = torch.randn(256, 1024, device=dev)
    w = torch.randn(1024, 1024, device=dev)
    gy = torch.randn(256, 1024, device=dev)
    work = {
        "nothing": lambda: None,
        "4 empty": lambda: [torch.empty(256, 1024, device=dev) for _ in range(4)],
        "4 mm": lambda: [torch.mm(a, w) for _ in range(4)],
        "4 view": lambda: [a.view(1024, 256) for _ in range(4)],
    }
    for name, body in work.items():

        class F(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                return t.clone()

            @staticmethod
            def backward(ctx, g, body=body):
                body()
                return g

        main_us = per_call_us(body)
        y = F.apply(x)
        bwd_us = per_call_us(lambda y=y: torch.autograd.grad(y, [x], gy, retain_graph=True))
        print(f"{name:10s} main thread {main_us:8.1f} us   inside autograd backward (grad call total) {bwd_us:8.1f} us")
    lin = torch.nn.Linear(1024, 1024, device=dev)
    y = lin(x)
    us = per_call_us(lambda: torch.autograd.grad(y, [x, lin.weight, lin.bias], gy, retain_graph=True))
    print(f"nn.Linear backward only {us:.1f} us")
    import pai_fast.functional as PF

    d = 3
    ps = [torch.randn(s, device=dev, dtype=torch.float32).requires_grad_() for s in
          [(1024, 1024), (1024,), (d, 1024, 1024), (d, 1024), (d, 1024), (d, d, 1024)]]  # fmt: skip
    y = PF.dendritic_linear(x, *ps, backend="triton")
    us = per_call_us(lambda: torch.autograd.grad(y, [x, *ps], gy, retain_graph=True))
    print(f"fused triton backward only {us:.1f} us")
    from pai_fast.ops import DendriticLinearFunction

    node = y.grad_fn

    def manual():
        # The Function's backward called on this (main) thread with the same saved tensors.
        return DendriticLinearFunction.backward(node, gy)

    print(f"fused triton backward body on main thread {per_call_us(manual):.1f} us")


if __name__ == "__main__":
    main()
