"""The one exception a user sees as a line instead of a traceback, and the check of flags' ranges."""


class UserError(Exception):
    """What the user can fix (missing data, bad flag, unusable checkpoint) or a saved stop: one line, exit `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code  # 2 (bad input), 1 (a failed write), 0 (nothing to do), or 128 + the signal


def refuse_out_of_range(args, lowest: dict):
    """UserError naming the first flag below its lowest value ({Args field: lowest})."""
    for name, least in lowest.items():
        value = getattr(args, name)
        if value < least:
            raise UserError(f"--{name.replace('_', '-')} {value} is out of range (at least {least:g}).")
