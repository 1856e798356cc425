"""What the tools in tools/ share: user errors as one ``error: ...`` line with exit code 2,
and input checks that run before anything slow (loading CLIP, building a detector).

A mistake in an argument (a missing file, a bad config key, a bad vocabulary) should cost
the user a second and one line naming the problem, not a minute and a traceback.
``POMP_DEBUG=1`` keeps the traceback for developers.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional

from .errors import UserError

EXIT_USER_ERROR = 2  # argparse's code for a bad command line

# What the libraries raise for bad input: missing files, bad values, unknown config keys.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError)


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (KeyError's repr quotes are dropped)."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    return "error: " + " ".join(str(msg).split())


def _argparse_error(parser: argparse.ArgumentParser, message: str) -> None:
    raise UserError(f"{message} (see {parser.prog} --help)")


def run_tool(main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a tool's ``main``; a user error prints one line on stderr and exits with code 2.

    argparse's own errors (usage block, then ``prog: error: ...``) take the same one-line form."""
    default_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error
    try:
        return main(*args, **kwargs)
    except USER_ERRORS as err:
        if os.environ.get("POMP_DEBUG"):
            raise
        print(error_line(err), file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    finally:
        argparse.ArgumentParser.error = default_error


def require_file(path: Optional[str | os.PathLike], what: str, hint: str = "") -> None:
    """Raise FileNotFoundError naming ``what`` unless ``path`` is an existing file."""
    if path is None or not os.path.isfile(path):
        kind = "is a folder, not a file" if path and os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"{what} '{path}' {kind}{'; ' + hint if hint else ''}")


def check_clip_args(model: str, pretrained: Optional[str]) -> None:
    """Check --model and --pretrained without loading anything: a known architecture, and an
    existing file or a tag open_clip knows for it (the download itself comes later)."""
    import open_clip

    from .clip_loader import is_local_path, resolve_model_name

    resolve_model_name(model)  # unknown names raise with close matches
    if not pretrained:
        return
    if is_local_path(pretrained):
        require_file(pretrained, "--pretrained checkpoint",
                     f"or give an open_clip tag such as {open_clip.list_pretrained_tags_by_model(model)[:3]}")
    elif not open_clip.get_pretrained_cfg(model, pretrained):
        raise ValueError(f"--pretrained '{pretrained}' is neither a file nor a tag of {model}; its tags: "
                         f"{open_clip.list_pretrained_tags_by_model(model) or 'none (pass a local file)'}")
