"""Bytes each rank of the two-column AlexNet exchanges per step: `python -m alexnet.parallel`.

The two-column model itself is alexnet/network/parallel.py.
"""
from __future__ import annotations

import argparse

from alexnet.network.config import AlexNetConfig
from alexnet.network.parallel import exchange_plan, format_plan


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Bytes each rank of the two-column AlexNet exchanges per step.")
    parser.add_argument("--batch-size", type=int, default=128, help="images per replica (paper: 128)")
    parser.add_argument("--replicas", type=int, default=1, help="data-parallel replicas (2 ranks each)")
    parser.add_argument("--element-size", type=int, default=4, help="bytes per value: 4 fp32, 2 bf16")
    args = parser.parse_args(argv)
    plan = exchange_plan(AlexNetConfig(ops="reference"), args.batch_size, args.element_size, args.replicas)
    print(format_plan(plan, args.batch_size))


if __name__ == "__main__":
    main()
