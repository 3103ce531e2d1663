"""The two kinds of failure every script reports as one line (cli.args.exit_on_error maps them to exit codes)."""


class UsageError(Exception):
    """The command or its inputs need fixing (a flag, a file, a folder): exit status 2, rank 0 says it."""


class RunError(RuntimeError):
    """The run itself failed (a non-finite loss, a fast path that does not compile): exit status 1."""
