"""``python -m hbt`` is the same as the ``hbt`` console script (torchrun and accelerate use it)."""
from hbt.cli import main

if __name__ == "__main__":
    main()
