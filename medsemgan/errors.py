"""Errors that reach the user: each names the offending file and the problem."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad user input (a file, folder or option). The CLI prints it and exits non-zero."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
