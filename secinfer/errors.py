"""The errors the CLI prints as one line, never a traceback: the user's to fix (exit 2), a
failed secure run (exit 1), and a launcher stopped by a signal (exit 128 + the signal)."""


class UserError(Exception):
    """A problem with the user's file, flag or input; the message names it and the fix.

    Messages are one line. The CLI prints `error: <message>` on stderr, no traceback,
    and exits with status 2.
    """


class PartyError(Exception):
    """A secure run failed for a reason outside the user's files: a peer that never
    connected, vanished or timed out. The CLI prints one line and exits with status 1."""


class Interrupted(BaseException):
    """A launcher was asked to stop (SIGTERM, SIGINT or SIGHUP) and has stopped its parties
    and removed its temporary folders (`secinfer.backends.processes`). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way up swallows it. The CLI
    prints one line and exits with `exit_code` (128 + the signal number, the shell's
    convention for a process ended by a signal)."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
