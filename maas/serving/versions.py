"""Which versions a model serves (policy + labels against the registry) and which one a request
gets (by number, by label, or the default)."""

from __future__ import annotations

from dataclasses import dataclass

from maas.errors import RegistryError, RequestError
from maas.serving.settings import ModelSettings


@dataclass(frozen=True)
class ServingPlan:
    """What a model deployment serves: versions (ascending), label map, the default version, and
    the traffic split of requests naming no version: (key, version, weight) in the config's order."""

    versions: tuple[int, ...]
    labels: dict[str, int]
    default: int
    traffic: tuple[tuple[str, int, float], ...] = ()


def plan_versions(name: str, settings: ModelSettings, registered: list[int],
                  registry_labels: dict[int, list[str]] | None = None) -> ServingPlan:
    """Resolve the policy and labels against the registry's versions. ``registry_labels`` are the
    labels stored in the registry for the picked versions; labels in the config override them."""
    if not registered:
        raise RegistryError(f"model '{name}' has no registered version")
    registered = sorted(registered)
    policy = settings.versions
    if policy.latest is not None:
        picked = registered[-policy.latest:]
    else:
        missing = sorted(set(policy.specific or []) - set(registered))
        if missing:
            raise RegistryError(f"model '{name}' has no version {', '.join(map(str, missing))} "
                              f"(registered: {registered})")
        picked = sorted(set(policy.specific or []))
    labels: dict[str, int] = {}
    for version in picked:  # ascending: the newest version carrying a registry label keeps it
        for label in (registry_labels or {}).get(version, []):
            labels[label] = version
    for label, target in settings.labels.items():
        number = registered[-1] if target == "latest" else target
        if number not in registered:
            raise RegistryError(f"label '{label}' of model '{name}' names version {number}, which is "
                              f"not registered (registered: {registered})")
        labels[label] = number
    if settings.default is not None and settings.default not in labels:
        raise RegistryError(f"default label '{settings.default}' of model '{name}' names no version "
                          f"(labels: {sorted(labels) or 'none'})")
    default = labels[settings.default] if settings.default else picked[-1]
    served = tuple(sorted({*picked, *labels.values()}))
    return ServingPlan(served, labels, default, plan_traffic(name, settings, served, labels))


def plan_traffic(name: str, settings: ModelSettings, served: tuple[int, ...],
                 labels: dict[str, int]) -> tuple[tuple[str, int, float], ...]:
    """``settings.traffic`` resolved: each key a label or a served version number."""
    if settings.traffic is None:
        return ()
    resolved = []
    for key, weight in settings.traffic.items():
        if key in labels:
            version = labels[key]
        elif key.isdigit() and int(key) in served:
            version = int(key)
        else:
            known = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
            raise RegistryError(
                f"traffic of model '{name}' names '{key}', which is neither a label nor a served "
                f"version (labels: {known}; served versions: {', '.join(map(str, served))})")
        resolved.append((key, version, float(weight)))
    if settings.rollout is not None:
        canary, stable = settings.rollout_keys()
        versions = {key: version for key, version, _ in resolved}
        if versions[canary] == versions[stable]:
            raise RegistryError(
                f"the rollout of model '{name}' would judge version {versions[canary]} against "
                f"itself: traffic keys '{canary}' and '{stable}' name the same version")
    return tuple(resolved)


def choose_version(name: str, plan: ServingPlan, version: str | None = None,
                   label: str | None = None) -> int:
    """The served version a request asks for: by number, by label, or the default."""
    if version is not None:
        if not version.isdigit() or int(version) not in plan.versions:
            raise RequestError(f"model '{name}' version {version} is not served "
                               f"(served versions: {', '.join(map(str, plan.versions))})", status=404)
        return int(version)
    if label is not None:
        if label not in plan.labels:
            known = ", ".join(f"{k}={v}" for k, v in sorted(plan.labels.items())) or "none"
            raise RequestError(f"model '{name}' has no served version labelled '{label}' "
                               f"(labels: {known})", status=404)
        return plan.labels[label]
    return plan.default
