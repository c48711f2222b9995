"""`trtrefit operator`: run the controller (kopf) against a cluster."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from trtrefit.logs import add_log_format_argument, restyle

DEFAULT_METRICS_PORT = 8080


def add_operator_parser(subparsers: Any) -> None:
    """Register `operator` on the `trtrefit` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the TRTModel controller",
        description=(
            "Watch TRTModels and keep their serving Deployments on verified refits. The refit Job's image "
            "defaults to $TRTREFIT_WORKER_IMAGE."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", dest="namespaces", metavar="NS", help="watch NS (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="Prometheus /metrics port; 0 turns it off",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument(
        "--worker-image", help="refit Job image when a TRTModel sets none ($TRTREFIT_WORKER_IMAGE)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_log_format_argument(parser)
    parser.set_defaults(func=run_operator)


def _api_client(kubeconfig: Path | None) -> Any:
    from kubernetes import client, config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException:
        return config.new_client_from_config()


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    from trtrefit.controller import handlers  # registers every handler with kopf
    from trtrefit.controller.config import OperatorConfig
    from trtrefit.controller.handlers import configure
    from trtrefit.controller.kube import Cluster
    from trtrefit.controller.runtime import Runtime

    json_logs = args.log_format == "json"
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    if json_logs:
        restyle("json")  # kopf's JSON lines with the worker's and server's keys (time, level, logger)
    if args.kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(args.kubeconfig)  # for kopf's own login, the same credentials as ours
    try:
        config = OperatorConfig.from_env(os.environ)
    except ValueError as exc:
        logging.getLogger(__name__).error(f"trtrefit operator: {exc}")
        return 2
    if args.worker_image:
        config = dataclasses.replace(config, worker_image=args.worker_image)
    config = dataclasses.replace(config, log_format=args.log_format)
    api = _api_client(args.kubeconfig)
    runtime = Runtime(cluster=Cluster(api), config=config)
    if args.metrics_port:
        runtime.metrics.serve(args.metrics_port)
    settings = kopf.OperatorSettings()
    configure(settings)
    logging.getLogger(__name__).info(
        "trtrefit operator: %s, worker image %s, handlers from %s",
        f"namespaces {', '.join(args.namespaces)}" if args.namespaces else "all namespaces",
        config.worker_image or "(per TRTModel)",
        handlers.__name__,
    )
    try:
        kopf.run(
            settings=settings,
            memo=kopf.Memo(runtime=runtime),
            clusterwide=not args.namespaces,
            namespaces=args.namespaces or (),
            liveness_endpoint=args.liveness,
        )
    finally:
        api.close()
    return 0
