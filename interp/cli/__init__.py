"""The `interp` command line: a thin Typer layer that parses arguments, calls library functions,
and prints. Errors the user can fix exit with one line, no traceback; an unexpected error is one
line pointing to a log file with the traceback.

Commands live in one module each (`models`, `trace` and `demo`, `data`, `behaviour`: run,
cascade and compare, `analysis`: probe and lens, `erase`), registered on `interp.cli.app.app`;
`main` runs the app with the error handling. The top-level `cli.py` is a shim for the
`interp = "cli:main"` entry point.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from interp.cli.app import app
# importing a command module registers its commands, in this order on the help page
from interp.cli import models, trace, data, behaviour, analysis, erase, shards, organisms  # noqa: F401,E402,I001
from interp.cli.display import console
from interp.errors import InterpError

__all__ = ["app", "main"]


RESUMABLE = ("trace", "run", "cascade")


def interrupted_message(argv: list[str]) -> str:
    """What Ctrl-C leaves and the command that continues the work."""
    import shlex

    command = argv[0] if argv else ""
    if command in RESUMABLE:
        if "--overwrite" in argv:
            return ("interrupted; the existing output is unchanged (its replacement was not finished): run the same "
                    "command again to replace it")
        args = [a for a in argv if a != "--resume"] + ["--resume"]
        return f"interrupted; the finished items are kept: resume with `interp {shlex.join(args)}`"
    if command == "erase":
        return "interrupted; erasers already fitted in --out are reused: run the same command again to finish"
    return "interrupted; nothing was left half-written: run the same command again"


def log_unexpected(exc: BaseException) -> Path | None:
    """Write the traceback of an unexpected error to a log file; its path, or None."""
    import os
    import tempfile
    import time
    import traceback

    from interp.version import __version__

    text = (f"interp {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}\ncommand: interp {' '.join(sys.argv[1:])}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    folders = [os.environ.get("INTERP_LOG_DIR"), Path.home() / ".cache" / "interp" / "logs",
               Path(tempfile.gettempdir()) / "interp-logs"]
    for folder in filter(None, folders):
        try:
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"interp-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _warning_printer(original):
    """showwarning that prints interp's warnings as one line each and leaves others as they were."""
    from rich.markup import escape

    from interp.errors import InterpWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InterpWarning):
            console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        else:
            original(message, category, filename, lineno, file, line)

    return show


def main() -> None:
    import os
    import warnings

    from rich.markup import escape

    from interp.errors import InterpWarning, io_error

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # library tqdm bars (e.g. GGUF dequantisation) would break the rich ones
    debug = "--debug" in sys.argv[1:] or os.environ.get("INTERP_DEBUG", "") not in ("", "0")
    sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--debug"]
    argv = sys.argv[1:]

    def fail(message: str, code: int) -> None:
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(code)

    with warnings.catch_warnings():
        warnings.simplefilter("always", InterpWarning)
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            code = app(standalone_mode=False)
        except InterpError as e:
            fail(str(e), 2)
        except (KeyboardInterrupt, typer.Abort):
            code = 130
        except OSError as e:
            err = io_error(e, e.filename or Path.cwd(), resumable=bool(argv) and argv[0] in RESUMABLE)
            if isinstance(err, InterpError):
                fail(str(err), 2)
            _unexpected(e, debug)
        except Exception as e:
            kinds = {k.__name__ for k in type(e).__mro__}
            if "NoArgsIsHelpError" in kinds:  # plain `interp` or `interp data`: the help
                e.show()
                sys.exit(getattr(e, "exit_code", 2))
            if "ClickException" in kinds:  # a usage error found by the argument parser
                where = getattr(getattr(e, "ctx", None), "command_path", None) or "interp"
                fail(f"{e.format_message()} (see `{where} --help`)", getattr(e, "exit_code", 2))
            _unexpected(e, debug)
    if code == 130:  # Typer turns Ctrl-C into exit code 130
        console.print(f"[yellow]{escape(interrupted_message(argv))}[/]", highlight=False, soft_wrap=True)
        sys.exit(130)
    if code:
        sys.exit(code)


def _unexpected(e: BaseException, debug: bool) -> None:
    import traceback

    from rich.markup import escape

    log = log_unexpected(e)
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    first = (str(e).strip().splitlines() or [""])[0]
    where = f"the traceback is in {log}" if log else "no log file could be written"
    hint = "" if debug else "; rerun with --debug to see it"
    console.print(f"[bold red]error:[/] {escape(f'unexpected {type(e).__name__}: {first} ({where}{hint}; please report it)')}",
                  highlight=False, soft_wrap=True)
    sys.exit(1)
