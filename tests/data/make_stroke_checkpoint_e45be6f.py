"""Written once with main's code (e45be6f) to pin that stroke checkpoints from before the domain
abstraction still load: a tiny model + a fixed batch and its NLL."""
import numpy as np, torch
from tinydot.config import ModelConfig
from tinydot.checkpoint import save_model, save_tensors
from tinydot.data.batching import make_inputs, IGNORE
from tinydot.training import init_model

cfg = ModelConfig(n_layers=1, d_model=8, d_mlp=16)
model = init_model(cfg, seed=7)
rng = np.random.default_rng(0)
B, T = 3, 6
moves = torch.from_numpy(np.stack([rng.integers(-3, 4, (B, T)), rng.integers(-3, 4, (B, T)),
                                   rng.integers(0, 3, (B, T))], -1).astype(np.int64))
moves[2, 4:, 2] = IGNORE
labels = torch.tensor([1, 5, 9])
inputs = make_inputs(moves, cfg.max_move)
with torch.no_grad():
    nll = model.nll(inputs, labels, moves)
save_model("tests/data/stroke-checkpoint-e45be6f.safetensors", model, extra={"commit": "e45be6f"})
save_tensors("tests/data/stroke-checkpoint-e45be6f-batch.safetensors",
             {"inputs": inputs, "labels": labels, "targets": moves, "nll": nll})
print(nll, list(model.state_dict())[:5])
