"""The PyTorch peer of `pipeline train digits_mlp model.hidden=32 batch_size=32 steps=20000`, as a user
would write it: scikit-learn's digits (8x8 in [0, 1]), a 64-32-10 ReLU MLP, Adam at 1e-3, batches of
32 drawn from a per-epoch shuffle, the test split (20%) evaluated every 500 steps. Prints the final
test accuracy. Timed as a whole process by scripts/bench_time_to_result."""

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

STEPS, BATCH, EVAL_EVERY = int(sys.argv[1]) if len(sys.argv) > 1 else 20000, 32, 500

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor((digits.images / 16.0).reshape(-1, 64), dtype=torch.float32)
y = torch.tensor(digits.target, dtype=torch.long)
order = np.random.default_rng(0).permutation(len(x))
n_test = round(0.2 * len(x))
x_test, y_test, x_train, y_train = x[order[:n_test]], y[order[:n_test]], x[order[n_test:]], y[order[n_test:]]

model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
per_epoch = len(x_train) // BATCH
for step in range(STEPS):
    if step % per_epoch == 0:
        perm = torch.randperm(len(x_train))
    idx = perm[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
    loss = loss_fn(model(x_train[idx]), y_train[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if (step + 1) % EVAL_EVERY == 0:
        with torch.no_grad():
            accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
print(f"test accuracy {accuracy:.4f}")
