"""PyTorch baseline for `cargo xtask bench train-lenet`: LeNet-5 (ReLU, max pool, conv1 padding 2)
training step (forward, backward, Adam) at batch 64 on random MNIST-shaped data, 2 threads, CPU.

Run:  python3 benches/reference/lenet_train_step.py   (needs `pip install torch`; never in CI)
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def bench(batch=64, iters=50):
    model = LeNet5()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.arange(batch) % 10

    def step():
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t

    for _ in range(5):
        step()
    times = sorted(step() for _ in range(iters))
    med = times[len(times) // 2]
    print(f"pytorch lenet5 training step, batch {batch}: median {med * 1e3:.2f} ms, {batch / med:.0f} images/s")


if __name__ == "__main__":
    bench()
