"""The data owner of a two-party secure run: `secinfer party --role data-owner` as a script.

Run it in its own terminal (or on its own host), with the same --rendezvous as the others:
    python examples/two_party/data_owner.py --rendezvous tcp://127.0.0.1:29500 ...
Every option of `secinfer party --help` applies.
"""

import sys

from secinfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["party", "--role", "data-owner", *sys.argv[1:]]))
