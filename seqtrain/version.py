"""The one place seqtrain's version is written: the package metadata (pyproject), exports and
the data generator's manifests read it from here."""

__version__ = "0.1.0"
