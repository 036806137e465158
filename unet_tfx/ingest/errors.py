"""The one error ingestion raises for bad input or a bad output location."""


class IngestError(ValueError):
    """Bad input: the message names the file (or folder) and what was expected.

    When a run found several bad examples, `problems` lists every one as (file, reason) and the
    message lists them all; otherwise it is empty.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
