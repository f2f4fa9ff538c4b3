"""The errors a user can cause and fix: a config key or value, a data file, a path, a checkpoint,
a workdir in use. The command line prints them as one line (no traceback) and exits with
status 2; everything else is a bug and keeps its traceback."""


class UserError(ValueError):
    """A mistake in the user's input; the message names the key, file and line, or path, and
    what to do. A ValueError, so callers that catch bad values keep working."""


class MissingPath(UserError, FileNotFoundError):
    """A path or model name that names nothing usable (no directory, no config.json, a hub id that
    cannot be fetched); still a FileNotFoundError for callers that catch one."""
