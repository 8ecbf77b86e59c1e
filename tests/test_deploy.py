"""deploy/: the Kubernetes manifest against the Kubernetes schemas, and the Dockerfile.

The manifest is validated with kubernetes-validate (the API's own JSON schemas,
strict: unknown fields are errors), then checked for what the daemon needs:
its ConfigMap holds a config that coschedd accepts with the environment the
DaemonSet gives it, the grace period outlasts stop_timeout, the probes and
Prometheus annotations name the port the daemon listens on. The image is
built only where a container engine runs (`docker info` succeeds).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cosched.config import SCHEMA, load_config
from cosched.envconfig import OTHER_VARIABLES, overrides

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "kubernetes" / "coschedd.yaml"
DOCKERFILE = REPO / "Dockerfile"
K8S_VERSION = "1.30.0"


def documents() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d
            for d in yaml.safe_load_all(MANIFEST.read_text())}


def daemonset() -> dict:
    return documents()["DaemonSet/coschedd"]


def container_env() -> dict[str, str]:
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_every_document_is_valid_against_the_kubernetes_schemas():
    docs = documents()
    assert set(docs) == {"Namespace/cosched", "ConfigMap/coschedd-config",
                         "ConfigMap/coschedd-jobs", "DaemonSet/coschedd"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught_by_the_validation():
    """The validation used above does reject mistakes (a typo, a wrong type)."""
    ds = daemonset()
    ds["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)
    ds = daemonset()
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9469"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_the_configmap_config_is_accepted_with_the_daemonsets_environment(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "coschedd.toml").write_text(
        documents()["ConfigMap/coschedd-config"]["data"]["coschedd.toml"])
    env = container_env()
    config = load_config(etc / "coschedd.toml", environ=env)
    assert config.warnings == ()
    assert (config.log_format, config.log_stream) == ("json", "stdout")
    assert str(config.jobs_dir) == "/etc/cosched/jobs" and str(config.runtime_dir) == "/run/cosched"
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > config.stop_timeout + 5
    port = config.metrics_listen[1]
    (container,) = spec["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    annotations = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}


def test_the_daemon_runs_as_a_non_root_user_without_privileges():
    spec = daemonset()["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert all(m.get("readOnly") for m in container["volumeMounts"]
               if m["mountPath"] == "/etc/cosched")


def test_the_jobs_configmap_holds_python_job_files():
    for name, source in documents()["ConfigMap/coschedd-jobs"]["data"].items():
        assert name.endswith(".py")
        code = compile(source, name, "exec")
        assert "main" in code.co_names


def test_every_cosched_variable_of_the_image_and_the_pod_is_a_known_one():
    for env in (dockerfile_env(), container_env()):
        assert env, "no COSCHED_ variables found"
        values, notes = overrides(SCHEMA, env)
        assert notes == []
        known = {k for k in env if k in OTHER_VARIABLES} | {
            f"COSCHED_{s.upper()}_{k.upper()}" for s, keys in values.items() for k in keys}
        assert known == {k for k in env if k.startswith("COSCHED_")}


def test_the_dockerfile_runs_as_a_user_logs_json_to_stdout_and_checks_health():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = dockerfile_env()
    assert (env["COSCHED_LOG_FORMAT"], env["COSCHED_LOG_STREAM"]) == ("json", "stdout")
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text.replace("\\\n", " "), re.M)
    assert healthcheck and '"coschedctl"' in healthcheck.group(1) and '"ping"' in \
        healthcheck.group(1)
    assert re.search(r"^ENTRYPOINT .*coschedd", text, re.M)


def _engine_runs() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _engine_runs(), reason="no container engine runs here (docker info fails)")
def test_the_image_builds_and_answers_ping():
    subprocess.run(["docker", "build", "-t", "cosched:test", str(REPO)], check=True, timeout=900)
    name = "cosched-test-ping"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "cosched:test"], check=True,
                   timeout=60)
    try:
        for _ in range(100):
            proc = subprocess.run(["docker", "exec", name, "coschedctl", "ping"],
                                  capture_output=True, text=True, timeout=30)
            if proc.returncode == 0:
                break
        assert proc.returncode == 0, proc.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
