"""kopf's settings for this operator: its bookkeeping lives under our own prefix, and only our explicit
Events reach the TRTModels (not kopf's log lines)."""

from __future__ import annotations

import kopf

from trtrefit.controller.naming import FINALIZER, PREFIX

# Seconds. The API server ends each watch after the first (an integer: it is the timeoutSeconds query
# parameter), so watches never go stale; the client gives up a little later.
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330


def configure(settings: kopf.OperatorSettings) -> None:
    """Apply the operator's settings to kopf's, in place (kopf owns the object)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = True  # our kopf.event() calls: RefitStarted, VerificationFailed, ...
    settings.posting.loggers = False  # not every kopf log line
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.peering.standalone = True  # one replica at a time; no KopfPeering objects needed
