"""servekit: model-serving applications as code.

Decorate classes as deployments, compose them with `.bind()`, then `run` them in-process or
`serve` them over HTTP.
"""

from servekit import errors
from servekit._http.app import deployment_instance
from servekit._http.guards import Cors, RateLimit
from servekit._http.server import Server, serve
from servekit._models import api as models
from servekit._replica import metrics
from servekit._replica.autoscaling import MetricsSample, PolicyInput
from servekit._replica.batching import batch
from servekit._replica.context import ReplicaContext, replica_context
from servekit._replica.jobs.context import JobContext, job_context
from servekit._replica.multiplex import get_multiplexed_model_id, multiplexed
from servekit._replica.request_context import RequestContext, current_request, record_outcome
from servekit._replica.sync_calls import inline, threaded
from servekit._runtime.app import AppHandle, run
from servekit._runtime.batch.runner import BatchReport, batch_score
from servekit._runtime.handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
)
from servekit._runtime.jobs import Job
from servekit._runtime.options import RunOptions
from servekit._runtime.routing import RouterControl
from servekit._spec.canary import Canary
from servekit._spec.config import Autoscaling, BatchOptions, DeploymentConfig, DeploymentOptions, Resources
from servekit._spec.deployment import Application, Deployment, deployment
from servekit._spec.endpoint import endpoint, idempotent, ingress
from servekit._spec.jobs import JobOptions
from servekit._spec.models import ModelRef, model
from servekit._spec.routing import Split, split
from servekit._version import __version__
from servekit.errors import DeploymentOptionError, GraphError, ServekitError

__all__ = [
    "AppHandle",
    "Application",
    "Autoscaling",
    "BatchOptions",
    "BatchReport",
    "Canary",
    "Cors",
    "Deployment",
    "DeploymentConfig",
    "DeploymentHandle",
    "DeploymentOptionError",
    "DeploymentOptions",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "GraphError",
    "Job",
    "JobContext",
    "JobOptions",
    "MetricsSample",
    "ModelRef",
    "PolicyInput",
    "RateLimit",
    "ReplicaContext",
    "RequestContext",
    "Resources",
    "RouterControl",
    "RunOptions",
    "ServekitError",
    "Server",
    "Split",
    "__version__",
    "batch",
    "batch_score",
    "current_request",
    "deployment",
    "deployment_instance",
    "endpoint",
    "errors",
    "get_multiplexed_model_id",
    "idempotent",
    "ingress",
    "inline",
    "job_context",
    "metrics",
    "model",
    "models",
    "multiplexed",
    "record_outcome",
    "replica_context",
    "run",
    "serve",
    "split",
    "threaded",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and _obj.__module__.startswith("servekit._"):
        _obj.__module__ = "servekit"
del _name, _obj
