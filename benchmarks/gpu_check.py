"""The prepared GPU check (`make gpu-check`): on one GPU, in under 8 minutes, run

1. the GPU-marked tests (`pytest -m gpu`: AMP, torch.compile, device augmentation),
2. every torch driver's quick profile with `--device cuda`,
3. the ResNet-18 throughput benchmark with and without AMP and channels_last,

and write what each printed and how it ended to one JSON file (default
runs/gpu_check.json). `--device cpu` runs the same steps on the CPU (without the GPU
tests), to try the script where no GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from assignments import catalogue  # noqa: E402
from minidl.fileio import write_atomic  # noqa: E402


def step(name, command, timeout):
    """Run one command; its exit status, seconds and the end of its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        status, output = "timeout", f"{error.stdout or ''}{error.stderr or ''}"
    seconds = round(time.perf_counter() - start, 1)
    print(f"{'ok ' if status == 0 else 'FAIL'} {name} ({seconds} s)", flush=True)
    if status != 0:
        print(output[-2000:], flush=True)
    return {"name": name, "command": command, "status": status, "seconds": seconds,
            "output_tail": output[-4000:] if isinstance(output, str) else ""}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a trial run")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for the drivers' runs and the JSON")
    args = parser.parse_args()
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu-check: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    out = Path(args.out)
    python = sys.executable
    steps = []
    if args.device.startswith("cuda"):
        steps.append(step("gpu tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], 240))
    for entry in catalogue():
        if entry["TORCH"]:
            steps.append(step(f"driver {entry['NAME']}", [python, "-m", "assignments", "run", entry["NAME"],
                                                          "--quick", "--device", args.device,
                                                          "--out", str(out / entry["NAME"])], 240))
    bench_json = out / "resnet_throughput.json"
    steps.append(step("resnet throughput", [python, "benchmarks/bench_resnet_throughput.py", "--device",
                                            args.device, "--json", str(bench_json)], 240))
    result = {"device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "passed": all(s["status"] == 0 for s in steps), "steps": steps,
              "throughput": json.loads(bench_json.read_text()) if bench_json.exists() else None}
    write_atomic(out / "gpu_check.json", json.dumps(result, indent=2))
    print(f"{'passed' if result['passed'] else 'FAILED'}: {out / 'gpu_check.json'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
