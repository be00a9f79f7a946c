"""The one base class of the errors adaprefix raises on purpose.

Every error the library raises about its input (a bad config, a bad adapter file, bad data, a run folder in the
way, an unsupported model) subclasses :class:`AdaprefixError`, so a caller (the CLI among them) can tell "adaprefix
refused this, and the message says why" from a bug with a single ``except``. Subclasses keep the builtin they always
were (``ValueError``, ``FileNotFoundError``, ...) as a second base, so existing ``except ValueError`` code still works.
"""

from __future__ import annotations


class AdaprefixError(Exception):
    """Base of every deliberate adaprefix error; the message names the bad input and the way out."""

    exit_code = 2  # what the command line exits with; 75 (EX_TEMPFAIL) where trying again later can succeed
