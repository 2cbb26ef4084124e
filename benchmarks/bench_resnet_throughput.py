"""ResNet-18 (CIFAR stem, 32x32 images) training throughput in images per second.

Times the Trainer's own training step (forward, backward, optimiser step) on random
data already on the device, with and without mixed precision and channels_last:

    .venv/bin/python benchmarks/bench_resnet_throughput.py              # defaults per device
    .venv/bin/python benchmarks/bench_resnet_throughput.py --steps 50 --batch-size 512 --compile

On the CPU, "AMP" means bfloat16 autocast (no GradScaler); on CUDA it is bfloat16 on
GPUs of compute capability 8+ and float16 with a GradScaler before that.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_torch.models import resnet18  # noqa: E402
from minidl.fileio import write_atomic  # noqa: E402
from reference_torch.train import Trainer, select_device  # noqa: E402


def sync(device: torch.device) -> None:
    """CUDA runs asynchronously: wait for queued kernels before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def throughput(device: torch.device, batch_size: int, steps: int, warmup: int, amp: bool,
               channels_last: bool, compile: bool) -> float:
    torch.manual_seed(0)
    model = resnet18(num_classes=10, cifar_stem=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(model, opt, device=device, amp=amp, channels_last=channels_last, compile=compile,
                      progress=False)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    trainer.train_model.train()
    for _ in range(warmup):  # cuDNN autotuning, compilation, allocator warm-up
        trainer.train_step((x, y))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step((x, y))
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on a GPU, 32 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on a GPU, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 / 1)")
    parser.add_argument("--compile", action="store_true", help="also wrap the model in torch.compile")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()

    device = select_device(args.device)
    gpu = device.type != "cpu"
    batch_size = args.batch_size or (256 if gpu else 32)
    steps = args.steps or (30 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution algorithms
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"ResNet-18 (CIFAR stem), 32x32, batch {batch_size}, {steps} timed steps on {name}"
          f"{', torch.compile' if args.compile else ''}  (torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads)")
    print(f"{'AMP':>5} {'channels_last':>14} {'images/s':>10}")
    base, results = None, []
    for amp in (False, True):
        for channels_last in (False, True):
            ips = throughput(device, batch_size, steps, warmup, amp, channels_last, args.compile)
            base = base or ips
            print(f"{str(amp):>5} {str(channels_last):>14} {ips:>10.1f}   x{ips / base:.2f}", flush=True)
            results.append({"amp": amp, "channels_last": channels_last, "images_per_second": ips})
    if args.json:
        write_atomic(args.json, json.dumps({"device": name, "batch_size": batch_size, "steps": steps,
                                            "compile": args.compile, "torch": torch.__version__,
                                            "results": results}, indent=2))


if __name__ == "__main__":
    main()
