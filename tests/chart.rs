//! The helm chart and the container build, checked without a cluster: the chart is rendered by
//! Go's text/template with the sprig functions (Helm's engine; `tests/support/helm-render`),
//! every manifest must parse as YAML and validate strictly against the Kubernetes API schemas,
//! and what it says is checked: probes, security context,
//! scratch volume, hooks, the optional sidecar and ServiceMonitor, and that every `FS_*`
//! variable the service reads can be set from values.

use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("helm/file-system")
}

/// Renders the chart with `values` (YAML) over its defaults: the manifests, or the error.
fn render(values: &str) -> Result<Vec<Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let cache = std::env::var("HOME").map_or_else(
        |_| dir.path().join("go-build"),
        |h| Path::new(&h).join(".cache/go-build"),
    );
    let out = Command::new("go")
        .arg("run")
        .arg(root().join("tests/support/helm-render/main.go"))
        .arg(chart())
        .arg(&file)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", cache)
        .env("GOFLAGS", "")
        .output()
        .expect("go must be installed (scripts/test installs Debian's golang-go)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    kubernetes_schema_check(&text, dir.path());
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = <Value as serde::Deserialize>::deserialize(doc)
            .unwrap_or_else(|e| panic!("a rendered manifest is not YAML: {e}\n{text}"));
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Validates manifests strictly (no unknown fields) against the Kubernetes API's own schemas,
/// with kubernetes-validate (PyPI; it bundles the schemas, so no cluster is needed). The
/// ServiceMonitor is a CRD it has no schema for: it is only warned about.
fn kubernetes_schema_check(manifests: &str, dir: &Path) {
    let file = dir.join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "--no-warn",
        ])
        .arg(&file)
        .output()
        .expect("python3 with kubernetes-validate (scripts/test installs it)");
    assert!(
        out.status.success(),
        "manifests do not match the Kubernetes API: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .map(|e| &e["value"])
        .unwrap_or(&Value::Null)
}

const BASIC: &str = "
database: {host: pg.example, password: s3cret}
s3: {accessKeyId: AK, secretAccessKey: SK}
config: {FS_S3_ENDPOINT: 'http://minio:9000'}
";

/// The `FS_*` variables the service reads: every `"FS_..."` name `Config::from_vars` reads in
/// src/config.rs (before its tests).
fn service_variables() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("src/config.rs")).unwrap();
    let body = src
        .split("pub fn from_vars(")
        .nth(1)
        .and_then(|s| s.split("#[cfg(test)]").next())
        .expect("Config::from_vars in src/config.rs");
    let vars: BTreeSet<String> = body
        .split("r.get(\"")
        .chain(body.split("r.opt(\""))
        .chain(body.split("r.string(\""))
        .chain(body.split("r.path(\""))
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| {
            name.starts_with("FS_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect();
    assert!(vars.len() > 20, "{vars:?}");
    vars
}

#[test]
fn default_release_renders_a_safe_deployment() {
    let docs = render(BASIC).unwrap();
    let want: BTreeSet<String> = [
        "ConfigMap/fs-file-system",
        "Secret/fs-file-system",
        "Service/fs-file-system",
        "Deployment/fs-file-system",
        "PodDisruptionBudget/fs-file-system",
        "Secret/fs-file-system-migrate",
        "Job/fs-file-system-migrate",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(&docs), want);

    let dep = find(&docs, "Deployment", "fs-file-system");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    let c = &pod["containers"][0];
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    assert_eq!(c["args"], serde_json::json!(["serve"]));
    assert_eq!(c["ports"][0]["containerPort"], 9500);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(
        c["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["sleep", "5"])
    );
    assert_eq!(env_value(c, "FS_SCRATCH_DIR"), "/scratch");
    assert_eq!(env_value(c, "POSTGRES_HOST"), "pg.example");
    assert_eq!(env_value(c, "POSTGRES_DB_NAME"), "filesystem");
    assert!(!env_names(c).contains("FS_IMAGEOPS_URL"));
    assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "fs-file-system");
    assert_eq!(c["envFrom"][1]["secretRef"]["name"], "fs-file-system");
    // The scratch volume is an emptyDir with a size limit, mounted where FS_SCRATCH_DIR says.
    let scratch = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "scratch")
        .unwrap();
    assert_eq!(scratch["emptyDir"]["sizeLimit"], "50Gi");
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "scratch" && m["mountPath"] == "/scratch"));
    // Settings changes roll the pods.
    let ann = &dep["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["checksum/config"].as_str().unwrap().len(), 64);

    let svc = find(&docs, "Service", "fs-file-system");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9500);
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["selector"]["matchLabels"]
    );

    // Credentials are in the Secret, base64, never in the ConfigMap.
    let secret = find(&docs, "Secret", "fs-file-system");
    assert_eq!(secret["data"]["POSTGRES_PASSWORD"], "czNjcmV0");
    assert_eq!(secret["data"]["AWS_ACCESS_KEY_ID"], "QUs=");
    let cm = find(&docs, "ConfigMap", "fs-file-system");
    assert!(!serde_json::to_string(cm).unwrap().contains("s3cret"));
    assert_eq!(cm["data"]["FS_S3_ENDPOINT"], "http://minio:9000");
    assert_eq!(cm["data"]["FS_STORAGE"], "s3");

    // Migrations run as a pre-install/pre-upgrade hook, with a Secret that exists by then.
    let job = find(&docs, "Job", "fs-file-system-migrate");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    let jc = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(jc["args"], serde_json::json!(["migrate"]));
    assert_eq!(
        jc["envFrom"][0]["secretRef"]["name"],
        "fs-file-system-migrate"
    );
    assert_eq!(env_value(jc, "POSTGRES_HOST"), "pg.example");
    let hook_secret = find(&docs, "Secret", "fs-file-system-migrate");
    assert_eq!(
        hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"],
        "-5"
    );
    assert_eq!(hook_secret["data"]["POSTGRES_PASSWORD"], "czNjcmV0");
}

#[test]
fn sidecar_service_monitor_and_existing_secret() {
    let docs = render(
        "
replicaCount: 4
existingSecret: my-creds
database: {url: ''}
imageops: {sidecar: {enabled: true}}
metrics: {serviceMonitor: {enabled: true, labels: {release: prom}}}
serviceAccount: {create: true, annotations: {eks.amazonaws.com/role-arn: 'arn:aws:iam::1:role/fs'}}
podDisruptionBudget: {enabled: false}
",
    )
    .unwrap();
    let names = kinds(&docs);
    assert!(!names.contains("Secret/fs-file-system"), "{names:?}");
    assert!(
        !names.contains("Secret/fs-file-system-migrate"),
        "{names:?}"
    );
    assert!(!names.contains("PodDisruptionBudget/fs-file-system"));
    let sm = find(&docs, "ServiceMonitor", "fs-file-system");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    let sa = find(&docs, "ServiceAccount", "fs-file-system");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/fs"
    );

    let dep = find(&docs, "Deployment", "fs-file-system");
    assert_eq!(dep["spec"]["replicas"], 4);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fs-file-system");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    let (app, ops) = (&containers[0], &containers[1]);
    assert_eq!(app["envFrom"][1]["secretRef"]["name"], "my-creds");
    assert_eq!(env_value(app, "FS_IMAGEOPS_URL"), "http://127.0.0.1:5000");
    assert_eq!(ops["args"], serde_json::json!(["imageops"]));
    assert_eq!(ops["image"], app["image"]);
    assert_eq!(env_value(ops, "FS_IMAGEOPS_LISTEN"), "127.0.0.1:5000");
    // Both see the scratch volume under the same path (the service hands over file names).
    assert_eq!(
        env_value(ops, "FS_SCRATCH_DIR"),
        env_value(app, "FS_SCRATCH_DIR")
    );
    for c in [app, ops] {
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "scratch" && m["mountPath"] == "/scratch"));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    }
    // The migration job reads the user's Secret.
    let job = find(&docs, "Job", "fs-file-system-migrate");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "my-creds"
    );
}

#[test]
fn a_release_without_a_database_is_refused() {
    let err = render("{}").unwrap_err();
    assert!(err.contains("set database.url or database.host"), "{err}");
}

/// Every variable the service reads can be set from values: `FS_*` through `config` (the
/// ConfigMap), except those the chart sets itself in the pod spec.
#[test]
fn every_service_variable_is_settable_from_values() {
    let vars = service_variables();
    // Set every variable to a marker of its own, and find it in what the pod gets.
    let mut values = String::from("database: {host: db}\nconfig:\n");
    for v in &vars {
        values.push_str(&format!("  {v}: 'marker-{v}'\n"));
    }
    let docs = render(&values).unwrap();
    let cm = &find(&docs, "ConfigMap", "fs-file-system")["data"];
    let dep = find(&docs, "Deployment", "fs-file-system");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let fixed_by_chart = env_names(c);
    for v in &vars {
        assert_eq!(
            cm[v],
            format!("marker-{v}"),
            "{v} is not passed from values"
        );
    }
    // The chart pins the listen address and scratch path (they must match the pod spec).
    for v in ["FS_LISTEN", "FS_SCRATCH_DIR"] {
        assert!(fixed_by_chart.contains(v), "{v}");
    }

    // values.yaml itself lists every variable (with its default), like .env.example.
    let defaults: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let listed: BTreeSet<String> = defaults["config"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let env_example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    for v in &vars {
        assert!(
            env_example.contains(&format!("{v}=")),
            "{v} is missing from .env.example"
        );
        if !["FS_LISTEN", "FS_SCRATCH_DIR"].contains(&v.as_str()) {
            assert!(listed.contains(v), "{v} is missing from values.yaml config");
        }
    }
}

/// Every `.Values.…` path a template reads exists in values.yaml (a typo would render as
/// nothing), and every value is documented in the chart's README.
#[test]
fn values_are_consistent_and_documented() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let resolve = |path: &str| -> bool {
        let mut v = &values;
        for key in path.split('.') {
            match v.get(key) {
                Some(next) => v = next,
                None => return false,
            }
        }
        true
    };
    let mut used = BTreeMap::new();
    for entry in std::fs::read_dir(chart().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(".Values.") {
            let rest = &text[i + ".Values.".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            let p = rest[..end].trim_end_matches('.').to_string();
            used.insert(p, path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(used.len() > 30, "{used:?}");
    for (p, file) in &used {
        assert!(
            resolve(p),
            "{file} reads .Values.{p}, which values.yaml does not have"
        );
    }

    // Every value, down to the settings objects passed through whole, is in the README.
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let opaque = [
        "config",
        "resources",
        "podSecurityContext",
        "securityContext",
        "strategy",
    ];
    let mut missing = vec![];
    fn walk(v: &Value, prefix: &str, opaque: &[&str], out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) if !map.is_empty() && !opaque.iter().any(|o| prefix.ends_with(o)) => {
                for (k, child) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &p, opaque, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut leaves = vec![];
    walk(&values, "", &opaque, &mut leaves);
    for leaf in leaves {
        if !readme.contains(&format!("`{leaf}`")) {
            missing.push(leaf);
        }
    }
    assert!(
        missing.is_empty(),
        "not in helm/file-system/README.md: {missing:?}"
    );
}

/// The container build: multi-stage, a small runtime with qemu-utils, the user the chart runs
/// as, and the port the chart probes.
#[test]
fn container_build_matches_the_chart() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages = docker.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    assert!(docker.contains("cargo build --release --locked"));
    let runtime = docker.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.starts_with("debian:") && runtime.contains("-slim"));
    assert!(runtime.contains("qemu-utils"));
    assert!(runtime.contains("USER 10001:10001"));
    assert!(runtime.contains("EXPOSE 9500"));
    // Everything the build copies exists.
    for line in docker
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(values["podSecurityContext"]["runAsUser"], 10001);
}
