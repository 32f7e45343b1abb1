"""The Python side of `grulm bench`: d2l 0.17's GRU training step in PyTorch.

Two models, as in the chapter:
  scratch  - the hand-written GRU: parameters as plain tensors, a Python loop
             over time, one-hot inputs, reset gate before W_hh (d2l's code);
  builtin  - nn.GRU + nn.Linear (d2l's RNNModel), fused by libtorch (cuDNN on CUDA).
A training step is d2l's train_epoch_ch8 body: carry and detach the state,
forward, mean cross-entropy, backward, grad_clipping(θ=1) (with its host read
of the norm, as d2l has it), SGD update.

Run by `grulm bench --compare-python PYTHON` with the same shapes, repeats and
thread count; prints one JSON object per (shape, model) on stdout. On CUDA
(`--device cuda`) each timed repeat starts and ends with torch.cuda.synchronize(),
and the peak memory is torch.cuda.max_memory_allocated() since the model was built.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def normal(shape, device):
    return torch.randn(size=shape, device=device) * 0.01


class ScratchGRU:
    """d2l's from-scratch GRU language model (reset gate before W_hh)."""

    def __init__(self, vocab, hidden, device):
        def three():
            return (normal((vocab, hidden), device), normal((hidden, hidden), device), torch.zeros(hidden, device=device))

        self.W_xz, self.W_hz, self.b_z = three()
        self.W_xr, self.W_hr, self.b_r = three()
        self.W_xh, self.W_hh, self.b_h = three()
        self.W_hq = normal((hidden, vocab), device)
        self.b_q = torch.zeros(vocab, device=device)
        self.params = [self.W_xz, self.W_hz, self.b_z, self.W_xr, self.W_hr, self.b_r,
                       self.W_xh, self.W_hh, self.b_h, self.W_hq, self.b_q]
        for p in self.params:
            p.requires_grad_(True)
        self.vocab, self.hidden, self.device = vocab, hidden, device

    def begin_state(self, batch):
        return (torch.zeros((batch, self.hidden), device=self.device),)

    def __call__(self, X, state):
        inputs = F.one_hot(X.T, self.vocab).type(torch.float32)  # [T, B, V]
        H, = state
        outputs = []
        for x in inputs:
            Z = torch.sigmoid(x @ self.W_xz + H @ self.W_hz + self.b_z)
            R = torch.sigmoid(x @ self.W_xr + H @ self.W_hr + self.b_r)
            H_tilde = torch.tanh(x @ self.W_xh + (R * H) @ self.W_hh + self.b_h)
            H = Z * H + (1 - Z) * H_tilde
            outputs.append(H @ self.W_hq + self.b_q)
        return torch.cat(outputs, dim=0), (H,)


class BuiltinGRU(nn.Module):
    """d2l's RNNModel around nn.GRU."""

    def __init__(self, vocab, hidden):
        super().__init__()
        self.rnn = nn.GRU(vocab, hidden)
        self.linear = nn.Linear(hidden, vocab)
        self.vocab, self.hidden = vocab, hidden

    def begin_state(self, batch, device):
        return torch.zeros((1, batch, self.hidden), device=device)

    def forward(self, X, state):
        x = F.one_hot(X.T.long(), self.vocab).type(torch.float32)
        Y, state = self.rnn(x, state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state


def grad_clipping(params, theta):
    norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
    if norm > theta:
        for p in params:
            p.grad[:] *= theta / norm


def bench(model_name, B, T, H, V, steps, repeats, warmup, device):
    # Peak memory counts from here: parameters, inputs, activations, workspaces.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    torch.manual_seed(0)
    xs = torch.randint(0, V, (steps, B, T), device=device)
    ys = torch.randint(0, V, (steps, B, T), device=device)
    loss_fn = nn.CrossEntropyLoss()
    if model_name == "scratch":
        net = ScratchGRU(V, H, device)
        params = net.params
        state = net.begin_state(B)

        def update():
            with torch.no_grad():
                for p in params:
                    p -= 1.0 * p.grad
                    p.grad.zero_()
    else:
        net = BuiltinGRU(V, H).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        state = net.begin_state(B, device)

        def update():
            opt.step()

    def run_steps(state):
        for k in range(steps):
            if isinstance(state, tuple):
                state = tuple(s.detach() for s in state)
            else:
                state = state.detach()
            X, Y = xs[k], ys[k]
            y_hat, state = net(X, state)
            loss = loss_fn(y_hat, Y.T.reshape(-1)).mean()
            if model_name != "scratch":
                opt.zero_grad()
            loss.backward()
            grad_clipping(params, 1)
            update()
        loss.item()
        return state

    times = []
    for i in range(warmup + repeats):
        # The timed region starts and ends with the device idle.
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        state = run_steps(state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "cuda allocator peak"
    else:
        peak = peak_rss_mib()
        peak_kind = "peak RSS"
    return {
        "side": "python", "model": model_name, "B": B, "T": T, "H": H, "V": V,
        "steps_per_repeat": steps, "repeats": repeats, "seconds": times, "seconds_median": median,
        "tokens_per_s": steps * B * T / median, "peak_mib": peak, "peak_kind": peak_kind,
    }


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", action="append", default=[], help="B,T,H,V,steps (repeatable)")
    ap.add_argument("--models", default="scratch,builtin")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="only check that torch imports; print its version")
    a = ap.parse_args()
    if a.check:
        print(f"python reference: torch {torch.__version__}", file=sys.stderr)
        return
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    for shape in a.shape:
        B, T, H, V, steps = (int(x) for x in shape.split(","))
        for m in a.models.split(","):
            r = bench(m, B, T, H, V, steps, a.repeats, a.warmup, device)
            r["threads"] = torch.get_num_threads()
            r["torch"] = torch.__version__
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
