"""The benchmark of clnet against PyTorch: a wrapper of clnet.bench (also the `clnet-bench` command).

    python scripts/bench.py --platform pocl --models mlp --batch-sizes 128 1024 --json bench.json
"""

from clnet.bench import main

if __name__ == "__main__":
    main(prog_name="clnet-bench")
