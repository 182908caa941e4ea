"""``python -m ndformer``: the command line."""

from ndformer.cli import main

if __name__ == "__main__":
    main()
