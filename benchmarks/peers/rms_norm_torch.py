#!/usr/bin/env python3
"""PyTorch peer for the RMSNorm benchmark: the T5/OpenMoE RMSNorm as Hugging Face writes it
(upcast to float32, mean of squares, rsqrt, weight multiply), eager and torch.compile'd, float32,
on the same shapes as //benchmarks:rms_norm_benchmark. Prints GB/s (read x + w, write y).

    python3 benchmarks/peers/rms_norm_torch.py [--device cuda]
"""
import argparse

import torch


def rms_norm(x, w, eps=1e-6):
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


def bench(fn, x, w, iters):
    for _ in range(10):
        fn(x, w)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(x, w)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(12345)
    compiled = torch.compile(rms_norm)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for rows, hidden in [(2048, 768), (2048, 2048), (2048, 3072), (19, 111)]:
        x = torch.rand(rows, hidden, device=args.device) * 2 - 1
        w = torch.rand(hidden, device=args.device) + 0.5
        nbytes = (2 * rows * hidden + hidden) * 4
        for name, fn in [("eager", rms_norm), ("compile", compiled)]:
            seconds = bench(fn, x, w, args.iters)
            print(f"RmsNorm/torch_{name}/T:{rows}/H:{hidden}  {seconds * 1e6:9.2f} us  "
                  f"{nbytes / seconds / 1e9:8.2f} GB/s")


if __name__ == "__main__":
    main()
