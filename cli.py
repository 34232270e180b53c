"""The `interp` command (entry point `interp = "cli:main"`); the commands are in `interp.cli`."""

from interp.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
