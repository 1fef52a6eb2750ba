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


def shortened(text: str, limit: int = 40) -> str:
    """A string from outside (a message's encoding or format, a camera's distortion model) as an error quotes
    it: a long one cut (errors are logged and put into /diagnostics: a 200 kB field must not be, every second)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
