"""``python -m p2pay``: the command line (same as the ``p2pay`` console script)."""

from p2pay.cli.main import main

if __name__ == "__main__":
    main()
