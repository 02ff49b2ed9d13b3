"""``python -m callward``: the same command as ``callward``."""

from callward.cli import app

if __name__ == "__main__":
    app()
