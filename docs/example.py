"""Fast Forward in a hand-written LoRA training loop, end to end (about 30 s on a laptop CPU).

The model is the repository's byte-level Pythia-architecture model, pretrained on a dictionary
(``benchmarks/checkpoints``); the text is fortune cookies (``benchmarks/data``). Run it from the
repository root after ``pip install -e ".[bench]"``::

    python docs/example.py

README.md's Quickstart is an excerpt of this file (``tests/test_example.py`` checks both).
"""

import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from benchmarks import lm  # the pretrained model, its fortune-cookie data and its loss
from fastforward import FastForward, validation_closure

torch.manual_seed(0)
lora = LoraConfig(target_modules=["query_key_value"], r=8)
model = get_peft_model(lm.load_pretrained(), lora)
splits = lm.finetune_splits(n_test=256)  # disjoint train / test / 32 validation examples
loader = torch.utils.data.DataLoader(splits.train[:1024], batch_size=64, shuffle=True)
print(f"test loss before: {lm.evaluate(model, splits.test):.4f} nats/byte")

adam = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
val_loss = validation_closure(model, [splits.val], loss_fn=lm.lm_loss)  # 32 held-out examples
optimizer = FastForward(adam, model, val_loss, interval=6)  # <- the one new line
model.train()
for _epoch in range(2):
    for batch in loader:
        lm.lm_loss(model, batch).backward()
        optimizer.step()  # an ordinary step; every 6th is followed by a Fast Forward stage
        optimizer.zero_grad()
print(optimizer.stats)  # steps, stages, simulated steps, validation passes, seconds
print(f"test loss after: {lm.evaluate(model, splits.test):.4f} nats/byte")
