"""The autotuner of clnet's GEMM kernels: a wrapper of clnet.tune (also the `clnet-tune` command).

    python scripts/tune.py --platform nvidia
"""

from clnet.tune import main

if __name__ == "__main__":
    main(prog_name="clnet-tune")
