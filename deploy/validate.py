"""Validate Kiln's deployment manifests offline, as far as a machine without a cluster can.

    python deploy/validate.py [--deploy DIR] [--kserve-schemas DIR] [--kubernetes-version V]

1. Every overlay in DIR/kubernetes/overlays/ is rendered with `kubectl kustomize` (offline).
2. Every rendered object is validated with kubernetes-validate's strict schemas (unknown
   fields rejected) for Kubernetes `--kubernetes-version`, plus the invariants Kiln's
   manifests promise (probes through the gRPC health service on the port named `grpc`,
   non-root, read-only root filesystem, a grace period longer than the drain).
3. Every object in DIR/kserve/*.yaml is validated against the openAPIV3Schema of its KServe
   CRD (../shared/schemas/kserve/ beside the project), made strict: every object schema that
   lists properties gets `additionalProperties: false` unless it preserves unknown fields, so
   a typo such as `containrs` fails. Its metadata (left open by the CRDs) is checked against
   Kubernetes' ObjectMeta. Where the schemas are absent this part is skipped, saying so.

Prints a table of what was validated and exits 1 on any problem (2 when a tool is missing).
What it cannot check without a cluster: admission webhooks (KServe's included), that images
pull, that Secrets and PersistentVolumes exist, and anything the API server defaults.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.32.0"
"""The oldest Kubernetes the manifests target: native gRPC probes (GA 1.27) and the preStop
`sleep` action (beta, on by default, since 1.30) are there; kubectl here is 1.32 too."""
SCHEMAS = HERE.parent.parent / "shared" / "schemas" / "kserve"
GRPC_PORT = 8001
DRAIN_SETTING = "KILN_SERVE_DRAIN_TIMEOUT_S"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
DEFAULT_DRAIN_S = 30.0  # ServingSettings.drain_timeout_s
# libyaml's parser where PyYAML has it: the InferenceService CRD is 2 MB, ~10 s in pure Python.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Row:
    source: str
    obj: str
    check: str
    problem: str = ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--deploy", type=Path, default=HERE, help="folder with kubernetes/, kserve/"
    )
    parser.add_argument("--kserve-schemas", type=Path, default=SCHEMAS)
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("kubectl is not on PATH: install kubectl (1.27 or later) to render the overlays")
        return 2
    rows: list[Row] = []
    overlays = sorted(
        p.parent for p in (args.deploy / "kubernetes" / "overlays").glob("*/kustomization.yaml")
    )
    if not overlays:
        rows.append(
            Row(str(args.deploy / "kubernetes" / "overlays"), "-", "render", "no overlays found")
        )
    for overlay in overlays:
        rows.extend(check_overlay(kubectl, overlay, args.kubernetes_version, args.deploy))
    kserve = sorted((args.deploy / "kserve").glob("*.yaml"))
    if not args.kserve_schemas.is_dir():
        print(
            f"skipping the KServe manifests ({len(kserve)} files): no CRD schemas at "
            f"{args.kserve_schemas} (pass --kserve-schemas DIR)"
        )
    else:
        rows.extend(check_kserve(kserve, args.kserve_schemas, args.kubernetes_version, args.deploy))
    print_table(rows)
    failed = [r for r in rows if r.problem]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


# -- Kubernetes ---------------------------------------------------------------------------


def check_overlay(kubectl: str, overlay: Path, version: str, root: Path) -> list[Row]:
    source = (
        str(overlay.relative_to(root.parent))
        if overlay.is_relative_to(root.parent)
        else str(overlay)
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if rendered.returncode != 0:
        return [Row(source, "-", "kubectl kustomize", rendered.stderr.strip() or "failed")]
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    rows = [Row(source, f"{len(objects)} objects", "kubectl kustomize")]
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        rows.append(
            Row(source, name, f"kubernetes-validate --strict {version}", core_problem(obj, version))
        )
        if obj.get("kind") == "Deployment":
            config = {
                o["metadata"]["name"]: o.get("data", {})
                for o in objects
                if o.get("kind") == "ConfigMap"
            }
            rows.append(
                Row(source, name, "Kiln's serving invariants", serving_problem(obj, config))
            )
    return rows


def core_problem(obj: dict[str, Any], version: str) -> str:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top)"
        return f"{where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return f"no schema: {exc.message}"
    return ""


def serving_problem(deployment: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> str:
    """What the docs promise of the serving Deployment, beyond schema validity."""
    pod = deployment["spec"]["template"]["spec"]
    problems = []
    for container in pod["containers"]:
        drain = DEFAULT_DRAIN_S
        for source in container.get("envFrom", []):
            name = source.get("configMapRef", {}).get("name")
            drain = float(configmaps.get(name, {}).get(DRAIN_SETTING, drain))
        problems += container_problems(container, "grpc", pod, drain)
    return "; ".join(problems)


def container_problems(
    container: dict[str, Any], port_name: str, pod: dict[str, Any], drain: float
) -> list[str]:
    """A `kiln serve` container's promises: its gRPC port named `port_name`, probes through
    the gRPC health service, no writable root, a pod that runs as non-root and (`pod` given)
    gives SIGTERM longer than the drain."""
    name = container.get("name")
    problems = []
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    if ports.get(port_name) != GRPC_PORT:
        problems.append(f"{name}: no port named {port_name} on {GRPC_PORT}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if container.get(probe, {}).get("grpc", {}).get("port") != GRPC_PORT:
            problems.append(f"{name}: {probe} is not a gRPC health check on {GRPC_PORT}")
    security = container.get("securityContext", {})
    if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation", True):
        problems.append(f"{name}: writable root filesystem or privilege escalation allowed")
    non_root = pod.get("securityContext", {}).get("runAsNonRoot") or security.get("runAsNonRoot")
    if not non_root:
        problems.append(f"{name} may run as root (securityContext.runAsNonRoot)")
    if pod and pod.get("terminationGracePeriodSeconds", 30) <= drain:
        problems.append(f"terminationGracePeriodSeconds is not longer than the drain ({drain:g} s)")
    return problems


def model_problems(predictor: dict[str, Any]) -> list[str]:
    """An InferenceService predictor that names model format `kiln` (the runtime serves it)."""
    model, problems = predictor["model"], []
    if model.get("modelFormat", {}).get("name") != "kiln":
        problems.append("predictor.model.modelFormat.name is not kiln")
    if model.get("protocolVersion") != "grpc-v2":
        problems.append("predictor.model.protocolVersion is not grpc-v2")
    if not model.get("storageUri"):
        problems.append("predictor.model has no storageUri")
    if predictor.get("terminationGracePeriodSeconds", 30) <= DEFAULT_DRAIN_S:
        problems.append("terminationGracePeriodSeconds is not longer than the drain")
    return problems


def kserve_problem(obj: dict[str, Any]) -> str:
    """What Kiln's KServe objects promise: Standard mode, a `kserve-container` serving gRPC on
    a port named h2c, `--bundle /mnt/models`, model format `kiln` over grpc-v2."""
    problems = []
    spec = obj.get("spec", {})
    if obj.get("kind") == "InferenceService":
        mode = obj.get("metadata", {}).get("annotations", {}).get(MODE_ANNOTATION)
        if mode != "Standard":
            problems.append(f"annotation {MODE_ANNOTATION} is {mode!r}, not 'Standard'")
        predictor = spec.get("predictor", {})
        if predictor.get("model") is not None:
            return "; ".join(problems + model_problems(predictor))
        containers, pod = predictor.get("containers", []), predictor
    else:  # a (Cluster)ServingRuntime
        formats = [f.get("name") for f in spec.get("supportedModelFormats", [])]
        if "kiln" not in formats or spec.get("protocolVersions") != ["grpc-v2"]:
            problems.append("it does not serve model format kiln over protocolVersions [grpc-v2]")
        # The grace period belongs to the InferenceService's predictor (a runtime has none).
        containers, pod = spec.get("containers", []), {}
    serving = [c for c in containers if c.get("name") == "kserve-container"]
    if not serving:
        return "; ".join([*problems, "no container named kserve-container"])
    container = serving[0]
    args = container.get("args", [])
    bundle = args[args.index("--bundle") + 1] if "--bundle" in args[:-1] else None
    if bundle != "/mnt/models":
        problems.append("kserve-container's args do not say --bundle /mnt/models")
    drain = DEFAULT_DRAIN_S
    for variable in container.get("env", []):
        if variable.get("name") == DRAIN_SETTING:
            drain = float(variable.get("value", drain))
    problems += container_problems(container, "h2c", pod, drain)
    return "; ".join(problems)


# -- KServe -------------------------------------------------------------------------------


def check_kserve(files: list[Path], schemas: Path, version: str, root: Path) -> list[Row]:
    validators = crd_validators(schemas)
    rows = []
    for file in files:
        source = (
            str(file.relative_to(root.parent)) if file.is_relative_to(root.parent) else str(file)
        )
        try:
            objects = [o for o in yaml.safe_load_all(file.read_text()) if o]
        except yaml.YAMLError as exc:
            rows.append(Row(source, "-", "YAML", str(exc).splitlines()[0]))
            continue
        for obj in objects:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            key = (str(obj.get("apiVersion")), str(obj.get("kind")))
            validator = validators.get(key)
            if validator is None:
                known = ", ".join(f"{k} {a}" for a, k in sorted(validators))
                rows.append(
                    Row(
                        source, name, "KServe CRD", f"no CRD for {key[1]} {key[0]} (known: {known})"
                    )
                )
                continue
            rows.append(
                Row(source, name, "CRD openAPIV3Schema, strict", schema_problem(validator, obj))
            )
            rows.append(Row(source, name, "Kiln's KServe invariants", kserve_problem(obj)))
            # The CRDs leave metadata open: check it as any object's metadata.
            meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
            rows.append(
                Row(
                    source,
                    name,
                    f"metadata: ObjectMeta --strict {version}",
                    core_problem(meta, version),
                )
            )
    return rows


def crd_validators(folder: Path) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator, for every served version of every CRD."""
    found: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for file in sorted(folder.glob("*.yaml")):
        crd = yaml.load(file.read_text(), Loader=LOADER)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for served in crd["spec"]["versions"]:
            if served.get("served"):
                schema = strict(served["schema"]["openAPIV3Schema"])
                found[(f"{group}/{served['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return found


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema where every object schema that lists `properties`
    rejects other properties, unless it says `x-kubernetes-preserve-unknown-fields`."""
    schema = copy.deepcopy(schema)
    for node in _schemas(schema):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    return schema


def _schemas(schema: Any) -> Iterator[dict[str, Any]]:
    pending = [schema]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict):
            continue
        yield node
        pending.extend(node.get("properties", {}).values())
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                pending.append(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            pending.extend(node.get(key, []))


def schema_problem(validator: jsonschema.protocols.Validator, obj: dict[str, Any]) -> str:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    return "; ".join(f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors[:5])


# -- output -------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = Row("source", "object", "check", "result")
    cells = [
        (r.source, r.obj, r.check, "ok" if not r.problem else f"FAIL {r.problem}") for r in rows
    ]
    widths = [
        max(len(c[i]) for c in [(header.source, header.obj, header.check, ""), *cells])
        for i in range(3)
    ]
    lines = [(header.source, header.obj, header.check, header.problem), *cells]
    for source, obj, check, result in lines:
        print(f"{source:<{widths[0]}}  {obj:<{widths[1]}}  {check:<{widths[2]}}  {result}")


if __name__ == "__main__":
    sys.exit(main())
