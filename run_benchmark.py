#!/usr/bin/env python
"""Run the vqbench suite: ``python run_benchmark.py --help`` for the options."""
import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
