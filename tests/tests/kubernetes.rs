//! `deploy/kubernetes` as a cluster gets it: `kubectl kustomize` renders the base, and the
//! rendered objects pass `kubernetes-validate --strict` for a current Kubernetes version
//! (prometheus-operator's kinds have no schema there; their shape is checked here). The
//! image (`deploy/container/Containerfile`) installs the Debian package, which
//! `tests/tests/package.rs` checks: a test cannot pull a base image, so the build itself is
//! not run.
use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn output_of(command: &mut Command, what: &str) -> Result<String> {
    let output = command.output().with_context(|| format!("{what} (`make setup` installs it)"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "{what}: {text}{}", String::from_utf8_lossy(&output.stderr));
    Ok(text + &String::from_utf8_lossy(&output.stderr))
}

/// The object of `kind` among `objects`.
fn kind<'a>(objects: &'a [Value], kind: &str) -> Result<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind).with_context(|| format!("no {kind} rendered"))
}

#[test]
fn kustomize_renders_valid_objects_that_fit_together() -> Result<()> {
    let rendered = output_of(
        Command::new("kubectl").args(["kustomize"]).arg(deploy("kubernetes")),
        "kubectl kustomize",
    )?;
    let objects: Vec<Value> = reconciler_core::load::parse(&rendered)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .into_iter()
        .map(|d| d.value)
        .collect();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered)?;
    let validated = output_of(
        Command::new("kubernetes-validate").arg("--strict").arg(&file),
        "kubernetes-validate",
    )?;
    for resource in ["namespace/reconciler", "daemonset/reconciler", "configmap/", "secret/"] {
        ensure!(validated.contains(&format!("passed for resource {resource}")), "{validated}");
    }
    ensure!(!validated.contains("failed"), "{validated}");

    // The DaemonSet: the host's PIDs, probes, resources, the node's name, and the generated
    // ConfigMap and Secret by the names kustomize gave them.
    let daemonset = kind(&objects, "DaemonSet")?;
    let pod = &daemonset["spec"]["template"]["spec"];
    ensure!(pod["hostPID"] == true && pod["hostNetwork"] == true, "{pod:#}");
    let container = &pod["containers"][0];
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "{container:#}");
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "{container:#}");
    ensure!(container["resources"]["limits"]["memory"].is_string(), "{container:#}");
    ensure!(container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName");
    let config_map = kind(&objects, "ConfigMap")?;
    let secret = kind(&objects, "Secret")?;
    let volumes = pod["volumes"].as_array().context("volumes")?;
    ensure!(volumes.iter().any(|v| v["configMap"]["name"] == config_map["metadata"]["name"]));
    ensure!(volumes.iter().any(|v| v["secret"]["secretName"] == secret["metadata"]["name"]));

    // Its configuration is valid, webhook secret and all.
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "a-webhook-secret\n")?;
    let text = config_map["data"]["config.yaml"].as_str().context("config.yaml")?;
    let text = text
        .replace("${NODE_NAME}", "node-7")
        .replace("/etc/reconciler-webhook/secret", &secret_file.display().to_string());
    let parsed = reconciler::daemon::config::parse("config.yaml", &text)
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    ensure!(parsed.listen.to_string() == "0.0.0.0:9469" && parsed.node.name == "node-7");
    ensure!(parsed.webhook_secret.is_some());

    // prometheus-operator: the PodMonitor selects the pods on their metrics port, and the
    // PrometheusRule holds deploy/prometheus/alerts.yaml as it is.
    let monitor = kind(&objects, "PodMonitor")?;
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    ensure!(monitor["spec"]["selector"]["matchLabels"] == *labels, "{monitor:#}");
    let port = &monitor["spec"]["podMetricsEndpoints"][0]["port"];
    ensure!(container["ports"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == *port)));
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yaml"))?;
    let alerts = &reconciler_core::load::parse(&alerts).map_err(|e| anyhow::anyhow!("{e:?}"))?[0];
    let rule = kind(&objects, "PrometheusRule")?;
    ensure!(rule["spec"] == alerts.value, "the PrometheusRule differs from alerts.yaml");

    // The image installs the package, and runs its binary.
    let containerfile = std::fs::read_to_string(deploy("container/Containerfile"))?;
    ensure!(containerfile.contains("COPY reconciler_*.deb /tmp/"), "{containerfile}");
    ensure!(
        containerfile.contains("apt-get install -y --no-install-recommends /tmp/reconciler_*.deb")
    );
    ensure!(containerfile.contains("ENTRYPOINT [\"/usr/bin/reconciler\"]"), "{containerfile}");
    ensure!(container["args"][0] == "daemon", "{container:#}");
    Ok(())
}
