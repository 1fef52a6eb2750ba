"""The package's own error types: everything the core raises on purpose derives from CgrpError."""


class CgrpError(Exception):
    """Base class of every error the core raises deliberately."""


class InputError(CgrpError, ValueError):
    """An input image (or message) cannot be processed: bad shape, dtype, size or content."""


class ModelLoadError(CgrpError):
    """A model file is missing, unreadable or does not match the network it should hold."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load model '{self.path}': {reason}")


class BackendError(CgrpError):
    """A requested backend or device is not available."""
