"""`spec.refitJob.affinity`: the core/v1 Affinity shape (node affinity, pod affinity and anti-affinity),
typed so the API server checks it when the TRTModel is written, not when the refit Job is created."""

from __future__ import annotations

from enum import StrEnum

from kube_custom_resource import schema
from pydantic import Field

from trtrefit.api.base import Model


class SelectorOperator(StrEnum):
    """How a node selector requirement matches a node label's value."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


class LabelSelectorOperator(StrEnum):
    """How a label selector requirement matches a pod label's value."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class NodeSelectorRequirement(Model):
    """One condition on a node label (matchExpressions) or field (matchFields)."""

    key: str = Field(description="The label key, e.g. nvidia.com/gpu.product.", min_length=1, max_length=317)
    operator: SelectorOperator = Field(description="In, NotIn, Exists, DoesNotExist, Gt or Lt.")
    values: schema.Optional[list[str]] = Field(
        default=None,
        description="Values for In/NotIn (one or more), one integer for Gt/Lt, none for Exists.",
        max_length=64,
    )


class NodeSelectorTerm(Model):
    """Conditions that all hold on a matching node."""

    match_expressions: schema.Optional[list[NodeSelectorRequirement]] = Field(
        default=None, description="Conditions on node labels.", max_length=32
    )
    match_fields: schema.Optional[list[NodeSelectorRequirement]] = Field(
        default=None, description="Conditions on node fields (metadata.name).", max_length=8
    )


class NodeSelector(Model):
    """Nodes matching any of the terms."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        description="A node matches when any term matches.", min_length=1, max_length=16
    )


class PreferredSchedulingTerm(Model):
    """A node preference with its weight."""

    weight: int = Field(
        description="Weight in [1, 100], added to a node's score when it matches.", ge=1, le=100
    )
    preference: NodeSelectorTerm = Field(description="The nodes preferred.")


class NodeAffinity(Model):
    """Which nodes the refit pod must or should run on, e.g. a GPU product or a node pool."""

    required_during_scheduling_ignored_during_execution: schema.Optional[NodeSelector] = Field(
        default=None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: schema.Optional[list[PreferredSchedulingTerm]] = (
        Field(default=None, description="Nodes the pod should run on, by weight.", max_length=16)
    )


class LabelSelectorRequirement(Model):
    """One condition on a pod or namespace label."""

    key: str = Field(description="The label key.", min_length=1, max_length=317)
    operator: LabelSelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: schema.Optional[list[str]] = Field(
        default=None, description="Values for In/NotIn; none for Exists.", max_length=64
    )


class LabelSelector(Model):
    """Objects whose labels match all of matchLabels and matchExpressions."""

    match_labels: schema.Optional[dict[str, str]] = Field(default=None, description="Exact label values.")
    match_expressions: schema.Optional[list[LabelSelectorRequirement]] = Field(
        default=None, description="Conditions on labels.", max_length=32
    )


class PodAffinityTerm(Model):
    """Pods (matched by labelSelector in namespaces) sharing a topology domain (topologyKey) with the
    refit pod."""

    label_selector: schema.Optional[LabelSelector] = Field(default=None, description="The pods.")
    namespaces: schema.Optional[list[str]] = Field(
        default=None, description="Namespaces of the pods; the TRTModel's when empty.", max_length=32
    )
    namespace_selector: schema.Optional[LabelSelector] = Field(
        default=None, description="Namespaces of the pods, by label."
    )
    topology_key: str = Field(
        description="Node label naming the domain, e.g. kubernetes.io/hostname.", min_length=1, max_length=317
    )


class WeightedPodAffinityTerm(Model):
    """A pod (anti-)affinity preference with its weight."""

    weight: int = Field(description="Weight in [1, 100].", ge=1, le=100)
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(Model):
    """Pods the refit pod must or should run near (or, as anti-affinity, away from)."""

    required_during_scheduling_ignored_during_execution: schema.Optional[list[PodAffinityTerm]] = Field(
        default=None, description="Terms that must hold.", max_length=16
    )
    preferred_during_scheduling_ignored_during_execution: schema.Optional[list[WeightedPodAffinityTerm]] = (
        Field(default=None, description="Terms that should hold, by weight.", max_length=16)
    )


class Affinity(Model):
    """The refit pod's scheduling constraints, copied into its spec.affinity unchanged."""

    node_affinity: schema.Optional[NodeAffinity] = Field(default=None, description="Node affinity.")
    pod_affinity: schema.Optional[PodAffinity] = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: schema.Optional[PodAffinity] = Field(default=None, description="Pod anti-affinity.")
