"""Train a small MLP on synthetic data on the GPU (CPU fallback), deterministically, and write metrics.

No download at run time: the data is generated from the seed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("ENVLOCK_OUTPUT_DIR", "out")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("ENVLOCK_SEED", "0")))
    parser.add_argument("--steps", type=int, default=200)
    # For comparison only (scripts/gpu-check.sh): what the same training gives when GPU kernels may be nondeterministic.
    parser.add_argument("--nondeterministic", action="store_true", help="allow nondeterministic GPU kernels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if not args.nondeterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(4096, 32, generator=generator)
    weights = torch.randn(32, 1, generator=generator)
    labels = (inputs @ weights + 0.1 * torch.randn(4096, 1, generator=generator) > 0).float()
    inputs, labels = inputs.to(device), labels.to(device)

    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = ((model(inputs) > 0).float() == labels).float().mean().item()
    metrics = {
        "loss": round(loss.item(), 6),
        "accuracy": round(accuracy, 6),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "seed": args.seed,
        "deterministic": not args.nondeterministic,
    }
    torch.save(model.state_dict(), args.out / "model.pt")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
