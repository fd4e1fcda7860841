"""Training entry point: `python -m alexnet.train` (not built yet)."""
import sys


def main(argv=None) -> int:
    print("alexnet.train: training is not built yet (the model, data and training issues are open);\n"
          "the Triton kernels are usable now: see README.md and `python -m pytest`.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
