"""PyTorch side of the ResNet-20 comparisons (CPU, 2 threads; never in CI).

The network is kiln's `resnet20`: CIFAR ResNet (3x3 stem to 16 channels, three stages of 3 basic blocks at
16/32/64 channels, projection shortcuts = 1x1 conv + BN named downsample.0/1 as torchvision's, global average
pooling, linear classifier).

  python3 benches/reference/resnet20.py step  [--batch 64 --channels 1 --size 28]
      median training step (forward, backward, Adam), as `cargo xtask bench train-resnet20`
  python3 benches/reference/resnet20.py train --data data/fashion-mnist [--epochs 5 --batch 64 --max-steps N]
      the training recipe of `cargo xtask train --model resnet20 --dataset fashion-mnist` (Adam 1e-3, cosine decay
      to 0 per step, normalisation with the MNIST mean/std as kiln's loader does): prints time per epoch, images/s
      and the test accuracy
"""
import argparse
import gzip
import math
import pathlib
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)


class BasicBlock(nn.Module):
    def __init__(self, c_in, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet20(nn.Module):
    def __init__(self, in_channels=1, classes=10, n=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, c = [], 16
        for i, planes in enumerate([16, 32, 64]):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, planes, 2 if i > 0 and j == 0 else 1))
                c = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(h.mean((2, 3)))


def step_bench(a):
    torch.manual_seed(0)
    model = ResNet20(a.channels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(a.batch, a.channels, a.size, a.size)
    y = torch.arange(a.batch) % 10

    def step():
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t

    for _ in range(5):
        step()
    times = sorted(step() for _ in range(a.iters))
    med = times[len(times) // 2]
    print(f"pytorch resnet20 training step, batch {a.batch} of {a.channels}x{a.size}x{a.size}: "
          f"median {med * 1e3:.2f} ms, {a.batch / med:.0f} images/s")


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(folder, split):
    x = idx(folder / f"{split}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = idx(folder / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (x - 0.1307) / 0.3081
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def train(a):
    folder = pathlib.Path(a.data)
    xtr, ytr = load(folder, "train")
    xte, yte = load(folder, "t10k")
    torch.manual_seed(a.seed)
    model = ResNet20(1)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    per_epoch = math.ceil(len(xtr) / a.batch)
    total = a.max_steps or a.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(a.seed)
    steps = 0
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        t0 = time.perf_counter()
        seen = 0
        for i in range(per_epoch):
            if steps >= total:
                break
            idx_ = perm[i * a.batch:(i + 1) * a.batch]
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx_]), ytr[idx_]).backward()
            opt.step()
            sched.step()
            steps += 1
            seen += len(idx_)
        dt = time.perf_counter() - t0
        print(f"epoch {epoch + 1}: {dt:.1f} s, {seen / dt:.0f} images/s", flush=True)
        if steps >= total:
            break
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 1000):
            correct += (model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
    print(f"test accuracy {100 * correct / len(xte):.2f}%")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["step", "train"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--data", default="data/fashion-mnist")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    step_bench(a) if a.mode == "step" else train(a)
