"""`python -m seqtrain train ...` (also what `accelerate launch -m seqtrain` and torchrun run)."""

from seqtrain.cli import main

if __name__ == "__main__":
    main()
