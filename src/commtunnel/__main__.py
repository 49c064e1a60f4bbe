"""``python -m commtunnel``: the same as the ``commtunnel`` command."""

from commtunnel.cli import main

if __name__ == "__main__":
    main(prog_name="commtunnel")
