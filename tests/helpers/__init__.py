"""Builders shared by several test files, one module per subject.

Test files import these (`from helpers.cli import secinfer_here`) and never another test
file. `helpers` is importable because pytest puts `tests/` on `sys.path` for the
rootdir-less `tests/conftest.py` (the default "prepend" import mode), in the main process
and in every xdist worker alike.
"""
