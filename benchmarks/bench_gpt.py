"""The character GPT of ``reference_torch.gpt`` (gpt-micro: 4 layers, 4 heads, 128
dimensions, 65 characters, block 64 by default): training tokens per second with the
attention written out and through ``F.scaled_dot_product_attention``, and generation
tokens per second with and without the key/value cache, on the CPU with a stated
number of threads (or on the GPU with --device cuda).

    .venv/bin/python benchmarks/bench_gpt.py                  # 1 thread, block 64
    .venv/bin/python benchmarks/bench_gpt.py --block-size 256 --threads 2

Times are medians of interleaved blocks, in wall-clock and process CPU seconds (CPU
time counts every thread's work: on a machine shared with other jobs it moves less
than wall time does). The generated tokens must be the same with and without the
cache, and the two attentions give the same first loss, or the benchmark stops.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from reference_torch.gpt import GPT  # noqa: E402


def build(model_type, vocab_size, block_size, fused, device, seed=0):
    config = GPT.get_default_config()
    config.model_type, config.vocab_size, config.block_size = model_type, vocab_size, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.use_flash_attn = fused
    torch.manual_seed(seed)
    return GPT(config).to(device)


def train_step_fn(model, batch, block_size, vocab_size, device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch, block_size), generator=g).to(device)
    y = torch.randint(0, vocab_size, (batch, block_size), generator=g).to(device)

    def step():
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def timed(fn, repeats):
    """Seconds of one call: wall and process CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--model-type", default="gpt-micro", help="gpt-nano, gpt-micro or gpt-mini")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=12, help="training batch (nanoGPT's CPU recipe: 12)")
    parser.add_argument("--vocab-size", type=int, default=65, help="65: tiny Shakespeare's characters")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per variant")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # training: the same weights and batch through both attentions
    models = {name: build(args.model_type, args.vocab_size, args.block_size, name == "fused", device)
              for name in ("written", "fused")}
    steps = {name: train_step_fn(m, args.batch_size, args.block_size, args.vocab_size, device)
             for name, m in models.items()}
    first = {name: step() for name, step in steps.items()}
    if abs(first["written"] - first["fused"]) > 1e-4 * abs(first["written"]):
        raise SystemExit(f"the two attentions disagree on the first loss: {first}")
    train = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved, so that drifting load hits both alike
        for name, step in steps.items():
            train[name].append(timed(lambda: [step() for _ in range(args.steps)], 1))
    tokens_per_step = args.batch_size * args.block_size

    # generation: one sequence, one block from a one-token prompt, greedy
    model = models["fused"].eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    new = args.block_size - 1
    same = torch.equal(model.generate(prompt, new, use_cache=True), model.generate(prompt, new, use_cache=False))
    if not same:
        raise SystemExit("generation with and without the cache gave different tokens")
    generate = {"cached": [], "uncached": []}
    for _ in range(args.repeats):
        for name in generate:
            generate[name].append(timed(lambda: model.generate(prompt, new, use_cache=name == "cached"), 1))

    def rate(samples, count, which):
        return count / statistics.median(s[which] for s in samples)

    results = {
        "threads": args.threads, "device": str(device), "model_type": args.model_type, "block_size": args.block_size,
        "batch_size": args.batch_size,
        "train_tokens_per_second": {n: rate(t, args.steps * tokens_per_step, 0) for n, t in train.items()},
        "train_tokens_per_cpu_second": {n: rate(t, args.steps * tokens_per_step, 1) for n, t in train.items()},
        "generate_tokens_per_second": {n: rate(t, new, 0) for n, t in generate.items()},
        "generate_tokens_per_cpu_second": {n: rate(t, new, 1) for n, t in generate.items()},
    }
    print(f"{args.model_type} ({sum(p.numel() for p in model.parameters()):,} parameters), vocabulary "
          f"{args.vocab_size}, block {args.block_size}, float32, {args.device}, {args.threads} torch thread(s)")
    print(f"python {platform.python_version()}, torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"medians of {args.repeats} blocks")
    print(f"training, batch {args.batch_size} (tokens/s wall | per CPU second):")
    for name in train:
        print(f"  {name:8s} attention {results['train_tokens_per_second'][name]:10,.0f} | "
              f"{results['train_tokens_per_cpu_second'][name]:10,.0f}")
    print(f"generation of {new} tokens, batch 1 (tokens/s wall | per CPU second):")
    for name in generate:
        print(f"  {name:8s}           {results['generate_tokens_per_second'][name]:10,.0f} | "
              f"{results['generate_tokens_per_cpu_second'][name]:10,.0f}")
    speedup = results["generate_tokens_per_cpu_second"]["cached"] / results["generate_tokens_per_cpu_second"]["uncached"]
    fused = results["train_tokens_per_cpu_second"]["fused"] / results["train_tokens_per_cpu_second"]["written"]
    print(f"fused / written training: {fused:.2f}x; cached / uncached generation: {speedup:.2f}x (CPU time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
