"""`python -m studio` runs the command-line interface (and, under torchrun, distributed jobs)."""
from studio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
