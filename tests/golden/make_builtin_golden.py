"""Golden numbers for grulm's built-in models, computed by PyTorch itself.

d2l 0.17's concise model: one-hot inputs (time-major) -> nn.GRU / nn.LSTM /
nn.RNN -> nn.Linear, with deterministic weights built from arange, in float64.
Writes tests/golden/builtin_{gru,lstm,rnn}.json (weights, inputs, logits, final
state), which the test `models::builtin_cells_match_pytorch_golden` loads into
grulm's BuiltinLm.

Regenerate (uses the set-up venv's torch, the same 2.11.0 grulm links):
    make golden
"""
import json
import os

import torch
from torch import nn

V, H, L, B, T = 5, 4, 2, 2, 3


def write(name, rnn):
    linear = nn.Linear(H, V)
    params = {}
    with torch.no_grad():
        for k, (pname, p) in enumerate(list(rnn.named_parameters()) + list(linear.named_parameters())):
            n = p.numel()
            values = torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + k) * 0.5
            p.copy_(values.reshape(p.shape))
            prefix = "rnn." if k < 4 * L else "linear."
            params[prefix + pname] = {"shape": list(p.shape), "values": p.flatten().tolist()}
    tokens = [[(3 * b + 2 * t + 1) % V for t in range(T)] for b in range(B)]  # [B, T]
    h0 = (torch.cos(torch.arange(L * B * H, dtype=torch.float64) * 0.29) * 0.5).reshape(L, B, H)
    c0 = (torch.sin(torch.arange(L * B * H, dtype=torch.float64) * 0.41) * 0.5).reshape(L, B, H)
    x = nn.functional.one_hot(torch.tensor(tokens).T, V).double()  # [T, B, V], as d2l's RNNModel
    with torch.no_grad():
        y, state = rnn(x, (h0, c0) if name == "lstm" else h0)
        logits = linear(y)  # [T, B, V]
    h, c = state if name == "lstm" else (state, None)
    out = {
        "torch_version": torch.__version__,
        "V": V, "H": H, "L": L, "B": B, "T": T,
        "params": params,
        "tokens": tokens,
        "h0": h0.flatten().tolist(),
        "logits": logits.flatten().tolist(),
        "final_state": h.flatten().tolist(),
    }
    if name == "lstm":
        out["c0"] = c0.flatten().tolist()
        out["final_cell"] = c.flatten().tolist()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"builtin_{name}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path} (torch {torch.__version__})")


def main():
    torch.set_default_dtype(torch.float64)
    write("gru", nn.GRU(V, H, num_layers=L))
    write("lstm", nn.LSTM(V, H, num_layers=L))
    write("rnn", nn.RNN(V, H, num_layers=L))  # tanh


if __name__ == "__main__":
    main()
