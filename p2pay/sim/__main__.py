"""``python -m p2pay.sim SCENARIO [--out DIR] [--seed N] [--transport memory|libp2p]``."""

from p2pay.sim.cli import main

if __name__ == "__main__":
    main()
