"""The project's error model: every error a user can cause or fix is a :class:`SpineDflError`.

The command line prints such an error as one line ``error: <message>`` and exits with the error's
``exit_code`` (2: bad input or usage); anything else that escapes is a bug (traceback, exit 1).
Lives in ``io``, the bottom layer, so every package can raise these without an import cycle.
Each package's own errors (``ManifestError``, ``ScoreError``, ...) subclass one of the kinds here;
many keep ``ValueError`` as a second base because library callers catch it.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BUG", "EXIT_INPUTS_FAILED", "EXIT_OK", "EXIT_USAGE",
    "CheckpointError", "ConfigError", "InputError", "InputsFailed", "RefusedFile", "SpineDflError",
    "UnavailableError",
]

# The exit statuses of every command (documented in ``spine-dfl --help``).
EXIT_OK = 0             # done
EXIT_BUG = 1            # an internal error: a traceback to report
EXIT_USAGE = 2          # bad input, config, checkpoint or usage: nothing (or nothing new) was done
EXIT_INPUTS_FAILED = 3  # finished, but some inputs (or all) gave no result; each is listed with its reason


class SpineDflError(Exception):
    """An error the user can act on; its message is complete (names the file, row or option)."""

    exit_code: int = EXIT_USAGE


class InputError(SpineDflError, ValueError):
    """Bad input: a missing or malformed file, table or argument (manifest, ROI table, CT, option).

    Also a ValueError, for library callers that catch one; the command line catches SpineDflError.
    """


class ConfigError(InputError):
    """A config file or override is invalid; the message names the file/key and the problem."""


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable or not a spine-dfl checkpoint of the right kind."""


class RefusedFile(InputError):
    """A file that is readable but refused (not a projection radiograph, not spooled); the message says why."""


class UnavailableError(SpineDflError):
    """Something the run needs is not available here: a device, local weights, a port, a peer."""


class InputsFailed(SpineDflError):
    """A run finished but none of its inputs gave a result (each failure is listed with its reason)."""

    exit_code = EXIT_INPUTS_FAILED
