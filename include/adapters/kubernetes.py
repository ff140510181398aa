"""The explainer pods on Kubernetes: the backend setting, the KubernetesPodOperator subclass and the
callbacks that save every finished (or vanished) pod for the cost stage."""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from include.adapters.connections import s3_client

if TYPE_CHECKING:
    from include.configuration import LoadedConfig


def explain_backend() -> str:
    """``XAC_EXPLAIN_BACKEND`` or Airflow's ``[xac] explain_backend`` (local | kubernetes); unset:
    kubernetes when the environment defines the cluster's connection. Environment only: cheap at parse."""
    from include.orchestration.shards import explain_backend as backend_setting

    configured = None
    try:
        from airflow.configuration import conf

        configured = conf.get("xac", "explain_backend", fallback=None)
    except Exception:  # a component with only the task SDK: the environment decides
        pass
    if os.environ.get("XAC_EXPLAIN_BACKEND") or configured:
        return backend_setting(configured=configured)
    return backend_setting(kubernetes_conn_id=cluster_profile().spec.kubernetesConnId)


def cluster_profile() -> Any:
    """The cluster profile of this deployment (``XAC_CLUSTER_PROFILE``, default ``default``)."""
    from include.k8s import load_cluster_profile
    from include.orchestration.shards import cluster_profile_name

    return load_cluster_profile(cluster_profile_name()).profile


def kpo_partial_kwargs(loaded: LoadedConfig) -> dict[str, Any]:
    """The run-independent KubernetesPodOperator kwargs; a config the cluster cannot run (namespace,
    GPU request, image) raises PodSpecError here, at parse time, before any run or pod."""
    from include.k8s import pod_template

    kwargs = pod_template(loaded.config, cluster_profile()).kpo_kwargs()
    kwargs.pop("env_vars")  # per shard (the S3 endpoint is known at run time): expand_kwargs has it
    return kwargs


@functools.cache
def explainer_pod_operator() -> type:
    """KubernetesPodOperator without Jinja rendering of its fields.

    The DAGs render templates as native objects (for the trigger form's Params), which turns a
    string like "7" (``--seed 7``) or an env value "1" into an int: a pod the API server refuses.
    The shard plan's arguments carry no templates, so the explainer pods render nothing.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class ExplainerPodOperator(KubernetesPodOperator):
        template_fields: tuple[str, ...] = ()

        def execute(self, context: Any) -> Any:
            # Deferrable mode leaves here by TaskDeferred (a BaseException) and resumes in
            # trigger_reentry; sync mode runs the pod to its end here.
            try:
                result = super().execute(context)
            except Exception:
                self._record_if_vanished(context)
                raise
            self._record_if_vanished(context)
            return result

        def _record_if_vanished(self, context: Any) -> None:
            pod = getattr(self, "pod", None)
            if pod is not None and pod.metadata is not None:
                record_vanished_pod(self, context, pod.metadata.name, pod.metadata.namespace)

        def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
            try:
                result = super().trigger_reentry(context, event)
            except Exception:
                record_vanished_pod(self, context, event.get("name"), event.get("namespace"))
                raise
            # A pod garbage-collected before re-entry ends the try as a success, unrecorded.
            record_vanished_pod(self, context, event.get("name"), event.get("namespace"))
            return result

    return ExplainerPodOperator


def record_vanished_pod(operator: Any, context: Any, name: str | None, namespace: str | None) -> None:
    """Bill a pod that was deleted before the completion callback could save it (see
    ``include.orchestration.shards.vanished_pod_record``). Never raises: the try's own outcome stands."""
    if getattr(operator, "_xac_pod_recorded", False) or not name or not namespace:
        return
    try:
        from datetime import UTC

        from kubernetes.client.exceptions import ApiException

        from include.orchestration.shards import record_finished_pod, vanished_pod_record

        client = operator.client
        try:
            client.read_namespaced_pod(name, namespace)
            return  # still there: not deleted under us (a finished pod is recorded by the callback)
        except ApiException as exc:
            if exc.status != 404:
                raise
        gone_at = datetime.now(UTC)
        serialize = client.api_client.sanitize_for_serialization
        events = serialize(
            client.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        ).get("items", [])
        request = serialize(
            getattr(operator, "pod_request_obj", None) or operator.build_pod_request_obj(context)
        )
        request.setdefault("metadata", {}).update({"name": name, "namespace": namespace})
        pod = vanished_pod_record(
            request, events, observed_gone_at=gone_at, container=operator.base_container_name
        )
        if pod is None:
            operator.log.info("pod %s was deleted before it was scheduled: nothing to bill", name)
            return
        node = None
        if pod["spec"].get("nodeName"):
            try:
                node = serialize(client.read_node(pod["spec"]["nodeName"]))
            except ApiException as exc:
                operator.log.warning("node %s not readable: %s", pod["spec"]["nodeName"], exc.reason)
        key = record_finished_pod(
            pod, node, None, try_number=context["ti"].try_number, s3_client=s3_client(), vanished=True
        )
        operator._xac_pod_recorded = True
        operator.log.warning(
            "pod %s is gone without a completion record, billed from its events: %s (%s)",
            name,
            pod["status"]["message"],
            key,
        )
    except Exception as exc:  # billing must not hide why the try ended
        operator.log.warning("could not record deleted pod %s for the cost stage: %r", name, exc)


@functools.cache
def pod_recorder() -> type:
    """The operator callback that saves each finished pod (with its node and log) for the cost stage,
    before ``on_finish_action`` deletes it."""
    from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback

    class RecordFinishedPod(KubernetesPodOperatorCallback):
        @staticmethod
        def on_pod_completion(
            *, pod: Any, client: Any, mode: str, operator: Any, context: Any, **kwargs: Any
        ) -> None:
            from kubernetes.client.exceptions import ApiException

            from include.orchestration.shards import record_finished_pod

            if pod is None:
                return
            node = log_text = None
            try:  # cluster-scoped: the worker's service account may not read nodes (then no labels)
                if pod.spec.node_name:
                    node = client.api_client.sanitize_for_serialization(client.read_node(pod.spec.node_name))
            except ApiException as exc:
                operator.log.warning(
                    "node %s of pod %s not readable: %s", pod.spec.node_name, pod.metadata.name, exc.reason
                )
            try:
                log_text = client.read_namespaced_pod_log(
                    pod.metadata.name, pod.metadata.namespace, container="base", _preload_content=False
                ).data.decode("utf-8", errors="replace")
            except ApiException as exc:
                operator.log.warning("log of pod %s not readable: %s", pod.metadata.name, exc.reason)
            key = record_finished_pod(
                client.api_client.sanitize_for_serialization(pod),
                node,
                log_text,
                try_number=context["ti"].try_number,
                s3_client=s3_client(),
            )
            operator.log.info("finished pod %s saved for the cost stage: %s", pod.metadata.name, key)
            operator._xac_pod_recorded = True

    return RecordFinishedPod
