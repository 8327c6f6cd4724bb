"""The README's Python quickstart: a tensorized MLP whose ranks are learned by ARD, in a plain PyTorch loop."""

import sys

import torch
import torch.nn.functional as F

import bayestensor as bt
from bayestensor.data import load_digits_split

epochs = 2 if "--smoke" in sys.argv else 60
x, y, x_test, y_test = load_digits_split()
model = torch.nn.Sequential(
    bt.TensorizedLinear(64, 256, format="ttm", max_rank=10, method="map"),
    torch.nn.ReLU(),
    bt.TensorizedLinear(256, 10, format="ttm", max_rank=10, method="map"),
)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
ard = bt.ARD(model, opt, num_data=len(x), epochs=epochs, kl_weight=0.2)  # 1/N, warm-up, λ updates, pruning
for _ in range(epochs):
    for idx in torch.randperm(len(x)).split(64):
        loss = ard.loss(F.cross_entropy(model(x[idx]), y[idx]))  # task loss + β(t) · prior_loss / N
        opt.zero_grad()
        loss.backward()
        opt.step()  # the λ M-step runs right after each step
    ard.end_epoch()  # prunes on schedule (the same optimizer goes on), warns about collapsed layers
model.eval()
accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
compression = bt.dense_params(model) / bt.count_params(model)
print(f"accuracy {accuracy:.3f}  ranks {bt.ranks(model)}  compression {compression:.1f}x")
