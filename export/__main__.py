"""`python -m export <checkpoint> --name N ...`: see export/cli.py and docs/export.md."""

from export.cli import run

if __name__ == "__main__":
    run()
