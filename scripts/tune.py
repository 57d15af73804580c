"""The autotuner of clnet's GEMM kernels: a wrapper of clnet.tune (also the `clnet-tune` command).

    python scripts/tune.py --platform nvidia
"""

import sys

from clnet.tune import main

if __name__ == "__main__":
    sys.exit(main())
