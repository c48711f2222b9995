"""Every kopf registration of the operator. Each handler is a trigger for the same level-based pass
(reconcile.reconcile): a spec change, the operator's resume, a periodic resync, a change to a refit Job or to
a serving Deployment. Handlers return nothing, so kopf writes nothing of theirs into status."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, cast

import kopf

from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION
from trtrefit.controller.kube import API_UNREACHABLE
from trtrefit.controller.naming import (
    FINALIZER,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_LABEL,
    PREFIX,
    RETRY_ANNOTATION,
)
from trtrefit.controller.reconcile import (
    InvalidSpecError,
    PassResult,
    delete_refit_jobs,
    reconcile,
    release_deployment,
)
from trtrefit.controller.runtime import Runtime

RESYNC_SECONDS = 60.0  # a safety net: the watches below trigger passes within a second of a change
# Watch-triggered passes are not retried by kopf: a few quick retries (a conflict clears in a second), and
# the resync timer covers what waits longer, so a watch stream is never held up for long.
EVENT_ATTEMPTS = 3
QUICK_RETRY_SECONDS = 2.0
UNREACHABLE_RETRY_SECONDS = 1.0  # the first retry after the API server did not answer; doubled after each
LOGGER = logging.getLogger(__name__)


# Seconds. The API server ends each watch after the first (an integer: it is the timeoutSeconds query
# parameter), so watches never go stale; the client gives up a little later.
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator, in place (kopf owns the object): its bookkeeping lives under our own
    prefix, and only our explicit Events reach the TRTModels (not kopf's log lines)."""
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


def runtime_of(memo: kopf.Memo) -> Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("no Runtime in memo: run the operator with `trtrefit operator`")
    return runtime


async def run_pass(runtime: Runtime, namespace: str, name: str) -> PassResult:
    """One pass under the model's lock; its Events are posted after its status write, then metrics."""
    async with runtime.lock(namespace, name), runtime.metrics.counting_errors(f"{namespace}/{name}"):
        now = runtime.clock()
        result = await asyncio.to_thread(
            reconcile,
            runtime.cluster,
            runtime.config,
            namespace,
            name,
            now,
            pods=runtime.pods,
            clock=runtime.clock,
        )
    if result.reference is not None:
        model = kopf.Body(cast(kopf.RawBody, result.reference))
        for event in result.events:
            kopf.event(model, type=event.type, reason=event.reason, message=event.message)
    runtime.metrics.record(result.finished, f"{namespace}/{name}", now.timestamp())
    runtime.metrics.set_phase(f"{namespace}/{name}", result.phase, result.stalled)
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


async def pass_or_retry(runtime: Runtime, namespace: str, name: str) -> None:
    """For kopf's change handlers and timers: kopf retries the handler after a TemporaryError's delay."""
    try:
        result = await run_pass(runtime, namespace, name)
    except InvalidSpecError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except API_UNREACHABLE as exc:  # else kopf waits its default 60 s before the next try
        delay = runtime.next_delay(namespace, name, UNREACHABLE_RETRY_SECONDS, backoff=True)
        why = f"the API server did not answer ({_first_line(exc)}); again in {delay:g} s"
        raise kopf.TemporaryError(why, delay=delay) from exc
    delay = runtime.next_delay(namespace, name, result.retry_after, backoff=result.backoff)
    if delay is not None:
        raise kopf.TemporaryError(f"{result.retry_reason}; again in {delay:g} s", delay=delay)


async def pass_with_attempts(
    runtime: Runtime, namespace: str, name: str, logger: kopf.Logger | logging.Logger = LOGGER
) -> None:
    """For watch events: a few quick attempts (bounded); a longer wait (a backoff, a scheduled retry) is left
    to a wake-up, so a watch stream is never held up for long."""
    for _ in range(EVENT_ATTEMPTS):
        try:
            result = await run_pass(runtime, namespace, name)
        except InvalidSpecError as exc:
            logger.warning(f"TRTModel {namespace}/{name}: {exc}")
            return
        except API_UNREACHABLE as exc:
            wait = runtime.next_delay(namespace, name, UNREACHABLE_RETRY_SECONDS, backoff=True)
            logger.warning(f"TRTModel {namespace}/{name}: the API server did not answer ({_first_line(exc)})")
            again = wait or UNREACHABLE_RETRY_SECONDS
            runtime.wake_later(namespace, name, again, lambda: pass_with_attempts(runtime, namespace, name))
            return
        delay = runtime.next_delay(namespace, name, result.retry_after, backoff=result.backoff)
        if delay is None:
            return
        if delay > QUICK_RETRY_SECONDS:
            runtime.wake_later(namespace, name, delay, lambda: pass_with_attempts(runtime, namespace, name))
            return
        await asyncio.sleep(delay)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """--kubeconfig (exported as KUBECONFIG by `trtrefit operator`) first, else the pod's ServiceAccount.

    kopf's default login goes through the kubernetes client, whose kubeconfig loader fixes its default path
    when the module is imported, before the command line is read; kopf's own loaders read it when called."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
# `kubectl annotate trtm NAME trtrefit.dev/retry=<new value>`: a failed refit runs once more.
@kopf.on.update(GROUP, VERSION, PLURAL, field=("metadata", "annotations", RETRY_ANNOTATION))
async def model_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    await pass_or_retry(runtime_of(memo), namespace or "", name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    await pass_or_retry(runtime_of(memo), namespace or "", name)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def model_deleted(  # noqa: PLR0917 (kopf passes these by keyword)
    namespace: str | None,
    name: str,
    uid: str,
    spec: kopf.Spec,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    runtime, namespace = runtime_of(memo), namespace or ""
    deployment = str((spec.get("serving") or {}).get("deploymentName") or "")
    async with runtime.lock(namespace, name):
        deleted = await asyncio.to_thread(delete_refit_jobs, runtime.cluster, namespace, uid)
        released = bool(deployment) and await asyncio.to_thread(
            release_deployment, runtime.cluster, namespace, name, deployment
        )
    if deleted:
        logger.info(f"deleted refit Jobs {', '.join(deleted)}")
    if released:
        logger.info(f"released Deployment {deployment}")
    runtime.forget(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY_LABEL: MANAGED_BY, MODEL_LABEL: kopf.PRESENT})
async def refit_job_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    await pass_with_attempts(runtime_of(memo), namespace or "", labels[MODEL_LABEL], logger)


ServingKey = tuple[str | None, str]
ServingIndex = kopf.Index[ServingKey, str]


@kopf.index(GROUP, VERSION, PLURAL)
def serving_deployments(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[ServingKey, str]:
    """Which TRTModels a Deployment serves: (namespace, deployment name) -> model names."""
    return {(namespace, spec["serving"]["deploymentName"]): name}


def is_serving(
    namespace: str | None, name: str, serving_deployments: ServingIndex | None = None, **_: Any
) -> bool:
    return serving_deployments is not None and (namespace, name) in serving_deployments


@kopf.on.event("apps", "v1", "deployments", when=is_serving)
async def serving_deployment_changed(
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    logger: kopf.Logger,
    serving_deployments: ServingIndex | None = None,
    **_: Any,
) -> None:
    models = list(serving_deployments.get((namespace, name), [])) if serving_deployments is not None else []
    for model in models:
        await pass_with_attempts(runtime_of(memo), namespace or "", model, logger)
