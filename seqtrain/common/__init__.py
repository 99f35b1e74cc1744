"""The floor every other part stands on, torch-free: errors, atomic writes, storage URLs,
CLI parsing, stop signals. It imports nothing else from seqtrain; `data_gen` shares it."""
