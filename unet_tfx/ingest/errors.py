"""The one error ingestion raises for bad input or a bad output location."""


class IngestError(ValueError):
    """Bad input: the message names the file (or folder) and what was expected."""
