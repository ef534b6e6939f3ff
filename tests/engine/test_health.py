"""Health verdicts, one YAML fixture per case in fixtures/health/<kind>/<behaviour>.yaml."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from aioreconcile.engine.health import Health, HealthStatus, compute, failed, not_ready
from aioreconcile.engine.model import JsonObject, ObjectRef

FIXTURES = Path(__file__).parent / "fixtures" / "health"
CASES = sorted(FIXTURES.glob("*/*.yaml"))


def _case_id(path: Path) -> str:
    return path.relative_to(FIXTURES).with_suffix("").as_posix()


@pytest.mark.parametrize("path", CASES, ids=[_case_id(path) for path in CASES])
def test_compute_gives_the_fixture_verdict_and_says_why(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    expected = case["expected"]

    health = compute(case["object"])

    assert health.status is HealthStatus(expected["status"]), health.message
    assert expected["message_contains"] in health.message


def test_fixtures_cover_every_verdict() -> None:
    verdicts = {yaml.safe_load(path.read_text())["expected"]["status"] for path in CASES}

    assert verdicts == set(HealthStatus)


def _pod(name: str, *, phase: str, ready: str = "True") -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_not_ready_lists_objects_that_are_not_current_with_why_in_given_order() -> None:
    config: JsonObject = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "web-config", "namespace": "shop"},
    }
    job: JsonObject = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate", "namespace": "shop"},
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
        },
    }
    objects = [
        _pod("starting", phase="Pending"),
        config,
        _pod("serving", phase="Running"),
        job,
    ]

    waiting = not_ready(objects)

    assert waiting == [
        (
            ObjectRef("", "Pod", "shop", "starting", "v1"),
            Health(HealthStatus.IN_PROGRESS, "Pod is pending"),
        ),
        (
            ObjectRef("batch", "Job", "shop", "migrate", "v1"),
            Health(HealthStatus.FAILED, "Job failed: BackoffLimitExceeded"),
        ),
    ]


def test_not_ready_is_empty_when_everything_is_current() -> None:
    assert not_ready([_pod("a", phase="Running"), _pod("b", phase="Succeeded")]) == []


_KINDS = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "Job"),
    ("v1", "Pod"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("v1", "Namespace"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("example.com/v1", "Widget"),
]
# Keys the rules read, so random documents reach deep into them rather than missing every path.
_FIELD_NAMES = st.sampled_from(
    [
        "conditions", "type", "status", "reason", "message", "observedGeneration", "phase",
        "replicas", "readyReplicas", "updatedReplicas", "availableReplicas", "currentRevision",
        "updateRevision", "updateStrategy", "rollingUpdate", "partition", "desiredNumberScheduled",
        "numberAvailable", "containerStatuses", "state", "waiting", "terminated", "exitCode",
        "name", "loadBalancer", "ingress", "ip", "startTime", "succeeded", "paused", "suspend",
    ]
)  # fmt: skip
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.sampled_from(["True"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELD_NAMES, inner, max_size=4),
    max_leaves=20,
)


@given(
    kind=st.sampled_from(_KINDS),
    metadata=st.dictionaries(
        st.sampled_from(["generation", "deletionTimestamp", "finalizers"]), _JSON
    ),
    spec=_JSON,
    status=_JSON,
)
def test_compute_never_raises_whatever_the_status_holds(
    kind: tuple[str, str], metadata: dict[str, Any], spec: Any, status: Any
) -> None:
    api_version, kind_name = kind
    obj: JsonObject = {
        "apiVersion": api_version,
        "kind": kind_name,
        "metadata": {"name": "x", **metadata},
        "spec": spec,
        "status": status,
    }

    health = compute(obj)

    assert health.status in set(HealthStatus)
    assert health.message


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        pytest.param([], [], id="nothing"),
        pytest.param(["InProgress", "Unknown"], [], id="may-still-settle"),
        pytest.param(["InProgress", "Failed", "Failed"], [1, 2], id="failed-ones-in-order"),
    ],
)
def test_failed_picks_the_verdicts_waiting_cannot_fix(
    statuses: list[str], expected: list[int]
) -> None:
    refs = [ObjectRef(group="", kind="ConfigMap", namespace="n", name=f"c{i}") for i in range(3)]
    verdicts = [(refs[i], Health(HealthStatus(s), "why")) for i, s in enumerate(statuses)]

    assert failed(verdicts) == [verdicts[i] for i in expected]
