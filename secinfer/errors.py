"""Errors that are the user's to fix: the CLI prints them as one line and exits with 2."""


class UserError(Exception):
    """A problem with the user's file, flag or input; the message names it and the fix.

    Messages are one line. The CLI prints `error: <message>` on stderr, no traceback,
    and exits with status 2.
    """


class PartyError(Exception):
    """A secure run failed for a reason outside the user's files: a peer that never
    connected, vanished or timed out. The CLI prints one line and exits with status 1."""
