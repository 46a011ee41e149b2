"""PyTorch + PEFT reference for benches/minilm_train_step.rs: one training step (forward,
backward, AdamW) of all-MiniLM-L6-v2 with an 8-class linear head on the mean-pooled hidden states,
batch 16, sequence 64, train mode (dropout on), 2 threads: full fine-tuning against PEFT's LoRA
r=8, alpha 16 on query and value (head trained beside it), as PEFT's users run it, and the same
LoRA with DoRA (use_dora=True). Each round also times the eval-mode forward of the LoRA and the
DoRA model (unmerged, no_grad), as the Rust bench's `minilm_inference` group does.

Run on the same machine, alternating with the Rust bench:
    pip install torch transformers peft
    MINILM_DIR=/path/to/all-MiniLM-L6-v2 python benches/pytorch_minilm_step.py [rounds]

AdamW is PyTorch's fastest on CPU, `fused=True`. Each round times 20 steps of each variant after
3 warm-up steps and prints the medians; full and LoRA alternate, which goes first alternating.
Each round also times the matrix products of the LoRA step's frozen encoder alone (the list in
the Rust bench, FROZEN_ENCODER_MATMULS), as its `minilm_lora_step_matmuls` group does."""
import os, statistics, sys, time
import torch
import torch.nn as nn
from transformers import BertModel
from peft import LoraConfig, get_peft_model

torch.set_num_threads(2)
torch.manual_seed(0)
BATCH, SEQ, CLASSES, STEPS, WARMUP = 16, 64, 8, 20, 3


class Classifier(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(384, CLASSES)

    def forward(self, ids, mask):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def model(mode):
    encoder = BertModel.from_pretrained(os.environ["MINILM_DIR"], add_pooling_layer=False)
    if mode in ("lora", "dora"):
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], use_dora=mode == "dora")
        encoder = get_peft_model(encoder, config)
    net = Classifier(encoder).train()
    lr = 5e-5 if mode == "full" else 5e-4
    params = [p for p in net.parameters() if p.requires_grad]
    return net, torch.optim.AdamW(params, lr=lr, fused=True), sum(p.numel() for p in params)


def median_step(mode):
    net, optim, trainable = model(mode)
    ids = torch.randint(0, 30522, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    labels = torch.randint(0, CLASSES, (BATCH,))
    times = []
    for step in range(WARMUP + STEPS):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(net(ids, mask), labels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times), trainable


def median_forward(mode, runs=10):
    net, _, _ = model(mode)
    net.eval()
    ids = torch.randint(0, 30522, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    times = []
    with torch.no_grad():
        for run in range(runs + 2):
            start = time.perf_counter()
            net(ids, mask)
            if run >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


# (count, batch, m, k, n) per layer, as FROZEN_ENCODER_MATMULS in benches/minilm_train_step.rs.
FROZEN_ENCODER_MATMULS = [(8, 1, 1024, 384, 384), (2, 1, 1024, 384, 1536), (2, 1, 1024, 1536, 384),
                          (2, 192, 64, 32, 64), (4, 192, 64, 64, 32)]


def median_matmuls(layers=6, runs=10):
    operands = [(torch.rand(b, m, k), torch.rand(b, k, n))
                for count, b, m, k, n in FROZEN_ENCODER_MATMULS for _ in range(count)]
    times = []
    with torch.no_grad():
        for run in range(runs + 2):
            start = time.perf_counter()
            for _ in range(layers):
                for x, y in operands:
                    torch.matmul(x, y)
            if run >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
MODES = ["full", "lora", "dora"]
for r in range(rounds):
    order = MODES[r % 3:] + MODES[:r % 3]
    results = {mode: median_step(mode) for mode in order}
    forward = {mode: median_forward(mode) for mode in (["lora", "dora"] if r % 2 == 0 else ["dora", "lora"])}
    print(f"round {r}: " + ", ".join(
        f"{m} {results[m][0] * 1e3:.0f} ms ({results[m][1]} trainable)" for m in MODES)
        + f", dora/lora step {results['dora'][0] / results['lora'][0]:.2f}"
        + f"; eval forward lora {forward['lora'] * 1e3:.0f} ms, dora {forward['dora'] * 1e3:.0f} ms"
        + f" ({forward['dora'] / forward['lora']:.2f})"
        + f", frozen-encoder matmuls of the LoRA step {median_matmuls() * 1e3:.0f} ms")
