"""Loads a grulm built-in run's model.safetensors into d2l 0.17's concise model
(nn.GRU, nn.LSTM or nn.RNN + nn.Linear, strict: every name and shape must
match) and prints d2l's greedy predict_ch8(prefix, num_preds). The cell is read
off the weights' shapes (weight_ih_l0 has 3H rows for a GRU, 4H for an LSTM, H
for an RNN). Used by the test
`cli::checkpoints_load_in_pytorch`; needs only torch (the set-up venv's).

    python pytorch_predict.py RUN_DIR PREFIX NUM_PREDS [WEIGHTS]

WEIGHTS defaults to RUN_DIR/model.safetensors; `grulm export` writes a scratch
run's weights in PyTorch's names to RUN_DIR/pytorch.safetensors.
"""
import json
import os
import struct
import sys

import torch
from torch import nn


def load_safetensors(path):
    """A reader of the format itself: 8-byte header length, JSON header, raw data."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    dtypes = {"F32": torch.float32, "F64": torch.float64}
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


class RNNModel(nn.Module):
    def __init__(self, cell, vocab, hidden, layers):
        super().__init__()
        self.rnn = cell(vocab, hidden, num_layers=layers)
        self.linear = nn.Linear(hidden, vocab)


def load_model(weights, vocab_size):
    """d2l's RNNModel with the weights loaded strictly; the cell is read off the shapes."""
    sd = load_safetensors(weights)
    hidden = sd["rnn.weight_hh_l0"].shape[1]
    layers = sum(1 for k in sd if k.startswith("rnn.weight_ih_l"))
    cell = {1: nn.RNN, 3: nn.GRU, 4: nn.LSTM}[sd["rnn.weight_ih_l0"].shape[0] // hidden]
    model = RNNModel(cell, vocab_size, hidden, layers).float()
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model


def zero_state(model, batch):
    """begin_state: zeros [L, B, H], a pair of them for an LSTM."""
    rnn = model.rnn
    h = torch.zeros(rnn.num_layers, batch, rnn.hidden_size)
    return (h, torch.zeros_like(h)) if isinstance(rnn, nn.LSTM) else h


def main():
    run, prefix, num_preds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    vocab = json.load(open(os.path.join(run, "vocab.json")))["idx_to_token"]
    weights = sys.argv[4] if len(sys.argv) > 4 else os.path.join(run, "model.safetensors")
    model = load_model(weights, len(vocab))
    idx = {t: i for i, t in enumerate(vocab)}
    state = zero_state(model, 1)
    out = [idx[prefix[0]]]

    def step(token, state):
        x = nn.functional.one_hot(torch.tensor([[token]]), len(vocab)).float()  # [T=1, B=1, V]
        y, state = model.rnn(x, state)
        return model.linear(y), state

    with torch.no_grad():
        for ch in prefix[1:]:
            _, state = step(out[-1], state)
            out.append(idx[ch])
        for _ in range(num_preds):
            y, state = step(out[-1], state)
            out.append(int(y.argmax()))
    print("".join(vocab[i] for i in out))


if __name__ == "__main__":
    main()
