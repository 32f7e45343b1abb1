"""Perplexity of exported grulm weights in d2l 0.17's concise model (PyTorch),
by grulm eval's protocol: B rows, T steps, state carried, cross-entropy summed
in float64. Used by the test `cli::checkpoints_load_in_pytorch`.

    python pytorch_perplexity.py RUN_DIR WEIGHTS TEXT B T

TEXT must already be in the run's alphabet (d2l's preprocessing leaves a single
line of lowercase words with single spaces unchanged).
"""
import json
import math
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_predict import load_model, zero_state  # noqa: E402


def main():
    run, weights, text, batch, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    vocab = json.load(open(os.path.join(run, "vocab.json")))["idx_to_token"]
    idx = {t: i for i, t in enumerate(vocab)}
    ids = [idx[c] for c in open(text).read()]
    model = load_model(weights, len(vocab))
    # grulm's train::perplexity and data::sequential_minibatches (offset 0).
    t = min(steps, len(ids) - 1)
    b = max(1, min(batch, (len(ids) - 1) // t))
    row = ((len(ids) - 1) // b) * b // b
    n = row // t
    state = zero_state(model, b)
    total = 0.0
    with torch.no_grad():
        for k in range(n):
            xs = [ids[i * row + k * t:i * row + k * t + t] for i in range(b)]
            ys = [ids[i * row + k * t + 1:i * row + k * t + t + 1] for i in range(b)]
            x = nn.functional.one_hot(torch.tensor(xs).T, len(vocab)).float()  # [T, B, V]
            out, state = model.rnn(x, state)
            logits = model.linear(out).double().reshape(-1, len(vocab))
            y = torch.tensor(ys).T.reshape(-1)
            total += nn.functional.cross_entropy(logits, y, reduction="sum").item()
    print(repr(math.exp(total / (n * b * t))))


if __name__ == "__main__":
    main()
