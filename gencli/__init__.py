"""gencli: generate text with GPT-2 and see how generation works inside."""

import os
import signal
import sys

__version__ = "0.1.0"


def quit_while_starting(signal_number: int, frame: object) -> None:
    """Ctrl-C while gencli starts (imports, loading the model): nothing is generated yet, so the
    process ends at once, 130 and no traceback; a Ctrl-C raised inside an import could otherwise
    surface as that import's error. The start-up spinner's line is cleared and the cursor shown."""
    if os.isatty(2):
        os.write(2, b"\r\x1b[2K\x1b[?25h")
    os._exit(130)


# Run as the program (the `gencli` script, `python -m gencli`): from the first import on. The
# command's start-up ends it (gencli.cli.edge.end_of_start_up): Ctrl-C then stops the work and
# keeps what it made.
if sys.argv and (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]) == "gencli"):
    signal.signal(signal.SIGINT, quit_while_starting)
