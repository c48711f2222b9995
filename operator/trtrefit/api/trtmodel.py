"""The TRTModel custom resource: group trtrefit.dev, version v1alpha1, short name trtm."""

from __future__ import annotations

from kube_custom_resource.custom_resource import CustomResource
from pydantic import ConfigDict, Field

from trtrefit.api.base import Rule, cel
from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import TRTModelStatus

GROUP = "trtrefit.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TRTModel"
PLURAL = "trtmodels"
SHORT_NAMES = ["trtm"]
CATEGORIES = ["trtrefit"]
# Names label the refit Jobs and pods (label values are at most 63 characters).
MAX_NAME_LENGTH = 63

PRINTER_COLUMNS = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Where the model stands.",
    },
    {
        "name": "Checkpoint",
        "type": "string",
        "jsonPath": ".spec.checkpoint.uri",
        "description": "The desired checkpoint.",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "The serving pods run the engine refitted from spec.checkpoint.",
    },
    {
        "name": "Current",
        "type": "string",
        "jsonPath": ".status.pods.summary",
        "description": "InPlace: ready pods serving spec.checkpoint / ready pods.",
    },
    {
        "name": "Engine",
        "type": "string",
        "jsonPath": ".status.serving.engine.uri",
        "priority": 1,
        "description": "The engine the serving pods load.",
    },
    {
        "name": "Message",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
        "priority": 1,
        "description": "Why the model is or is not ready.",
    },
]


# kube-custom-resource reads the CRD names from class keywords through its own metaclass, which mypy
# cannot follow (the metaclass derives from pydantic's at runtime).
class TRTModel(  # type: ignore[metaclass,call-arg]
    CustomResource,
    version=VERSION,
    kind=KIND,
    plural_name=PLURAL,
    short_names=SHORT_NAMES,
    subresources={"status": {}},
    printer_columns=PRINTER_COLUMNS,
):
    """A TensorRT-served model kept current by refitting its engine. Changing spec.checkpoint starts a refit
    Job; a verified result is published and rolled out to the serving Deployment; a failed check never
    reaches traffic."""

    model_config = ConfigDict(
        frozen=True,
        json_schema_extra=cel(
            Rule(
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"a TRTModel name has at most {MAX_NAME_LENGTH} characters (it labels the refit Jobs)",
            )
        ),
    )

    spec: TRTModelSpec = Field(description="The desired state.")
    status: TRTModelStatus = Field(default_factory=TRTModelStatus, description="The observed state.")
