"""The package version, in one place: ``pyproject.toml`` reads it (setuptools ``dynamic``), the package and the
run folders' provenance import it from here."""
__version__ = "0.1.0"
