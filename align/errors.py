"""User-facing errors.

Anything the user can fix (a recipe, a dataset, an argument) raises `AlignError`. The CLI turns
it into one paragraph on stderr and exit code 2, with no traceback unless `--debug`.
"""


class AlignError(Exception):
    """A problem in the user's input, explained in words the user can act on."""

    exit_code = 2


def check_counts(options, keys, where: str, prefix: str = "") -> None:
    """Each of `keys` (attributes of `options`, or keys of a mapping, defaulting to 1) is a whole
    number of at least 1: a stage's batch sizes, sample counts and token limits."""
    for key in keys:
        value = options.get(key, 1) if isinstance(options, dict) else getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AlignError(f"{prefix}'{where}.{key}' must be a whole number of at least 1, got "
                             f"{value!r}.")


class DataError(AlignError):
    """A dataset problem; the message names the file, the row (1-based) and the column."""

    def __init__(self, message: str, *, path=None, row=None, column=None):
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.path, self.row, self.column, self.reason = path, row, column, message


class NonFiniteError(AlignError):
    """Training met a non-finite loss, gradient or weight; the last good checkpoint is kept."""
