"""``python -m pruning <command>``: see :mod:`pruning.cli`."""

import signal
import sys

from pruning.cli import main

if __name__ == "__main__":
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: Ctrl-C during shutdown prints nothing
    sys.exit(code)
