"""Reads a grulm run's TensorBoard event files with TensorBoard's own reader.

Usage: python tensorboard_read.py RUN_DIR
Prints JSON: {"scalars": {tag: [[step, value], ...]}, "texts": {tag: [[step, [str, ...]], ...]}}.
Values are the float32s TensorBoard stores, printed exactly (Python's repr).
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1] + "/tb", size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "texts": {
        t: [[e.step, [s.decode() for s in e.tensor_proto.string_val]] for e in acc.Tensors(t)]
        for t in tags["tensors"]
    },
}
print(json.dumps(out))
