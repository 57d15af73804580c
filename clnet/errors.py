"""Every error clnet raises for something a user can fix, each saying what to do."""


class ClnetError(Exception):
    """Base of all clnet errors; the CLI prints these as one line."""


class DeviceNotFoundError(ClnetError):
    """No OpenCL device matches the request (or there is no OpenCL at all)."""


class KernelBuildError(ClnetError):
    """An OpenCL program failed to build; carries the file, options and build log."""

    def __init__(self, filename, options, log):
        self.filename, self.options, self.log = filename, list(options), log
        super().__init__(
            f"OpenCL build of {filename} failed (options: {' '.join(self.options) or 'none'}).\n"
            f"Build log:\n{log.strip() or '(empty)'}\n"
            "This is a clnet or driver bug: please report it with the log above, "
            "and try another device with --platform/--device meanwhile.")


class OutOfDeviceMemoryError(ClnetError):
    """The plan for a batch size does not fit the device."""


class ShapeError(ClnetError, ValueError):
    """A layer got an input of the wrong shape, or weights of the wrong shape were loaded."""


class InputError(ClnetError, ValueError):
    """Training or evaluation data that cannot be used: NaN, labels out of range, wrong lengths."""


class DatasetError(ClnetError):
    """A dataset file is missing or corrupt."""


class ModelFileError(ClnetError):
    """A model or checkpoint file that cannot be read or written: missing, truncated, corrupt, not a
    clnet file, of a newer format version, or with an architecture or weights that do not fit.
    `path` is the file and `problem` says what is wrong."""

    def __init__(self, path, problem):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class TrainingError(ClnetError):
    """Training cannot go on: the loss became NaN or infinite."""
