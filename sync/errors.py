"""One error hierarchy for sync and publish; each error knows the process exit code it maps to.

Exit codes follow sysexits(3) so supervisord logs and shell scripts can tell "fix your config"
from "the bucket is down".
"""

from __future__ import annotations

EX_SOFTWARE = 70
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_CONFIG = 78
EX_CANTCREAT = 73
EX_TEMPFAIL = 75


class SyncError(Exception):
    """Base of every error sync and publish raise on purpose."""

    exit_code = EX_SOFTWARE
    code = "sync_error"


class ConfigError(SyncError):
    """A setting is missing or malformed."""

    exit_code = EX_CONFIG
    code = "config"


class AlreadyRunning(SyncError):
    """Another sync process owns this model repository."""

    exit_code = EX_TEMPFAIL
    code = "already_running"


class SourceUnavailable(SyncError):
    """The bucket (or S3 endpoint) cannot be reached."""

    exit_code = EX_UNAVAILABLE
    code = "source_unavailable"


class CredentialsError(SyncError):
    """The bucket refused our credentials."""

    exit_code = EX_NOPERM
    code = "credentials"


class BucketNotFound(SyncError):
    """The configured bucket does not exist."""

    exit_code = EX_CONFIG
    code = "no_such_bucket"


class SourceError(SyncError):
    """Any other failure talking to the source."""

    exit_code = EX_UNAVAILABLE
    code = "source_error"


class VersionError(SyncError):
    """One version could not be installed (bad marker, checksum mismatch, missing files).

    Never fatal for the process: the version is skipped and the previous one keeps serving.
    """

    code = "version"


class ChecksumMismatch(VersionError):
    """A downloaded file's SHA-256 differs from the completion marker's, after retries."""

    code = "checksum_mismatch"


class ManifestError(SyncError):
    """A model manifest (dynoserve-model.json) is malformed, or a `make labels` change to one.

    The schema raises its own modelrepo.manifest.ManifestError (a ValueError): a sync pass notes
    it as the model's problem and the model keeps its last state; sync/manifest_store.py, which
    `make labels` and `make publish` read through, raises this in its place, same message.
    """

    exit_code = EX_CONFIG
    code = "manifest"


class PublishError(SyncError):
    """`make publish` cannot go ahead (nothing to publish, already published, ...)."""

    exit_code = EX_CANTCREAT
    code = "publish"


class LabelsError(SyncError):
    """A manifest change that would not serve what it names (a label on an unpublished or
    unserved version); nothing is written."""

    exit_code = EX_DATAERR
    code = "labels"
