"""`python -m data_gen ...` is `seqtrain-data ...`."""

from data_gen.cli import main

main()
