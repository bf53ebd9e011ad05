"""The Serve config's schemas: our application's ``args``, a model's ``user_config``, the
Ingress's ``user_config``; and the one order in which a model's live settings are resolved.

Every field carries a ``description`` (as Ray's own ``serve/schema.py`` does), so the JSON schema
documents ``configs/serve/*.yaml``: ``python -m maas serve schema`` prints it.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, model_validator

from maas.config import default_registry_root
from maas.errors import ConfigError
from maas.schema import NAME_PATTERN, StrictSchema, validate_config
from maas.serving.adaptive import MIN_TARGET_S

LABEL_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"  # never all digits: a label is not a version
TRAFFIC_KEY_PATTERN = r"^([A-Za-z][A-Za-z0-9_-]{0,31}|[1-9][0-9]{0,8})$"  # a label or a version number
STICKY_API_KEY = "api_key"  # sticky: api_key hashes the caller's API key id; any other value names a header
INGRESS = "Ingress"  # the deployment name of the HTTP ingress in every app build_app makes


class VersionPolicy(StrictSchema):
    """Which registered versions a model serves, as TensorFlow Serving's model_version_policy:
    ``{latest: 2}`` (the two newest) or ``{specific: [3, 4]}``."""

    latest: int | None = Field(None, ge=1, le=16, description="Serve the N newest versions.")
    specific: list[int] | None = Field(None, min_length=1,
                                       description="Serve exactly these version numbers.")

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        if (self.latest is None) == (self.specific is None):
            raise ValueError("set exactly one of 'latest: N' or 'specific: [version, ...]'")
        return self


class RolloutPolicy(StrictSchema):
    """Promote a canary step by step while it holds against the stable version on live metrics,
    roll it back to 0% at once when it breaches (``maas.serving.canary``)."""

    canary: str | None = Field(
        None, pattern=TRAFFIC_KEY_PATTERN,
        description="The traffic key being rolled out (a label or version number); the other key "
                    "is the stable version. Default: the key with the smaller weight.")
    steps: list[float] = Field(
        default_factory=lambda: [10.0, 50.0, 100.0], min_length=1,
        description="The canary's share of traffic (percent) after each promotion, ascending; it "
                    "starts at its share in traffic and goes through the steps above that.")
    window_s: float = Field(60.0, ge=0.5, le=86400,
                            description="Seconds of live traffic judged before each promotion.")
    min_requests: int = Field(
        100, ge=1, le=10_000_000,
        description="Requests each version must answer in a window before it is judged; fewer: no "
                    "decision, the next window is judged. The canary is rolled back mid-window as "
                    "soon as it has this many and breaches.")
    max_error_rate_increase: float = Field(
        0.01, ge=0, le=1,
        description="Rollback when the canary's share of failed model calls exceeds the stable "
                    "version's by more than this (0.01: one percentage point).")
    max_p99_ratio: float = Field(
        2.0, ge=1, le=1000,
        description="Rollback when the canary's p99 model call time per request is more than this "
                    "times the stable version's (and more than p99_tolerance_ms above it).")
    p99_tolerance_ms: float = Field(
        2.0, ge=0, le=60_000,
        description="A p99 difference under this never counts as a breach: sub-millisecond calls "
                    "differ by ratios that mean nothing.")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1,
        description="With feedback (POST /v1/models/{name}/feedback): rollback when the canary's "
                    "accuracy is more than this below the stable version's; promotions then wait "
                    "for min_feedback labelled answers from each version. Unset: accuracy is not judged.")
    min_feedback: int = Field(50, ge=1, le=10_000_000,
                              description="Labelled answers per version before accuracy is judged.")

    @model_validator(mode="after")
    def _steps_ascend(self) -> RolloutPolicy:
        if any(not 0 < step <= 100 for step in self.steps):
            raise ValueError(f"rollout steps {self.steps} must each be a share of traffic above 0 and "
                             f"at most 100 (percent)")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"rollout steps {self.steps} must ascend, e.g. [10, 50, 100]")
        return self


def _traffic_keys(value: Any) -> Any:
    """YAML reads ``{1: 90, 2: 10}`` with int keys: version numbers, kept as text."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


TrafficWeights = Annotated[
    dict[Annotated[str, StringConstraints(pattern=TRAFFIC_KEY_PATTERN)], float],
    BeforeValidator(_traffic_keys)]


class CaptureSettings(StrictSchema):
    """Sampled request/response capture for retraining (``maas.serving.capture``): a share of the
    answered requests, with their inputs and outputs, written as Parquet files under the registry
    (``<registry>/.maas/capture/model=<m>/version=<v>/hour=<YYYY-MM-DDTHH>/``), off the request
    path: spooled by the replica, turned into Parquet by a compactor process at nice 19; feedback
    labels go next to them (``_feedback/``), joined by request id when read."""

    rate: float = Field(
        ge=0, le=1,
        description="Share of answered requests captured (0.1: one in ten, drawn at random); 0: off.")
    flush_s: float = Field(5.0, ge=0.1, le=3600,
                           description="Write what was captured every this many seconds.")
    flush_rows: int = Field(
        10_000, ge=1, le=10_000_000,
        description="... or as soon as this many rows wait (one spool file per version per write; "
                    "the compactor writes one Parquet file per version and hour per pass).")
    max_buffered_rows: int = Field(
        100_000, ge=1, le=100_000_000,
        description="Most rows waiting to be written in one replica; past it a sampled request is "
                    "dropped and counted (status and maas_capture_dropped_total), never waited for.")
    compaction: Literal["process", "inline", "external"] = Field(
        "process",
        description="Who turns the spool into Parquet. process: a compactor process on each machine at "
                    "nice 19, on CPU time serving leaves idle; inline: the replica's writer thread, no "
                    "other process, at a cost to serving throughput; external: nothing here, you run "
                    "`python -m maas.capture_compactor` (a sidecar, a cron job, another node).")
    compact_idle_pct: float = Field(
        30.0, ge=0, le=100,
        description="compaction process: compact when at least this share of the machine's CPU went "
                    "unused over the last look (every 2 s): the Parquet encoding waits for a lull "
                    "instead of taking CPU from requests. 0: compact at once, whatever the load.")
    compact_within_s: float = Field(
        900.0, ge=1, le=86_400,
        description="compaction process: ... and at the latest once the oldest spooled request has "
                    "waited this long (or the spool holds half of max_spool_mb), busy or not.")
    max_spool_mb: int = Field(
        2048, ge=1, le=1_048_576,
        description="Most MiB of captured requests waiting in the model's spool on one machine for the "
                    "compactor to turn them into Parquet; past it a write is dropped and counted "
                    "(reason spool_full), never waited for.")
    spool_reuse_mb: int = Field(
        512, ge=0, le=1_048_576,
        description="MiB of compacted spool files kept, while capture runs, for the next spool writes to "
                    "write into: memory a file already holds costs a replica less to write than new "
                    "memory (on a VM, new memory can fault to the hypervisor). A memory spool's "
                    "compactor reserves rate x this much when it starts (at nice 19). 0: none kept. "
                    "At most max_spool_mb (and the memory spool's 1/8 of /dev/shm).")
    spool: Literal["memory", "disk"] = Field(
        "memory",
        description="Where captured requests wait for the compactor on each machine. memory: a private "
                    "folder in /dev/shm (tmpfs), ~1/4 of disk's CPU per write; it survives a replica's "
                    "crash, not the machine's, and holds at most 1/8 of /dev/shm (less than "
                    "max_spool_mb where /dev/shm is small; disk where /dev/shm is missing, not ours or "
                    "under 512 MiB). disk: under a local registry's capture folder (a temporary folder "
                    "for an object store), kept across a reboot.")


class ModelSettings(StrictSchema):
    """One model's settings: its deployment's ``user_config``, or its entry in the Ingress's for a
    model hosted there. Changes apply live through ``reconfigure``, on every replica, without a
    restart."""

    versions: VersionPolicy = Field(
        default_factory=lambda: VersionPolicy(latest=1),
        description="Version policy: {latest: N} or {specific: [versions]}.")
    labels: dict[Annotated[str, StringConstraints(pattern=LABEL_PATTERN)], int | Literal["latest"]] = Field(
        default_factory=dict,
        description="Label -> version number or 'latest'. A labelled version is served even "
                    "outside the policy; labels stored in the registry apply too, these override.")
    default: str | None = Field(
        None, pattern=LABEL_PATTERN,
        description="The label that answers requests naming no version; unset: the newest "
                    "version the policy picks.")
    runtime: Literal["any", "tensorflow", "onnxruntime"] = Field(
        "any",
        description="Which versions the policy picks from. any: every servable version, each on "
                    "the runtime its artefact needs (ONNX Runtime for onnx/onnx-int8 variants, "
                    "TensorFlow for Keras and SavedModel ones). tensorflow or onnxruntime: only "
                    "versions of that runtime, e.g. {latest: 1} then serves the newest ONNX "
                    "variant. TFLite variants are never served (a download for edge clients).")
    poll_registry_s: float = Field(
        0, ge=0, le=86400,
        description="Re-read the registry every this many seconds and swap to what the policy "
                    "now picks; 0: only when the user_config changes.")
    refresh: int = Field(
        0, description="A counter: `python -m maas serve refresh` bumps it, which makes every "
                       "replica re-read the registry now.")
    max_batch_size: int = Field(32, ge=1, le=4096,
                                description="Most rows of concurrent requests joined into one model call.")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=10, description="Longest wait for more requests before a batch runs.")
    latency_target_ms: float | None = Field(
        None, gt=0, le=60_000,
        description="Adaptive batching: instead of the fixed batch_wait_timeout_s (then unused), "
                    "each batch's wait and size cap follow the observed arrival rate and model "
                    "call time so that the time a request spends queued, waiting and in the call "
                    "stays within half of this target (HTTP and the proxy get the rest), backing "
                    "off when observed latency runs over; max_batch_size stays the upper bound. "
                    "Unset: the fixed wait. At least 1 ms.")
    traffic: TrafficWeights | None = Field(
        None,
        description="Split the requests that name no version between versions by weight: label or "
                    "version number -> weight, e.g. {stable: 90, canary: 10}. Requests naming a "
                    "version or label still get it. Unset: the default version answers them all.")
    sticky: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="With traffic: one caller sees one version. 'api_key': the caller's API key id "
                    "is hashed to a version; any other value names a request header (e.g. "
                    "x-user-id) whose value is. Callers without it are split per request.")
    rollout: RolloutPolicy | None = Field(
        None,
        description="With traffic of two keys: judge the canary against the stable version on "
                    "live metrics each window, promote it through the steps while it holds, roll "
                    "it back to 0% at once when it breaches. Decisions are shared by every replica.")
    capture: CaptureSettings | None = Field(
        None,
        description="Capture a sample of the answered requests (inputs, outputs, version, latency, "
                    "request id) and the feedback labels sent for them, as Parquet under the "
                    "registry, for retraining (data.source: capture). Written off the request "
                    "path; a client sees nothing. Unset: off.")
    max_pending_requests: int = Field(
        1024, ge=1, le=1_000_000,
        description="Requests waiting for this model in one replica; past it a request gets 503 "
                    "with Retry-After at once instead of unbounded latency (on top of Serve's "
                    "max_queued_requests for the deployment).")

    @model_validator(mode="after")
    def _target_reachable(self) -> ModelSettings:
        if self.latency_target_ms is not None and self.latency_target_ms < MIN_TARGET_S * 1e3:
            raise ValueError(
                f"latency_target_ms={self.latency_target_ms} is below {MIN_TARGET_S * 1e3:g} ms: an "
                f"HTTP request through Serve alone takes longer, so no batching could meet it; "
                f"set a target of a few milliseconds or more, or leave it unset for the fixed "
                f"batch_wait_timeout_s")
        return self

    @model_validator(mode="after")
    def _traffic_consistent(self) -> ModelSettings:
        if self.traffic is not None:
            weights = self.traffic
            if not weights:
                raise ValueError("traffic is empty: give label or version -> weight, e.g. "
                                 "{stable: 90, canary: 10}, or leave it unset")
            negative = {k: w for k, w in weights.items() if not w >= 0 or w == float("inf")}
            if negative:
                raise ValueError(f"traffic weights must be finite and non-negative, got {negative}")
            if sum(weights.values()) <= 0:
                raise ValueError(f"traffic weights {weights} add up to 0: at least one version must "
                                 f"get requests")
        elif self.sticky is not None or self.rollout is not None:
            which = "sticky" if self.sticky is not None else "rollout"
            raise ValueError(f"{which} needs traffic: name the versions to split requests between, "
                             f"e.g. traffic: {{stable: 90, canary: 10}}")
        if self.rollout is not None and self.traffic is not None:
            self.rollout_keys()  # raises with the reason
        return self

    def rollout_keys(self) -> tuple[str, str]:
        """(canary key, stable key) of the rollout: the two keys of ``traffic``."""
        traffic, rollout = self.traffic or {}, self.rollout
        if rollout is None or len(traffic) != 2:
            raise ValueError(f"a rollout judges a canary against one stable version: traffic must "
                             f"name exactly two versions or labels, got {sorted(traffic)}")
        first, second = sorted(traffic, key=lambda k: (traffic[k], k))
        if rollout.canary is not None:
            if rollout.canary not in traffic:
                raise ValueError(f"rollout.canary '{rollout.canary}' is not a key of traffic "
                                 f"({', '.join(sorted(traffic))})")
            canary = rollout.canary
        elif traffic[first] == traffic[second]:
            raise ValueError(f"traffic gives {first} and {second} the same weight: say which is the "
                             f"canary with rollout.canary")
        else:
            canary = first
        return canary, (second if canary == first else first)


class ModelEndpoint(StrictSchema):
    """One model the application serves."""

    name: str = Field(pattern=NAME_PATTERN, description="The registered model's name.")
    hosting: Literal["deployment", "ingress"] = Field(
        "deployment",
        description="deployment: a Serve deployment of its own, named after the model, scaled on "
                    "its own. ingress: inside the HTTP ingress's replicas, scaled with them; one "
                    "Serve hop fewer per request, the fastest mode for a small model.")
    user_config: ModelSettings | None = Field(
        None, description="The starting settings. A live user_config (the model's deployment's, "
                          "or its entry in the Ingress's) replaces them.")


class ServeAppConfig(StrictSchema):
    """The ``args`` of our application in a Serve config file (``import_path: serve.app:build_app``)."""

    registry_root: str | None = Field(
        None, description="Registry the models are read from; default $MAAS_REGISTRY or ~/.maas/registry.")
    models: list[ModelEndpoint] = Field(min_length=1, description="The models this application serves.")
    max_rows_per_request: int = Field(1024, ge=1, description="More rows in one request: 413.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger request bodies: 413.")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Plain API keys accepted on predict routes for every model (the older form; "
                    "prefer scoped keys: `python -m maas keys create`). With no key of either kind, "
                    "predict is open; health and metadata stay open either way.")
    api_keys_file: str | None = Field(
        None, description="The scoped-key store (hashed keys with models, role and rate); default "
                          "<registry_root>/.maas/api_keys.json, where `python -m maas keys` writes.")
    api_keys_env: str = Field("MAAS_API_KEYS",
                              description="Environment variable with more API keys, comma-separated.")
    verify_key: str | None = Field(
        None,
        description="Ed25519 public key (a PEM file on every node, or the PEM text) that every "
                    "served version must be signed with; default $MAAS_VERIFY_KEY; unset: versions "
                    "are not signature-checked (the content hash still is).")
    audit_sample_rate: float = Field(
        0.01, ge=0, le=1,
        description="Share of successful predictions written to the audit trail "
                    "(<registry>/.maas/audit): time, request id, key id, model, version, status, "
                    "rows, latency; never a key, and a payload only with audit_payloads.")
    audit_error_rate: float = Field(1.0, ge=0, le=1,
                                    description="Share of failed predictions written to the audit trail.")
    audit_payloads: bool = Field(
        False,
        description="Also write each sampled prediction's request and response bodies to the "
                    "audit trail (JSON as text, binary tensor data base64), cut at "
                    "audit_payload_max_bytes. Off by default: payloads may be personal data.")
    audit_payload_max_bytes: int = Field(
        65536, ge=0, description="Bytes of each request and response body kept when audit_payloads is on.")
    admin_wait_s: float = Field(
        60, ge=0, le=600,
        description="How long an admin route that changes a model's settings waits for every "
                    "replica to apply them before answering (200); past it, 202 and the change "
                    "goes on.")
    retry_after_s: float = Field(
        1.0, gt=0, le=3600,
        description="Seconds a client is told to wait (Retry-After) when a model's queue is full (503).")

    @model_validator(mode="after")
    def _unique_names(self) -> ServeAppConfig:
        names = [m.name for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    def resolved_root(self) -> str:
        return self.registry_root or default_registry_root()

    def resolved_keys_file(self) -> str:
        from maas.serving.keys import keys_path

        return self.api_keys_file or keys_path(self.resolved_root())

    def resolved_api_keys(self) -> list[str]:
        from_env = [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return [*self.api_keys, *from_env]

    def verifier(self) -> Any:
        """The ``Verifier`` for ``verify_key`` (or ``$MAAS_VERIFY_KEY``); None: no signature check."""
        from maas.artifacts.signing import Verifier

        return Verifier.from_setting(self.verify_key)

    def endpoint(self, name: str) -> ModelEndpoint | None:
        return next((m for m in self.models if m.name == name), None)

    def hosted_in_ingress(self) -> dict[str, ModelEndpoint]:
        return {m.name: m for m in self.models if m.hosting == "ingress"}


class IngressSettings(StrictSchema):
    """The ``Ingress`` deployment's ``user_config``: the settings of the models it hosts itself
    (``hosting: ingress``), by name; applied live like a model deployment's."""

    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="Model name -> its settings (models with hosting: ingress).")


def resolve_settings(live: dict[str, Any] | ModelSettings | None, endpoint: ModelEndpoint,
                     source: str) -> ModelSettings:
    """A model's settings, in the one order that holds everywhere: the live ``user_config`` (its
    deployment's, or its entry in the Ingress's), else the ``user_config`` in the app's args,
    else the defaults. ``source`` names the live config in an error message."""
    if live is not None:
        return validate_config(ModelSettings, live, source)
    return endpoint.user_config or ModelSettings()


def ingress_model_settings(user_config: dict[str, Any] | None,
                           config: ServeAppConfig) -> dict[str, ModelSettings]:
    """Settings for each model the ingress hosts (``resolve_settings`` for each). Entries for
    models the ingress does not host are refused, so a typo cannot silently leave a model on its
    old settings."""
    source = f"user_config of {INGRESS}"
    given = validate_config(IngressSettings, user_config or {}, source).models
    hosted = config.hosted_in_ingress()
    unknown = sorted(set(given) - set(hosted))
    if unknown:
        raise ConfigError(f"{source} has settings for {', '.join(unknown)}, which the ingress does "
                          f"not host; models with hosting: ingress: {', '.join(hosted) or 'none'}")
    return {name: resolve_settings(given.get(name), endpoint, source)
            for name, endpoint in hosted.items()}


def settings_json_schema() -> dict[str, Any]:
    """The JSON schema of what ``configs/serve/*.yaml`` may say about our application."""
    return {
        "application args (serve.app:build_app)": ServeAppConfig.model_json_schema(),
        "user_config of a model deployment": ModelSettings.model_json_schema(),
        f"user_config of the {INGRESS} deployment": IngressSettings.model_json_schema(),
    }
