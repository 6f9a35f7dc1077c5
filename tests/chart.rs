//! The helm chart and the container build, checked without a cluster: the chart is rendered by
//! Go's text/template with the sprig functions (Helm's engine; `tests/support/helm-render`),
//! every manifest must parse as YAML and validate strictly against the Kubernetes API schemas,
//! the values of every render must validate against the chart's `values.schema.json` (as
//! Helm validates them), and what it says is checked: probes, security context, scratch
//! volume, hooks, the optional sidecar, ServiceMonitor, Ingress, HPA, NetworkPolicy and
//! PodDisruptionBudget, anti-affinity, the migration Job's settings, and that every `FS_*`
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
/// The values must pass the chart's schema first, as `helm install` requires.
fn render(values: &str) -> Result<Vec<Value>, String> {
    if let Err(e) = schema_check(values) {
        panic!("values refused by values.schema.json: {e}\n{values}");
    }
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

/// Helm's merge of user values over the chart's defaults (as `helm -f` and helm-render do):
/// maps merge key by key, anything else replaces.
fn merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, s) => *d = s.clone(),
    }
}

/// Validates the chart's defaults with `values` (YAML) merged over them against
/// `values.schema.json`, the way Helm does before it renders: `Err` lists every violation.
/// The validator is Python's `jsonschema`, the reference implementation of JSON Schema
/// (kubernetes-validate is built on it, so it is already there; scripts/lib.sh installs it).
/// The schema itself is checked against the draft-07 meta-schema first.
fn schema_check(values: &str) -> Result<(), String> {
    let mut merged: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let user: Value = serde_yaml::from_str(values).unwrap();
    if !user.is_null() {
        merge(&mut merged, &user);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.json");
    std::fs::write(&file, serde_json::to_vec(&merged).unwrap()).unwrap();
    const SCRIPT: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
assert schema["$schema"] == "http://json-schema.org/draft-07/schema#", schema["$schema"]
jsonschema.Draft7Validator.check_schema(schema)
values = json.load(open(sys.argv[2]))
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: e.json_path)
for e in errors:
    print(f"{e.json_path}: {e.message}")
sys.exit(1 if errors else 0)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(chart().join("values.schema.json"))
        .arg(&file)
        .output()
        .expect("python3 with jsonschema (scripts/test installs it)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn try_find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    try_find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
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

fn env_entry<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .unwrap_or(&Value::Null)
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    &env_entry(container, name)["value"]
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
        "ConfigMap/fs-file-system-migrate",
        "Job/fs-file-system-migrate",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(&docs), want);

    let dep = find(&docs, "Deployment", "fs-file-system");
    pods_are_safe(dep);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    the_image_is_the_crates_version(c);
    replicas_spread_and_keep_scratch(dep);
    service_and_secrets(&docs, dep);
    migrations_run_as_a_hook(&docs);
}

/// Two replicas rolled without downtime, as a non-root user on a read-only root, probed, with
/// the settings of the values.
fn pods_are_safe(dep: &Value) {
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
    // A slow start (migrations, bucket checks) is not killed by the liveness probe.
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["startupProbe"]["failureThreshold"], 60);
    assert!(c["startupProbe"].get("enabled").is_none());
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
}

/// The published image, tagged with the chart's appVersion, which is the crate's version.
fn the_image_is_the_crates_version(c: &Value) {
    let chart_meta: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = cargo
        .split("[package]")
        .nth(1)
        .and_then(|p| p.lines().find(|l| l.starts_with("version = ")))
        .map(|l| l.trim_start_matches("version = ").trim_matches('"'))
        .unwrap();
    assert_eq!(chart_meta["appVersion"], version);
    assert_eq!(
        c["image"],
        format!("ghcr.io/file-system/file-system:{version}")
    );
}

/// Replicas spread over nodes by default (soft), without an Ingress, HPA or NetworkPolicy; the
/// scratch volume is an emptyDir with a size limit; settings changes roll the pods.
fn replicas_spread_and_keep_scratch(dep: &Value) {
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let anti = &pod["affinity"]["podAntiAffinity"];
    let term = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["weight"], 100);
    assert_eq!(
        term["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
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
}

/// The Service selects the pods; credentials are in the Secret, base64, never in the
/// ConfigMap.
fn service_and_secrets(docs: &[Value], dep: &Value) {
    let svc = find(docs, "Service", "fs-file-system");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9500);
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["selector"]["matchLabels"]
    );

    // Credentials are in the Secret, base64, never in the ConfigMap.
    let secret = find(docs, "Secret", "fs-file-system");
    assert_eq!(secret["data"]["POSTGRES_PASSWORD"], "czNjcmV0");
    assert_eq!(secret["data"]["AWS_ACCESS_KEY_ID"], "QUs=");
    let cm = find(docs, "ConfigMap", "fs-file-system");
    assert!(!serde_json::to_string(cm).unwrap().contains("s3cret"));
    assert_eq!(cm["data"]["FS_S3_ENDPOINT"], "http://minio:9000");
    assert_eq!(cm["data"]["FS_STORAGE"], "s3");
}

/// Migrations run as a pre-install/pre-upgrade hook, with a Secret that exists by then.
fn migrations_run_as_a_hook(docs: &[Value]) {
    let job = find(docs, "Job", "fs-file-system-migrate");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    let jc = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(jc["args"], serde_json::json!(["migrate"]));
    assert_eq!(
        jc["envFrom"][0]["configMapRef"]["name"],
        "fs-file-system-migrate"
    );
    assert_eq!(
        jc["envFrom"][1]["secretRef"]["name"],
        "fs-file-system-migrate"
    );
    assert_eq!(env_value(jc, "POSTGRES_HOST"), "pg.example");
    let hook_secret = find(docs, "Secret", "fs-file-system-migrate");
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
    // The user's Secret is read key by key (existing_secret_key_names has the details).
    assert_eq!(app["envFrom"].as_array().unwrap().len(), 1);
    assert_eq!(
        env_entry(app, "DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"],
        "my-creds"
    );
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
    let jc = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_entry(jc, "DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"],
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
    // The image ships a stripped binary without debug info, whatever the release profile says.
    let build = docker.split("\nFROM ").nth(1).unwrap();
    assert!(build.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"));
    assert!(build.contains("CARGO_PROFILE_RELEASE_DEBUG=false"));
    assert!(
        !docker.contains("\nHEALTHCHECK"),
        "the chart's probes check health"
    );
    // Everything the build copies is in git (a clean checkout builds) and not excluded from
    // the build context by .dockerignore.
    let ignored: Vec<String> = std::fs::read_to_string(root().join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    // Conservative: a pattern matches a path when it matches any of its components, with `*`
    // standing for any run of characters.
    fn glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head)
                    && (0..=name.len() - head.len()).any(|i| glob(tail, &name[head.len() + i..]))
            }
        }
    }
    for line in docker
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            let out = Command::new("git")
                .args(["ls-files", "--", src])
                .current_dir(root())
                .output()
                .expect("git");
            let files = String::from_utf8(out.stdout).unwrap();
            assert!(
                !files.trim().is_empty(),
                "Dockerfile copies {src}, which is not in git"
            );
            for file in files.lines() {
                for pattern in &ignored {
                    let p = pattern.trim_start_matches('/').trim_end_matches('/');
                    assert!(
                        !file.split('/').any(|part| glob(p, part)),
                        ".dockerignore pattern {pattern} excludes {file}, which the build copies"
                    );
                }
            }
        }
    }
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(values["podSecurityContext"]["runAsUser"], 10001);
}

fn containers(docs: &[Value], kind: &str, name: &str) -> Vec<Value> {
    find(docs, kind, name)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone()
}

/// The schema is valid draft-07 JSON Schema, takes the defaults (every render above also
/// checks its own values), and refuses what Helm would otherwise ignore silently: misspelt
/// keys at the top level and inside the chart's own objects, and values of the wrong kind.
#[test]
fn values_schema_refuses_typos() {
    schema_check("").expect("the defaults validate");
    schema_check(BASIC).unwrap();
    // A parent chart's globals are not this chart's business.
    schema_check("global: {imageRegistry: r.example}").unwrap();
    for (values, wanted) in [
        ("replicaCont: 3", "replicaCont"),
        ("ingress: {enabeld: true}", "enabeld"),
        ("database: {hostname: pg}", "hostname"),
        ("existingSecretKeys: {databaseURL: url}", "databaseURL"),
        ("autoscaling: {minReplica: 2}", "minReplica"),
        ("networkPolicy: {egress: {restricted: true}}", "restricted"),
        ("probes: {startup: {enable: false}}", "enable"),
        // Environment variable names only, so a lower-case key is a typo too.
        ("config: {fs_storage: s3}", "fs_storage"),
        ("podAntiAffinityPreset: medium", "medium"),
        // `tag: 1.10` is the number 1.1 in YAML: refused instead of pulling the wrong tag.
        ("image: {tag: 1.10}", "1.1"),
        ("replicaCount: two", "two"),
        ("extraEnv: [{value: x}]", "name"),
    ] {
        let err = schema_check(values).expect_err(values);
        assert!(err.contains(wanted), "{values}: {err}");
    }
}

/// Off by default; when on, the Ingress routes every host and path to the Service and
/// carries the ingress-nginx settings without which every image upload is refused (1 MiB
/// body limit) or spooled on the controller's disk; the user's annotations win.
#[test]
fn ingress_with_the_annotations_large_uploads_need() {
    let docs = render(BASIC).unwrap();
    assert!(try_find(&docs, "Ingress", "fs-file-system").is_none());

    let docs = render(&format!(
        "{BASIC}
ingress:
  enabled: true
  className: nginx
  annotations:
    nginx.ingress.kubernetes.io/proxy-send-timeout: '7200'
    cert-manager.io/cluster-issuer: letsencrypt
  hosts:
    - host: images.example.com
      paths: [{{path: /image-management, pathType: Prefix}}]
    - host: fs.example.com
  tls: [{{secretName: images-tls, hosts: [images.example.com]}}]
"
    ))
    .unwrap();
    let ing = find(&docs, "Ingress", "fs-file-system");
    let ann = &ing["metadata"]["annotations"];
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-body-size"], "0");
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-request-buffering"],
        "off"
    );
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-send-timeout"],
        "7200"
    );
    assert_eq!(ann["cert-manager.io/cluster-issuer"], "letsencrypt");
    let spec = &ing["spec"];
    assert_eq!(spec["ingressClassName"], "nginx");
    assert_eq!(spec["tls"][0]["secretName"], "images-tls");
    let rules = spec["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["host"], "images.example.com");
    assert_eq!(rules[0]["http"]["paths"][0]["path"], "/image-management");
    // A host without paths gets all of them.
    assert_eq!(rules[1]["host"], "fs.example.com");
    assert_eq!(rules[1]["http"]["paths"][0]["path"], "/");
    for rule in rules {
        let backend = &rule["http"]["paths"][0]["backend"]["service"];
        assert_eq!(backend["name"], "fs-file-system");
        assert_eq!(backend["port"]["name"], "http");
    }

    // Another controller: no nginx annotations, only the user's.
    let docs = render(&format!(
        "{BASIC}
ingress: {{enabled: true, nginxUploadAnnotations: false, className: traefik}}
"
    ))
    .unwrap();
    let ing = find(&docs, "Ingress", "fs-file-system");
    assert!(ing["metadata"].get("annotations").is_none(), "{ing}");
}

/// A PodDisruptionBudget only when more than one replica is guaranteed: a lone pod under
/// minAvailable 1 could never be evicted and node drains would hang. With the HPA, its
/// minimum counts, and the Deployment leaves `replicas` to it.
#[test]
fn pdb_only_with_several_replicas_and_the_autoscaler() {
    let pdb = |values: &str| -> Option<Value> {
        let docs = render(&format!("{BASIC}\n{values}")).unwrap();
        try_find(&docs, "PodDisruptionBudget", "fs-file-system").cloned()
    };
    assert!(pdb("replicaCount: 1").is_none());
    let two = pdb("replicaCount: 2").expect("a PDB at 2 replicas");
    assert_eq!(two["spec"]["minAvailable"], 1);
    assert!(two["spec"].get("maxUnavailable").is_none());
    let max = pdb("podDisruptionBudget: {maxUnavailable: 1}").unwrap();
    assert_eq!(max["spec"]["maxUnavailable"], 1);
    assert!(max["spec"].get("minAvailable").is_none());
    assert!(pdb("replicaCount: 3\nautoscaling: {enabled: true, minReplicas: 1}").is_none());
    assert!(pdb("replicaCount: 1\nautoscaling: {enabled: true, minReplicas: 2}").is_some());
    assert!(pdb("podDisruptionBudget: {enabled: false}").is_none());

    let docs = render(&format!(
        "{BASIC}
autoscaling:
  enabled: true
  minReplicas: 3
  maxReplicas: 9
  targetCPUUtilizationPercentage: 60
  targetMemoryUtilizationPercentage: 80
  behavior: {{scaleDown: {{stabilizationWindowSeconds: 600}}}}
"
    ))
    .unwrap();
    let hpa = find(&docs, "HorizontalPodAutoscaler", "fs-file-system");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let spec = &hpa["spec"];
    assert_eq!(spec["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(spec["scaleTargetRef"]["name"], "fs-file-system");
    assert_eq!(spec["minReplicas"], 3);
    assert_eq!(spec["maxReplicas"], 9);
    assert_eq!(spec["metrics"][0]["resource"]["name"], "cpu");
    assert_eq!(
        spec["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    assert_eq!(spec["metrics"][1]["resource"]["name"], "memory");
    assert_eq!(
        spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        600
    );
    let dep = find(&docs, "Deployment", "fs-file-system");
    assert!(
        dep["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    assert!(try_find(
        &render(BASIC).unwrap(),
        "HorizontalPodAutoscaler",
        "fs-file-system"
    )
    .is_none());

    let err = render(&format!(
        "{BASIC}\nautoscaling: {{enabled: true, minReplicas: 5, maxReplicas: 2}}"
    ))
    .unwrap_err();
    assert!(err.contains("minReplicas is above"), "{err}");
}

/// Ingress only to the API port (from the peers given, or any); egress open, or restricted
/// to DNS, the database and S3 with configurable peers and ports.
#[test]
fn network_policy() {
    assert!(try_find(&render(BASIC).unwrap(), "NetworkPolicy", "fs-file-system").is_none());

    let docs = render(&format!(
        "{BASIC}
networkPolicy:
  enabled: true
  ingress:
    from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ingress-nginx}}}}}}]
"
    ))
    .unwrap();
    let np = &find(&docs, "NetworkPolicy", "fs-file-system")["spec"];
    let dep = find(&docs, "Deployment", "fs-file-system");
    assert_eq!(
        np["podSelector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(np["ingress"][0]["ports"][0]["port"], "http");
    assert_eq!(
        np["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    assert!(np.get("egress").is_none());

    let docs = render(&format!(
        "{BASIC}
networkPolicy:
  enabled: true
  egress:
    restrict: true
    database: {{to: [{{ipBlock: {{cidr: 10.0.5.0/24}}}}], ports: [6432]}}
    s3: {{ports: [443]}}
    extra: [{{ports: [{{port: 5000, protocol: TCP}}]}}]
"
    ))
    .unwrap();
    let np = &find(&docs, "NetworkPolicy", "fs-file-system")["spec"];
    assert_eq!(np["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    let egress = np["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 4);
    let dns: BTreeSet<String> = egress[0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(dns, ["53/TCP", "53/UDP"].map(String::from).into());
    assert!(egress[0].get("to").is_none(), "DNS anywhere by default");
    assert_eq!(egress[1]["ports"][0]["port"], 6432);
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "10.0.5.0/24");
    assert_eq!(
        egress[2]["ports"],
        serde_json::json!([{"port": 443, "protocol": "TCP"}])
    );
    assert_eq!(egress[3]["ports"][0]["port"], 5000);
}

/// existingSecret is read key by key under the names the user gives; a key name set to ""
/// is not read; the chart then creates no Secret of its own.
#[test]
fn existing_secret_key_names() {
    let docs = render(
        "
database: {host: pg.example}
existingSecret: vault-synced
existingSecretKeys:
  databaseUrl: ''
  databasePassword: pg-password
  accessKeyId: s3-access-key
  secretAccessKey: s3-secret-key
",
    )
    .unwrap();
    let names = kinds(&docs);
    assert!(!names.contains("Secret/fs-file-system"), "{names:?}");
    assert!(
        !names.contains("Secret/fs-file-system-migrate"),
        "{names:?}"
    );
    for c in [
        &containers(&docs, "Deployment", "fs-file-system")[0],
        &containers(&docs, "Job", "fs-file-system-migrate")[0],
    ] {
        for (var, key) in [
            ("POSTGRES_PASSWORD", "pg-password"),
            ("AWS_ACCESS_KEY_ID", "s3-access-key"),
            ("AWS_SECRET_ACCESS_KEY", "s3-secret-key"),
        ] {
            let r = &env_entry(c, var)["valueFrom"]["secretKeyRef"];
            assert_eq!(r["name"], "vault-synced", "{var}");
            assert_eq!(r["key"], key, "{var}");
            // A Secret without the AWS keys (IRSA) still starts the pod.
            assert_eq!(r["optional"], true, "{var}");
        }
        assert!(!env_names(c).contains("DATABASE_URL"));
        assert_eq!(env_value(c, "POSTGRES_HOST"), "pg.example");
        let from = serde_json::to_string(&c["envFrom"]).unwrap();
        assert!(!from.contains("secretRef"), "{from}");
    }
    // The default key names are the variable names.
    let docs = render("existingSecret: creds").unwrap();
    let c = &containers(&docs, "Deployment", "fs-file-system")[0];
    assert_eq!(
        env_entry(c, "DATABASE_URL")["valueFrom"]["secretKeyRef"]["key"],
        "DATABASE_URL"
    );
}

/// The migration Job runs the service's code against the same database with the same
/// settings: the same config (a hook copy of the ConfigMap, since the release's own does not
/// exist yet before install), the same credentials, extraEnv, extraEnvFrom and extra volumes.
/// Its pod is not one of the Service's endpoints.
#[test]
fn migration_job_gets_the_deployments_settings() {
    let docs = render(&format!(
        "{BASIC}
extraEnv:
  - {{name: PGSSLROOTCERT, value: /etc/fs-ca/ca.crt}}
  - {{name: FS_TOKEN, valueFrom: {{secretKeyRef: {{name: tokens, key: fs}}}}}}
extraEnvFrom: [{{configMapRef: {{name: site-settings}}}}]
extraVolumes: [{{name: ca, configMap: {{name: fs-ca}}}}]
extraVolumeMounts: [{{name: ca, mountPath: /etc/fs-ca, readOnly: true}}]
imagePullSecrets: [{{name: regcred}}]
podAnnotations: {{example.com/team: images}}
podLabels: {{team: images}}
"
    ))
    .unwrap();
    let dep = find(&docs, "Deployment", "fs-file-system");
    let job = find(&docs, "Job", "fs-file-system-migrate");
    let (dpod, jpod) = (&dep["spec"]["template"], &job["spec"]["template"]);
    let (app, migrate) = (
        &dpod["spec"]["containers"][0],
        &jpod["spec"]["containers"][0],
    );

    // The same env entries, but those that place the server process (port, scratch).
    let mut app_env = app["env"].as_array().unwrap().clone();
    app_env.retain(|e| !["FS_LISTEN", "FS_SCRATCH_DIR"].contains(&e["name"].as_str().unwrap()));
    assert_eq!(&app_env, migrate["env"].as_array().unwrap());
    assert_eq!(env_value(migrate, "PGSSLROOTCERT"), "/etc/fs-ca/ca.crt");
    assert_eq!(
        env_entry(migrate, "FS_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        "tokens"
    );
    // The same sources, the hook's copies in place of the release's objects.
    let sources = |c: &Value| serde_json::to_string(&c["envFrom"]).unwrap();
    assert_eq!(
        sources(app).replace("fs-file-system\"", "fs-file-system-migrate\""),
        sources(migrate)
    );
    assert!(sources(migrate).contains("site-settings"));
    let cm = find(&docs, "ConfigMap", "fs-file-system");
    let hook_cm = find(&docs, "ConfigMap", "fs-file-system-migrate");
    assert_eq!(cm["data"], hook_cm["data"]);
    assert_eq!(
        hook_cm["metadata"]["annotations"]["helm.sh/hook-weight"],
        "-5"
    );
    let secret = find(&docs, "Secret", "fs-file-system");
    assert_eq!(
        secret["data"],
        find(&docs, "Secret", "fs-file-system-migrate")["data"]
    );
    // Extra volumes, pull secrets and annotations reach both pods.
    for pod in [dpod, jpod] {
        assert!(pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "ca" && v["configMap"]["name"] == "fs-ca"));
        assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
        assert_eq!(pod["metadata"]["annotations"]["example.com/team"], "images");
    }
    for c in [app, migrate] {
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "ca" && m["mountPath"] == "/etc/fs-ca"));
    }
    assert_eq!(dpod["metadata"]["labels"]["team"], "images");
    // The Service selects the replicas, never the migration pod (it serves nothing).
    let selector = find(&docs, "Service", "fs-file-system")["spec"]["selector"]
        .as_object()
        .unwrap()
        .clone();
    let labels = jpod["metadata"]["labels"].as_object().unwrap();
    assert!(
        !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{labels:?}"
    );
}

/// The imageops sidecar gets the service's settings: its sources (extraEnvFrom too), its env
/// (extraEnv too) and the extra volume mounts, beside its own listen address.
#[test]
fn imageops_sidecar_gets_the_services_settings() {
    let docs = render(&format!(
        "{BASIC}
imageops: {{sidecar: {{enabled: true}}}}
extraEnv:
  - {{name: SSL_CERT_FILE, value: /etc/fs-ca/ca.crt}}
  - {{name: FS_TOKEN, valueFrom: {{secretKeyRef: {{name: tokens, key: fs}}}}}}
extraEnvFrom: [{{configMapRef: {{name: site-settings}}}}]
extraVolumes: [{{name: ca, configMap: {{name: fs-ca}}}}]
extraVolumeMounts: [{{name: ca, mountPath: /etc/fs-ca, readOnly: true}}]
"
    ))
    .unwrap();
    let dep = find(&docs, "Deployment", "fs-file-system");
    let containers = dep["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let (app, ops) = (&containers[0], &containers[1]);
    assert_eq!(ops["name"], "imageops");
    assert_eq!(ops["envFrom"], app["envFrom"]);
    assert!(serde_json::to_string(&ops["envFrom"])
        .unwrap()
        .contains("site-settings"));
    // The same entries, but those that place each process.
    let own = |c: &Value, skip: &[&str]| {
        let mut env = c["env"].as_array().unwrap().clone();
        env.retain(|e| !skip.contains(&e["name"].as_str().unwrap()));
        env
    };
    assert_eq!(
        own(app, &["FS_LISTEN", "FS_SCRATCH_DIR", "FS_IMAGEOPS_URL"]),
        own(ops, &["FS_IMAGEOPS_LISTEN", "FS_SCRATCH_DIR"])
    );
    assert_eq!(env_value(ops, "SSL_CERT_FILE"), "/etc/fs-ca/ca.crt");
    assert_eq!(
        env_entry(ops, "FS_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        "tokens"
    );
    assert_eq!(env_value(ops, "FS_IMAGEOPS_LISTEN"), "127.0.0.1:5000");
    assert!(ops["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "ca" && m["mountPath"] == "/etc/fs-ca"));
}

/// podAntiAffinityPreset: soft (default) prefers other nodes, hard requires them, "" none;
/// an explicit affinity replaces the preset. Spread constraints get this release's selector
/// when they name none. The startup probe can be turned off.
#[test]
fn anti_affinity_presets_spread_and_startup_probe() {
    let pod = |values: &str| -> Value {
        let docs = render(&format!("{BASIC}\n{values}")).unwrap();
        find(&docs, "Deployment", "fs-file-system")["spec"]["template"]["spec"].clone()
    };
    let hard = pod("podAntiAffinityPreset: hard");
    let required =
        &hard["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(required[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        required[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "fs"
    );
    assert!(hard["affinity"]["podAntiAffinity"]
        .get("preferredDuringSchedulingIgnoredDuringExecution")
        .is_none());
    let soft = pod("podAntiAffinityPreset: soft");
    assert!(soft["affinity"]["podAntiAffinity"]
        .get("preferredDuringSchedulingIgnoredDuringExecution")
        .is_some());
    assert!(pod("podAntiAffinityPreset: ''").get("affinity").is_none());
    let own = pod(
        "affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: disk, operator: In, values: [ssd]}]}]}}}",
    );
    assert!(own["affinity"].get("podAntiAffinity").is_none());
    assert!(own["affinity"].get("nodeAffinity").is_some());

    let spread = pod(
        "topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
  - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {team: images}}}",
    );
    let tsc = spread["topologySpreadConstraints"].as_array().unwrap();
    assert_eq!(tsc.len(), 2);
    assert_eq!(tsc[0]["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(
        tsc[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "file-system"
    );
    assert_eq!(
        tsc[1]["labelSelector"]["matchLabels"],
        serde_json::json!({"team": "images"})
    );
    assert!(pod("").get("topologySpreadConstraints").is_none());

    let no_startup = pod("probes: {startup: {enabled: false}}");
    assert!(no_startup["containers"][0].get("startupProbe").is_none());
    let slow = pod("probes: {startup: {failureThreshold: 120, periodSeconds: 10}}");
    assert_eq!(
        slow["containers"][0]["startupProbe"]["failureThreshold"],
        120
    );
    assert_eq!(slow["containers"][0]["startupProbe"]["periodSeconds"], 10);
}

/// Authentication: the HS256 secret and metrics token go into the Secret (or are read from
/// existingSecret), the tokens file and the JWT public key are mounted from Secrets of the
/// user's as directories (so an update reaches the pods), in every container running the
/// service, and the ServiceMonitor scrapes with the metrics token.
#[test]
fn authentication_secrets_and_files() {
    let docs = render(
        "
database: {host: pg.example}
config: {FS_AUTH: 'token,jwt', FS_JWT_USER_CLAIM: userId}
imageops: {sidecar: {enabled: true}}
metrics: {serviceMonitor: {enabled: true}}
auth:
  metricsToken: scrape
  tokensSecret: fs-tokens
  jwtPublicKeySecret: idp-key
  jwtPublicKeySecretKey: tls.pem
",
    )
    .unwrap();
    let secret = find(&docs, "Secret", "fs-file-system");
    assert_eq!(secret["data"]["FS_METRICS_TOKEN"], "c2NyYXBl");
    assert!(secret["data"].get("FS_JWT_HS256_SECRET").is_none());
    let dep = find(&docs, "Deployment", "fs-file-system");
    let job = find(&docs, "Job", "fs-file-system-migrate");
    for pod in [&dep["spec"]["template"], &job["spec"]["template"]] {
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let tokens = volumes.iter().find(|v| v["name"] == "auth-tokens").unwrap();
        assert_eq!(tokens["secret"]["secretName"], "fs-tokens");
        assert_eq!(tokens["secret"]["items"][0]["key"], "tokens");
        let jwt = volumes.iter().find(|v| v["name"] == "auth-jwt").unwrap();
        assert_eq!(jwt["secret"]["secretName"], "idp-key");
        assert_eq!(jwt["secret"]["items"][0]["key"], "tls.pem");
        for c in pod["spec"]["containers"].as_array().unwrap() {
            assert_eq!(
                env_value(c, "FS_AUTH_TOKENS_FILE"),
                "/etc/file-system/tokens/tokens"
            );
            assert_eq!(
                env_value(c, "FS_JWT_PUBLIC_KEY_FILE"),
                "/etc/file-system/jwt/public.pem"
            );
            let mounts = c["volumeMounts"].as_array().unwrap();
            let m = mounts.iter().find(|m| m["name"] == "auth-tokens").unwrap();
            // A directory, never a subPath: a subPath mount is not updated with its Secret.
            assert_eq!(m["mountPath"], "/etc/file-system/tokens");
            assert!(m.get("subPath").is_none());
            assert!(mounts.iter().any(|m| m["name"] == "auth-jwt"));
        }
    }
    let sm = find(&docs, "ServiceMonitor", "fs-file-system");
    let bearer = &sm["spec"]["endpoints"][0]["bearerTokenSecret"];
    assert_eq!(bearer["name"], "fs-file-system");
    assert_eq!(bearer["key"], "FS_METRICS_TOKEN");

    // From a Secret of the user's, under its own key names.
    let docs = render(
        "
existingSecret: vault-synced
existingSecretKeys: {jwtHs256Secret: jwt-secret, metricsToken: scrape-token}
metrics: {serviceMonitor: {enabled: true}}
",
    )
    .unwrap();
    let c = &containers(&docs, "Deployment", "fs-file-system")[0];
    for (var, key) in [
        ("FS_JWT_HS256_SECRET", "jwt-secret"),
        ("FS_METRICS_TOKEN", "scrape-token"),
    ] {
        let r = &env_entry(c, var)["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], "vault-synced", "{var}");
        assert_eq!(r["key"], key, "{var}");
    }
    let sm = find(&docs, "ServiceMonitor", "fs-file-system");
    let bearer = &sm["spec"]["endpoints"][0]["bearerTokenSecret"];
    assert_eq!(bearer["name"], "vault-synced");
    assert_eq!(bearer["key"], "scrape-token");
    // Off by default: no auth volume, no bearer.
    let docs = render(BASIC).unwrap();
    let dep = find(&docs, "Deployment", "fs-file-system");
    let volumes = serde_json::to_string(&dep["spec"]["template"]["spec"]["volumes"]).unwrap();
    assert!(!volumes.contains("auth-"), "{volumes}");
    assert!(schema_check("auth: {tokensSecrt: x}").is_err());
}
