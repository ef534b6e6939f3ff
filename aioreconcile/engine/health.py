"""Is a live object done becoming what we applied? One small function per kind, no I/O.

The verdicts follow kstatus (sigs.k8s.io/cli-utils ``pkg/kstatus/status``) so they mean what
``kubectl wait``/Flux users expect: *Current* is settled, *InProgress* will settle by itself,
*Failed* needs a person, *Unknown* means the status could not be read. A waiting loop calls
``not_ready`` repeatedly and stops when it is empty; everything here is a function of the object.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from aioreconcile.engine.model import JsonObject, ObjectRef


class HealthStatus(StrEnum):
    CURRENT = "Current"
    IN_PROGRESS = "InProgress"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Health:
    """A verdict and, in words a user understands, why."""

    status: HealthStatus
    message: str


def compute(obj: JsonObject) -> Health:
    """The health of one live object; never raises, however odd its status."""
    try:
        return _common(obj) or _rule_for(obj)(obj)
    except _MalformedError as e:
        return Health(HealthStatus.UNKNOWN, f"cannot read the object's status: {e}")


def not_ready(objects: Iterable[JsonObject]) -> list[tuple[ObjectRef, Health]]:
    """Every object that is not Current, with why, in the order given.

    Live objects come from the API server and always have an identity, so ``ObjectRef.of``
    raising here means the caller passed something that was never on a cluster.
    """
    verdicts = ((ObjectRef.of(obj), compute(obj)) for obj in objects)
    return [(ref, health) for ref, health in verdicts if health.status is not HealthStatus.CURRENT]


def failed(verdicts: Iterable[tuple[ObjectRef, Health]]) -> list[tuple[ObjectRef, Health]]:
    """The Failed ones: waiting will not make them Current (kstatus Stalled, a Deployment past
    its progress deadline), so a wait that meets one ends now instead of at its timeout, as
    Flux's health checks fail fast since 2.1."""
    return [(ref, health) for ref, health in verdicts if health.status is HealthStatus.FAILED]


# --- reading a decoded object -------------------------------------------------------------------


class _MalformedError(ValueError):
    """A field has a shape the API would never send; the verdict becomes Unknown."""


@dataclass(frozen=True)
class _Condition:
    type: str
    status: str
    reason: str
    message: str
    observed_generation: int | None

    @property
    def is_true(self) -> bool:
        return self.status == "True"

    @property
    def is_false(self) -> bool:
        return self.status == "False"

    def because(self) -> str:
        return _explain(self.reason, self.message) or f"{self.type}={self.status}"


def _explain(reason: str, message: str) -> str:
    """``Reason (message)``, or whichever of the two the controller filled in."""
    if reason and message:
        return f"{reason} ({message})"
    return reason or message


def _field(obj: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or None where any step is absent."""
    value: Any = obj
    walked: list[str] = []
    for key in path.split("."):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise _MalformedError(f"{'.'.join(walked)} is not an object")
        value = value.get(key)
        walked.append(key)
    return value


def _int(obj: Mapping[str, Any], path: str, *, default: int) -> int:
    value = _field(obj, path)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _MalformedError(f"{path} is not an integer")
    return value


def _optional_int(obj: Mapping[str, Any], path: str) -> int | None:
    return None if _field(obj, path) is None else _int(obj, path, default=0)


def _str(obj: Mapping[str, Any], path: str, *, default: str = "") -> str:
    value = _field(obj, path)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _MalformedError(f"{path} is not a string")
    return value


def _list(obj: Mapping[str, Any], path: str) -> list[Any]:
    value = _field(obj, path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _MalformedError(f"{path} is not a list")
    return value


def _conditions(obj: Mapping[str, Any]) -> dict[str, _Condition]:
    """``status.conditions`` by type; a controller writes each type once."""
    found: dict[str, _Condition] = {}
    for index, entry in enumerate(_list(obj, "status.conditions")):
        where = f"status.conditions[{index}]"
        if not isinstance(entry, Mapping):
            raise _MalformedError(f"{where} is not an object")
        kind = entry.get("type")
        if not isinstance(kind, str):
            raise _MalformedError(f"{where}.type is not a string")
        found[kind] = _Condition(
            type=kind,
            status=_str(entry, "status"),
            reason=_str(entry, "reason"),
            message=_str(entry, "message"),
            observed_generation=_optional_int(entry, "observedGeneration"),
        )
    return found


def _current(message: str) -> Health:
    return Health(HealthStatus.CURRENT, message)


def _in_progress(message: str) -> Health:
    return Health(HealthStatus.IN_PROGRESS, message)


def _failed(message: str) -> Health:
    return Health(HealthStatus.FAILED, message)


def _of(done: int, total: int, noun: str) -> str:
    return f"{done} of {total} {noun}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# --- rules every kind shares --------------------------------------------------------------------


def _common(obj: JsonObject) -> Health | None:
    """Deletion and unobserved generations, which no kind-specific status can outweigh."""
    if _field(obj, "metadata.deletionTimestamp"):
        finalizers = [f for f in _list(obj, "metadata.finalizers") if isinstance(f, str)]
        waiting = f", waiting for finalizers: {', '.join(finalizers)}" if finalizers else ""
        return _in_progress(f"being deleted{waiting}")
    generation = _optional_int(obj, "metadata.generation")
    observed = _optional_int(obj, "status.observedGeneration")
    if generation is not None and observed is not None and generation > observed:
        return _in_progress(
            f"generation {generation} not yet observed by its controller (status is for {observed})"
        )
    return None


def _unobserved(obj: JsonObject) -> Health | None:
    """Built-in workload controllers always write observedGeneration; until they have, their
    replica counts are zeros that mean nothing (kstatus makes the same demand of DaemonSets)."""
    if _optional_int(obj, "status.observedGeneration") is None:
        return _in_progress("not yet observed by its controller")
    return None


def _rule_for(obj: JsonObject) -> Callable[[JsonObject], Health]:
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return _custom
    group, _, _ = api_version.rpartition("/")
    return _BY_KIND.get((group, kind), _custom)


# --- one function per kind ----------------------------------------------------------------------


def _deployment(obj: JsonObject) -> Health:
    """``kubectl rollout status`` semantics, plus the controller's own verdict that the progress
    deadline passed, which is the only way a Deployment reports failure."""
    if unobserved := _unobserved(obj):
        return unobserved
    progressing = _conditions(obj).get("Progressing")
    if progressing and progressing.reason == "ProgressDeadlineExceeded":
        return _failed(f"rollout exceeded its progress deadline: {progressing.because()}")
    if _field(obj, "spec.paused") is True:
        return _current("rollout is paused; replicas are not being changed")
    wanted = _int(obj, "spec.replicas", default=1)
    replicas = _int(obj, "status.replicas", default=0)
    updated = _int(obj, "status.updatedReplicas", default=0)
    ready = _int(obj, "status.readyReplicas", default=0)
    available = _int(obj, "status.availableReplicas", default=0)
    if updated < wanted:
        return _in_progress(_of(updated, wanted, "replicas updated"))
    if replicas > updated:
        return _in_progress(f"{_count(replicas - updated, 'old replica')} pending termination")
    if available < wanted:
        return _in_progress(_of(available, wanted, "replicas available"))
    if ready < wanted:
        return _in_progress(_of(ready, wanted, "replicas ready"))
    return _current(_of(available, wanted, "replicas available"))


def _stateful_set(obj: JsonObject) -> Health:
    """StatefulSets set no conditions, so only counts and revisions tell. A partitioned rolling
    update is done when the ordinals above the partition are updated; the rest stay old on
    purpose, so ``currentRevision`` never catches up and must not be waited for."""
    if unobserved := _unobserved(obj):
        return unobserved
    wanted = _int(obj, "spec.replicas", default=1)
    replicas = _int(obj, "status.replicas", default=0)
    ready = _int(obj, "status.readyReplicas", default=0)
    updated = _int(obj, "status.updatedReplicas", default=0)
    if replicas < wanted:
        return _in_progress(_of(replicas, wanted, "replicas created"))
    if ready < wanted:
        return _in_progress(_of(ready, wanted, "replicas ready"))
    if replicas > wanted:
        return _in_progress(f"{_count(replicas - wanted, 'extra replica')} pending termination")
    strategy = _str(obj, "spec.updateStrategy.type", default="RollingUpdate")
    if strategy == "OnDelete":
        return _current(
            f"{_count(ready, 'replica')} ready; OnDelete updates wait for pods to be deleted"
        )
    partition = _int(obj, "spec.updateStrategy.rollingUpdate.partition", default=0)
    if partition > 0:
        due = max(wanted - partition, 0)
        if updated < due:
            return _in_progress(_of(updated, due, f"replicas above partition {partition} updated"))
        return _current(_of(updated, due, f"replicas above partition {partition} updated"))
    current_revision = _str(obj, "status.currentRevision")
    update_revision = _str(obj, "status.updateRevision")
    if current_revision != update_revision:
        return _in_progress(
            f"rolling update to revision {update_revision}: {_of(updated, wanted, 'updated')}"
        )
    return _current(_of(ready, wanted, f"replicas ready at revision {current_revision}"))


def _daemon_set(obj: JsonObject) -> Health:
    """Counts are per node: the controller decides how many pods it wants
    (``desiredNumberScheduled``), so there is no spec number to compare with."""
    if unobserved := _unobserved(obj):
        return unobserved
    desired = _optional_int(obj, "status.desiredNumberScheduled")
    if desired is None:
        return _in_progress("the controller has not yet counted the nodes to run on")
    scheduled = _int(obj, "status.currentNumberScheduled", default=0)
    updated = _int(obj, "status.updatedNumberScheduled", default=0)
    available = _int(obj, "status.numberAvailable", default=0)
    ready = _int(obj, "status.numberReady", default=0)
    on_delete = _str(obj, "spec.updateStrategy.type") == "OnDelete"
    if scheduled < desired:
        return _in_progress(_of(scheduled, desired, "nodes have a pod scheduled"))
    if not on_delete and updated < desired:
        return _in_progress(_of(updated, desired, "pods updated"))
    if available < desired:
        return _in_progress(_of(available, desired, "pods available"))
    if ready < desired:
        return _in_progress(_of(ready, desired, "pods ready"))
    return _current(_of(available, desired, "pods available"))


def _replica_set(obj: JsonObject) -> Health:
    """``ReplicaFailure`` means pods are being refused (quota, admission), which retrying alone
    does not fix; Argo calls it degraded, and so do we."""
    if unobserved := _unobserved(obj):
        return unobserved
    failure = _conditions(obj).get("ReplicaFailure")
    if failure and failure.is_true:
        return _failed(f"cannot create pods: {failure.because()}")
    wanted = _int(obj, "spec.replicas", default=1)
    replicas = _int(obj, "status.replicas", default=0)
    ready = _int(obj, "status.readyReplicas", default=0)
    available = _int(obj, "status.availableReplicas", default=0)
    if available < wanted:
        return _in_progress(_of(available, wanted, "replicas available"))
    if ready < wanted:
        return _in_progress(_of(ready, wanted, "replicas ready"))
    if replicas > wanted:
        return _in_progress(f"{_count(replicas - wanted, 'extra replica')} pending termination")
    return _current(_of(available, wanted, "replicas available"))


def _job(obj: JsonObject) -> Health:
    """A Job is Current once it has finished well. Unlike kstatus we call a running Job
    InProgress, so waiting for a migration Job waits for it to end; a suspended Job is
    Current because nothing will happen until someone resumes it."""
    conditions = _conditions(obj)
    for kind in ("Failed", "FailureTarget"):
        failed = conditions.get(kind)
        if failed and failed.is_true:
            return _failed(f"Job failed: {failed.because()}")
    succeeded = _int(obj, "status.succeeded", default=0)
    parallelism = _int(obj, "spec.parallelism", default=1)
    completions = _int(obj, "spec.completions", default=parallelism)
    complete = conditions.get("Complete")
    if complete and complete.is_true:
        return _current(f"Job completed: {_of(succeeded, completions, 'succeeded')}")
    suspended = conditions.get("Suspended")
    if (suspended and suspended.is_true) or _field(obj, "spec.suspend") is True:
        return _current("Job is suspended")
    if not _str(obj, "status.startTime"):
        return _in_progress("Job not started yet")
    active = _int(obj, "status.active", default=0)
    failed_pods = _int(obj, "status.failed", default=0)
    return _in_progress(
        f"Job running: {active} active, {_of(succeeded, completions, 'succeeded')}, "
        f"{failed_pods} failed"
    )


_STUCK_WAITING_REASONS: Final = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Container states the kubelet will only leave when something outside the pod changes.
``ErrImagePull`` is left out: it is the first, possibly transient, failure before back-off."""


def _pod(obj: JsonObject) -> Health:
    """A stuck container fails the pod in any phase (ImagePullBackOff happens while Pending).
    Unschedulable stays InProgress: kstatus fails it after a grace period, which needs a clock."""
    phase = _str(obj, "status.phase")
    if phase == "Succeeded":
        return _current("Pod completed successfully")
    if phase == "Failed":
        return _failed(f"Pod failed: {_pod_failure(obj)}")
    if stuck := _stuck_containers(obj):
        return _failed("; ".join(stuck))
    conditions = _conditions(obj)
    if phase == "Running":
        ready = conditions.get("Ready")
        if ready and ready.is_true:
            return _current("Pod is running and ready")
        why = f": {ready.because()}" if ready else ""
        return _in_progress(f"Pod is running but not ready{why}")
    if phase == "Pending":
        scheduled = conditions.get("PodScheduled")
        if scheduled and scheduled.is_false:
            return _in_progress(f"Pod cannot be scheduled yet: {scheduled.because()}")
        return _in_progress("Pod is pending")
    if not phase:
        return _in_progress("Pod not yet observed by its node")
    if phase == "Unknown":
        return Health(HealthStatus.UNKNOWN, "the Pod's node is not reporting its state")
    return Health(HealthStatus.UNKNOWN, f"unrecognised Pod phase {phase!r}")


def _container_statuses(obj: JsonObject) -> list[Mapping[str, Any]]:
    statuses = _list(obj, "status.initContainerStatuses") + _list(obj, "status.containerStatuses")
    return [status for status in statuses if isinstance(status, Mapping)]


def _stuck_containers(obj: JsonObject) -> list[str]:
    stuck: list[str] = []
    for status in _container_statuses(obj):
        reason = _str(status, "state.waiting.reason")
        if reason in _STUCK_WAITING_REASONS:
            message = _str(status, "state.waiting.message")
            detail = f" ({message})" if message else ""
            stuck.append(f"container {_str(status, 'name')}: {reason}{detail}")
    return stuck


def _pod_failure(obj: JsonObject) -> str:
    """The pod's own explanation if it has one (eviction), else the first container's exit."""
    if explained := _explain(_str(obj, "status.reason"), _str(obj, "status.message")):
        return explained
    for status in _container_statuses(obj):
        if _field(status, "state.terminated") is None:
            continue
        name = _str(status, "name")
        reason = _str(status, "state.terminated.reason")
        code = _int(status, "state.terminated.exitCode", default=0)
        if reason == "OOMKilled" or code != 0:
            return f"container {name} exited with code {code} ({reason or 'Error'})"
    return "no reason given"


def _persistent_volume_claim(obj: JsonObject) -> Health:
    phase = _str(obj, "status.phase")
    if phase == "Bound":
        return _current("bound to a volume")
    if phase == "Lost":
        return _failed("its volume is lost")
    if phase in ("Pending", ""):
        return _in_progress("waiting for a volume to be bound")
    return Health(HealthStatus.UNKNOWN, f"unrecognised PersistentVolumeClaim phase {phase!r}")


def _service(obj: JsonObject) -> Health:
    """Only a LoadBalancer waits for something outside the API server: its external address."""
    if _str(obj, "spec.type", default="ClusterIP") != "LoadBalancer":
        return _current("Service is ready")
    ingresses = [i for i in _list(obj, "status.loadBalancer.ingress") if isinstance(i, Mapping)]
    if not ingresses:
        return _in_progress("waiting for the load balancer to get an address")
    addresses = [_str(i, "ip") or _str(i, "hostname") for i in ingresses]
    return _current(f"load balancer at {', '.join(a for a in addresses if a) or 'an address'}")


def _custom_resource_definition(obj: JsonObject) -> Health:
    """Custom resources of a CRD cannot be applied until it is Established: the staged apply
    waits on this one."""
    conditions = _conditions(obj)
    names = conditions.get("NamesAccepted")
    if names and names.is_false:
        return _failed(f"CRD names not accepted: {names.because()}")
    established = conditions.get("Established")
    if established and established.is_true:
        return _current("CRD is established")
    why = f": {established.because()}" if established else ""
    return _in_progress(f"waiting for the CRD to be established{why}")


def _namespace(obj: JsonObject) -> Health:
    phase = _str(obj, "status.phase")
    if phase == "Active":
        return _current("Namespace is active")
    if phase == "Terminating":
        return _in_progress("Namespace is terminating")
    if not phase:
        return _in_progress("Namespace is not active yet")
    return Health(HealthStatus.UNKNOWN, f"unrecognised Namespace phase {phase!r}")


def _custom(obj: JsonObject) -> Health:
    """Any other kind, judged by the conditions kstatus standardised and most controllers
    (Flux, cert-manager, Crossplane) write. An object with none of them, or no status at all
    (ConfigMap, Secret, RBAC), has nothing to wait for and is Current."""
    conditions = _conditions(obj)
    stalled = conditions.get("Stalled")
    if stalled and stalled.is_true:
        return _failed(f"stalled: {stalled.because()}")
    reconciling = conditions.get("Reconciling")
    if reconciling and reconciling.is_true:
        return _in_progress(f"reconciling: {reconciling.because()}")
    ready = conditions.get("Ready")
    if ready is None:
        return _current("no readiness conditions to wait for")
    generation = _optional_int(obj, "metadata.generation")
    if (
        generation is not None
        and ready.observed_generation is not None
        and ready.observed_generation < generation
    ):
        return _in_progress(
            f"Ready describes generation {ready.observed_generation}, not {generation}"
        )
    if ready.is_true:
        return _current(f"ready: {ready.because()}")
    return _in_progress(f"not ready: {ready.because()}")


_BY_KIND: Final[Mapping[tuple[str, str], Callable[[JsonObject], Health]]] = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _stateful_set,
    ("apps", "DaemonSet"): _daemon_set,
    ("apps", "ReplicaSet"): _replica_set,
    ("batch", "Job"): _job,
    ("", "Pod"): _pod,
    ("", "PersistentVolumeClaim"): _persistent_volume_claim,
    ("", "Service"): _service,
    ("", "Namespace"): _namespace,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _custom_resource_definition,
}
