"""The one exception type of the pipeline.

Every failure between an audio file on disk and a cached dataset raises
:class:`PipelineError` with a message that names the file, column or parameter
and the offending value, so that preprocessing can record it per track
("skipped: <reason>") and go on with the rest.
"""


class PipelineError(Exception):
    """Bad audio file, bad metadata or bad parameter in ``pipeline/``.

    Subclasses :class:`Exception` (not ``ValueError``) so that callers can
    tell a per-track data fault, which preprocessing records and skips, from
    a programming error.
    """
