"""Writes models/resnet/tests/fixtures/torchvision_resnet.json: the state-dict names, shapes and dtypes of
torchvision's resnet18 and resnet50, and the eval-mode logits of resnet18 (10 classes) on a 64x64 input when
every tensor of its state dict is filled by a closed formula the Rust test reproduces:

    tensor k (state-dict order), element j:  0.05 * sin(0.37 * j + 1.3 * k)
    running_var:                              1 + 0.5 * sin(0.37 * j + 1.3 * k) ** 2
    num_batches_tracked:                      0
    input element j:                          sin(0.01 * j)

Run: /path/to/venv/bin/python benches/reference/resnet_torchvision_fixture.py
"""
import json
import math
import pathlib

import torch
import torchvision

torch.set_num_threads(2)


def fill(sd):
    for k, (name, t) in enumerate(sd.items()):
        if name.endswith("num_batches_tracked"):
            t.zero_()
            continue
        j = torch.arange(t.numel(), dtype=torch.float64)
        v = torch.sin(0.37 * j + 1.3 * k)
        v = 1 + 0.5 * v**2 if name.endswith("running_var") else 0.05 * v
        t.copy_(v.reshape(t.shape).to(t.dtype))


def layout(model):
    return [[n, list(t.shape), str(t.dtype).replace("torch.", "")] for n, t in model.state_dict().items()]


out = {"resnet18": layout(torchvision.models.resnet18()), "resnet50": layout(torchvision.models.resnet50())}
m = torchvision.models.resnet18(num_classes=10).eval()
sd = m.state_dict()
with torch.no_grad():
    fill(sd)
    m.load_state_dict(sd)
    x = torch.sin(0.01 * torch.arange(2 * 3 * 64 * 64, dtype=torch.float64)).float().reshape(2, 3, 64, 64)
    out["resnet18_10_logits_64px"] = m(x).flatten().tolist()
out["torchvision"] = torchvision.__version__
dest = pathlib.Path(__file__).resolve().parents[2] / "models/resnet/tests/fixtures/torchvision_resnet.json"
dest.write_text(json.dumps(out))
print("wrote", dest, dest.stat().st_size, "bytes")
