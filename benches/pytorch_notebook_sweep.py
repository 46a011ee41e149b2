"""The notebook's experiment in PyTorch, over many seeds: the reference for the README's seed
table of `mnist_lora`.

    pip install torch==2.15.0 numpy
    python benches/pytorch_notebook_sweep.py MNIST_DIR FIRST_SEED LAST_SEED

Per seed, exactly the notebook's recipe: `torch.manual_seed(seed)`; the 784-1000-2000-10 MLP with
PyTorch's default initialisation; one pretraining epoch, batch 10, shuffled, Adam lr 1e-3; rank-1
LoRA (A ~ N(0, 1), B = 0, alpha 1) registered on all three weights with
`torch.nn.utils.parametrize`, everything else frozen; 100 batches of 10 from a shuffle of the
digit-9 training images; then the test split with the adapter on. Adam is `fused=True`, PyTorch's
fastest; it computes the notebook's default Adam update. Prints one line per seed and a summary."""
import os, statistics, sys
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch.utils.data import DataLoader, TensorDataset

from pytorch_reference import Net, read_idx

torch.set_num_threads(2)


class LoRAParametrization(nn.Module):
    """The notebook's W + (B A) * alpha / r, with the notebook's shapes and initialisation."""

    def __init__(self, out_features, in_features, rank=1, alpha=1):
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.normal_(self.lora_A, mean=0, std=1)
        self.scale = alpha / rank

    def forward(self, weight):
        return weight + (self.lora_B @ self.lora_A).view(weight.shape) * self.scale


def load(mnist_dir, split):
    images = read_idx(os.path.join(mnist_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(mnist_dir, f"{split}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.reshape(-1, 784).copy()).float() / 255.0
    return (x - 0.1307) / 0.3081, torch.from_numpy(labels.astype("int64"))


def train(model, x, y, steps=None):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    for i, (xb, yb) in enumerate(DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)):
        if steps is not None and i >= steps:
            break
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


@torch.no_grad()
def wrong_counts(model, x, y):
    predicted = torch.cat([model(xb).argmax(1) for xb in x.split(1000)])
    wrong = torch.bincount(y[predicted != y], minlength=10)
    return (predicted == y).float().mean().item(), wrong.tolist()


def run(seed, train_set, test_set):
    torch.manual_seed(seed)
    model = Net()
    train(model, *train_set)
    accuracy, before = wrong_counts(model, *test_set)
    for layer in (model.linear1, model.linear2, model.linear3):
        parametrize.register_parametrization(layer, "weight", LoRAParametrization(*layer.weight.shape))
    for name, p in model.named_parameters():
        p.requires_grad_("lora" in name)
    nines = train_set[1] == 9
    train(model, train_set[0][nines], train_set[1][nines], steps=100)
    with_lora, after = wrong_counts(model, *test_set)
    return accuracy, before[9], with_lora, after[9]


if __name__ == "__main__":
    mnist_dir, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    train_set, test_set = load(mnist_dir, "train"), load(mnist_dir, "t10k")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("seed | pretrained accuracy | digit 9: pretrained -> LoRA | cut | accuracy with LoRA")
    cuts = []
    for seed in range(first, last + 1):
        accuracy, before, with_lora, after = run(seed, train_set, test_set)
        cuts.append(before / max(after, 1))
        print(f"{seed} | {accuracy:.4f} | {before} -> {after} | {cuts[-1]:.2f}x | {with_lora:.4f}", flush=True)
    below = sum(c < 2 for c in cuts)
    print(f"median cut {statistics.median(cuts):.2f}x; below 2x on {below} of {len(cuts)} seeds")
