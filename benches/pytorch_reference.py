"""PyTorch reference timings for the comparisons in the README's Performance section.

Run on the same machine as the Rust benches, alternating with them:
    pip install torch==2.15.0 numpy
    python benches/pytorch_reference.py [MNIST_DIR]

Every step uses PyTorch's fastest Adam on CPU, `torch.optim.Adam(..., fused=True)` (its default,
the multi-tensor "foreach" Adam, is timed beside it for reference).

Mirrors benches/train_step.rs (notebook MLP 784-1000-2000-10, Adam lr 1e-3, one fixed random
batch; LoRA as PEFT computes it, base frozen) and, given MNIST_DIR, the notebook's pretraining
epoch (real MNIST, batch 10, 6000 steps)."""
import gzip, os, statistics, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(784, 1000)
        self.linear2 = nn.Linear(1000, 2000)
        self.linear3 = nn.Linear(2000, 10)

    def forward(self, x):
        return self.linear3(F.relu(self.linear2(F.relu(self.linear1(x)))))


class LoraLinear(nn.Module):
    """PEFT's LoRA Linear forward: base(x) + B(A(x)) * scale, base frozen."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scale


def time_steps(model, params, batch, fused=True, steps=300, warmup=30):
    opt = torch.optim.Adam(params, lr=1e-3, fused=fused)
    x = torch.randn(batch, 784)
    y = torch.arange(batch) % 10
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pretrain_epoch(mnist_dir):
    images = read_idx(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"))
    x_all = torch.from_numpy(((images.reshape(-1, 784) / 255.0 - 0.1307) / 0.3081).astype(np.float32))
    y_all = torch.from_numpy(labels.astype(np.int64))
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    order = torch.randperm(len(y_all))
    t = time.perf_counter()
    for start in range(0, len(order), 10):
        idx = order[start:start + 10]
        opt.zero_grad()
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        opt.step()
        loss.item()
    elapsed = time.perf_counter() - t
    steps = len(order) // 10
    return elapsed, steps / elapsed


def lora_model(rank):
    net = Net()
    net.linear1 = LoraLinear(net.linear1, rank, rank)
    net.linear2 = LoraLinear(net.linear2, rank, rank)
    net.linear3 = LoraLinear(net.linear3, rank, rank)
    return net


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for batch in (10, 256):
        for fused in (True, False):
            adam = "fused Adam" if fused else "default Adam"
            full = Net()
            ms = time_steps(full, list(full.parameters()), batch, fused)
            print(f"batch {batch}, {adam}: full step {ms:.2f} ms")
            for rank in (1, 8):
                m = lora_model(rank)
                trainable = [p for p in m.parameters() if p.requires_grad]
                ms = time_steps(m, trainable, batch, fused)
                print(f"batch {batch}, {adam}: lora r{rank} step {ms:.2f} ms")
    if len(sys.argv) > 1:
        elapsed, rate = pretrain_epoch(sys.argv[1])
        print(f"pretrain epoch: {elapsed:.1f} s, {rate:.1f} steps/s")
