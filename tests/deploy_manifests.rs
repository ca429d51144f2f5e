//! The deployment artefacts in deploy/ checked against the gateway itself: the Kubernetes
//! manifests parsed, their config validated by the gateway's own loader with the Secret's
//! values as its environment, then run (a real gateway process on it, a real Redis and upstream
//! in place of the cluster's) and asked on the probes' paths; labels, selectors, ports, the
//! Secret's keys and the hardening checked; every object validated against the Kubernetes JSON
//! schemas (PyPI's kubernetes-validate, --strict). The Helm chart rendered by Helm v4's own
//! engine (PyPI's helm-python-sdk, through scripts/helm_render.py; `helm lint --strict` clean)
//! must give the same objects as the plain manifests with its default values, and a config
//! the gateway accepts with the others (etcd config store, an existing Secret). The systemd
//! unit is parsed, checked for its hardening, and verified by `systemd-analyze verify` (Debian's
//! systemd package; it need not run as PID 1). scripts/test.sh installs it, and the two PyPI
//! tools into its virtualenv: without them these tests fail, they are never skipped.

mod support;

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of scripts/test.sh: `$VAR` when set, else where the script installs it (the
/// virtualenv under the cargo target dir, or `$KAIROS_TOOLS_DIR`).
fn tool(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("KAIROS_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/debug/kairos-rs -> target/test-tools
            let bin = PathBuf::from(env!("CARGO_BIN_EXE_kairos-rs"));
            let target = bin.parent().and_then(Path::parent).expect("target dir");
            target.join("test-tools")
        });
    let path = tools.join("venv/bin").join(name);
    assert!(
        path.is_file(),
        "{name} not found at {} and ${var} not set: run scripts/test.sh once (it installs \
         kubernetes-validate and helm-python-sdk from PyPI into that virtualenv)",
        path.display()
    );
    path
}

/// Every YAML document of a file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of the files, by kind (one object of each kind here).
fn by_kind(files: &[PathBuf]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for f in files {
        for doc in yaml_docs(f) {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            assert!(
                out.insert(kind.clone(), doc).is_none(),
                "two objects of kind {kind}"
            );
        }
    }
    out
}

/// The plain manifests: exactly the files kustomization.yaml lists, and every YAML file of
/// the folder listed there.
fn plain_manifests() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let listed: Vec<PathBuf> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| dir.join(r.as_str().expect("resource path")))
        .collect();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            assert!(
                listed.contains(&path),
                "{} is not in kustomization.yaml",
                path.display()
            );
        }
    }
    listed
}

/// kubernetes-validate --strict on the files: the Kubernetes JSON schemas of the version it
/// defaults to, no unknown field.
fn schema_validate(files: &[PathBuf]) {
    let out = Command::new(tool("KUBERNETES_VALIDATE", "kubernetes-validate"))
        .arg("--strict")
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate: {text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "each file validated against a schema: {text}"
    );
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Secret's keys and values (stringData, or base64 data).
fn secret_values(secret: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(m) = secret["stringData"].as_object() {
        for (k, v) in m {
            out.insert(k.clone(), v.as_str().expect("string").to_string());
        }
    }
    assert!(
        secret.get("data").is_none(),
        "the Secret's values are in stringData here"
    );
    out
}

/// What the gateway needs from one set of objects (plain or rendered): returns the config
/// text of the ConfigMap and the environment the pod gives it.
fn check_objects(
    objs: &BTreeMap<String, Value>,
    outside: &[(&str, &str)],
) -> (String, BTreeMap<String, String>) {
    let dep = &objs["Deployment"];
    let pod = &dep["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(selects(&dep["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(selects(&objs["Service"]["spec"]["selector"], pod_labels));
    assert!(
        selects(
            &objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
            pod_labels
        ),
        "the PodDisruptionBudget selects the Deployment's pods"
    );
    let replicas = dep["spec"]["replicas"].as_u64().expect("replicas");
    let max_unavailable = objs["PodDisruptionBudget"]["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable");
    assert!(
        max_unavailable < replicas,
        "a drain keeps some replica serving"
    );

    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The config file: the container's --config is the ConfigMap's key in the mounted folder.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(args[0], "--config");
    let config_path = Path::new(args[1]);
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| config_path.parent() == Some(Path::new(str_at(m, "/mountPath"))))
        .expect("a mount holding the config file");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    assert_eq!(mount["readOnly"], true);
    let volume = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let cm = &objs["ConfigMap"];
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let file = config_path.file_name().and_then(|n| n.to_str()).unwrap();
    let config_text = str_at(cm, &format!("/data/{file}")).to_string();

    // The environment: every variable comes from a secretKeyRef; one naming the Secret of
    // these objects names one of its keys; one naming another Secret (created outside the
    // chart) takes its value from `outside`.
    let secret = objs.get("Secret");
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().expect("env") {
        let name = str_at(e, "/name").to_string();
        let r = &e["valueFrom"]["secretKeyRef"];
        let key = str_at(r, "/key");
        let value = match secret {
            Some(secret) if r["name"] == secret["metadata"]["name"] => secret_values(secret)
                .get(key)
                .unwrap_or_else(|| panic!("the Secret has no key {key} (env {name})"))
                .clone(),
            _ => outside
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| panic!("env {name} from Secret {}", r["name"])),
        };
        env.insert(name, value);
    }
    for (path, name) in kairos_rs::config::env_references(&config_text) {
        assert!(
            env.contains_key(&name),
            "the config references ${{{name}}} at {path}, the pod's environment lacks it"
        );
    }

    // The gateway's own loader accepts the config with that environment.
    let dir = tempfile::tempdir().unwrap();
    let cfg = kairos_rs::config::load_str_with_env(
        &config_text,
        "configmap config.json",
        dir.path(),
        &|k| env.get(k).cloned(),
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's config is refused:\n{e}"));
    assert_eq!(cfg.server.host, "0.0.0.0", "reachable from outside the pod");

    // Ports: the container's named port is server.port; the probes and the Service use it.
    let port = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "http")
        .expect("port named http");
    assert_eq!(port["containerPort"], u64::from(cfg.server.port));
    assert_eq!(objs["Service"]["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(str_at(c, "/readinessProbe/httpGet/path"), "/_kairos/ready");
    assert_eq!(str_at(c, "/livenessProbe/httpGet/path"), "/_kairos/health");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }

    // Hardening, and the image's user (Dockerfile `USER 10001:10001`).
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the Dockerfile");
    let pod_sc = &pod["spec"]["securityContext"];
    assert_eq!(
        format!("{}:{}", pod_sc["runAsUser"], pod_sc["runAsGroup"]),
        user.trim()
    );
    assert_eq!(pod_sc["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The grace period covers the preStop pause and the gateway's drain.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(grace as f64 > 5.0 + cfg.server.shutdown_timeout.as_secs_f64());
    (config_text, env)
}

/// The pod's config run for real: a gateway process with the Secret's environment, the
/// cluster's Redis and upstream replaced by real ones on loopback. The probes' paths answer
/// 200, Redis is reported reachable, the JWT route refuses a request without a token.
fn run_config(config_text: &str, env: &BTreeMap<String, String>) {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    let mut cfg: Value = serde_json::from_str(config_text).unwrap();
    cfg["rate_limiting"]["redis_url"] = redis.url().into();
    for (_, u) in cfg["upstreams"].as_object_mut().expect("upstreams") {
        u["servers"] = json!([{ "url": up.url() }]);
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = GatewayProcess::start_with_env(&cfg.to_string(), &env);
    let client = blocking_client();
    let get = |path: &str| client.get(gw.url(path)).send().expect("request");
    assert!(wait_until(Duration::from_secs(10), || get(
        "/_kairos/ready"
    )
    .status()
        == 200));
    let ready: Value = get("/_kairos/ready").json().unwrap();
    assert_eq!(ready["redis"]["rate_limit"]["status"], "ok", "{ready}");
    assert_eq!(get("/_kairos/health").status(), 200);
    assert_eq!(get("/public/x").status(), 200);
    assert_eq!(get("/api/x").status(), 401);
    assert_eq!(up.count(), 1);
    let token = env
        .iter()
        .find(|(k, _)| *k == "KAIROS_ADMIN_TOKEN")
        .map(|(_, v)| *v)
        .expect("the admin token in the environment");
    let admin = client
        .get(gw.url("/_kairos/status"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(
        admin.status(),
        200,
        "the Secret's admin token opens /_kairos"
    );
}

#[test]
fn kubernetes_manifests_give_the_gateway_what_it_needs() {
    let files = plain_manifests();
    let objs = by_kind(&files);
    let kinds: Vec<&str> = objs.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Secret",
            "Service"
        ]
    );
    let (config, env) = check_objects(&objs, &[]);
    run_config(&config, &env);
    schema_validate(&files);
}

/// Renders the chart with scripts/helm_render.py (Helm v4's engine) into a temp dir.
fn helm_render(values: Option<Value>) -> (tempfile::TempDir, Vec<PathBuf>) {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tool("KAIROS_TOOLS_PYTHON", "python"));
    cmd.arg(root().join("scripts/helm_render.py"))
        .arg(root().join("deploy/helm/kairos-rs"))
        .arg(out.path());
    if let Some(v) = values {
        cmd.arg(v.to_string());
    }
    let res = cmd.output().expect("run scripts/helm_render.py");
    assert!(
        res.status.success(),
        "the chart does not render or lint clean: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    (out, files)
}

/// An object as compared between the chart and the plain manifests: Helm's own labels and
/// the pod's checksum annotation left out, the config compared as JSON.
fn normalized(mut obj: Value) -> Value {
    let keep = ["app.kubernetes.io/name", "app.kubernetes.io/instance"];
    if let Some(labels) = obj["metadata"]["labels"].as_object_mut() {
        labels.retain(|k, _| keep.contains(&k.as_str()));
    }
    if let Some(meta) = obj
        .pointer_mut("/spec/template/metadata")
        .and_then(Value::as_object_mut)
    {
        meta.remove("annotations");
    }
    if let Some(text) = obj.pointer("/data/config.json").and_then(Value::as_str) {
        let parsed: Value = serde_json::from_str(text).expect("config.json is JSON");
        obj["data"]["config.json"] = parsed;
    }
    obj
}

#[test]
fn the_helm_chart_renders_the_plain_manifests_objects() {
    let plain = by_kind(&plain_manifests());
    let (_dir, files) = helm_render(None);
    let rendered = by_kind(&files);
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    for (kind, obj) in &rendered {
        assert_eq!(
            normalized(obj.clone()),
            normalized(plain[kind].clone()),
            "the chart's {kind} differs from deploy/kubernetes'"
        );
    }
    check_objects(&rendered, &[]);
    schema_validate(&files);
}

#[test]
fn the_helm_chart_with_etcd_and_an_existing_secret() {
    let (_dir, files) = helm_render(Some(json!({
        "replicaCount": 4,
        "image": { "repository": "registry.example/kairos-rs", "tag": "9.9.9" },
        "redis": { "url": "redis+sentinel://10.0.0.7:26379,10.0.0.8:26379/kairos" },
        "etcd": { "endpoints": ["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"],
                  "key": "/prod/kairos" },
        "secrets": { "create": false, "name": "gateway-secrets" }
    })));
    let objs = by_kind(&files);
    assert!(!objs.contains_key("Secret"), "an existing Secret is used");
    let dep = &objs["Deployment"];
    assert_eq!(dep["spec"]["replicas"], 4);
    assert_eq!(
        str_at(dep, "/spec/template/spec/containers/0/image"),
        "registry.example/kairos-rs:9.9.9"
    );
    for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
    {
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "gateway-secrets");
    }
    let stand_in = "x".repeat(48);
    let outside = [
        ("KAIROS_ADMIN_TOKEN", stand_in.as_str()),
        ("JWT_SECRET", stand_in.as_str()),
    ];
    let (config, _) = check_objects(&objs, &outside);
    let cfg: Value = serde_json::from_str(&config).unwrap();
    // With a config store the file holds only the instance's own members.
    let members: Vec<&str> = cfg
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        members,
        ["admin", "cluster", "logging", "server", "version"]
    );
    assert_eq!(
        cfg["cluster"]["config_store"],
        json!({ "type": "etcd", "key": "/prod/kairos",
                "endpoints": ["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"] })
    );
    schema_validate(&files);

    // Without a store, the Redis URL goes where the config uses Redis; one with a password
    // comes from another Secret through extraEnv.
    let (_dir, files) = helm_render(Some(json!({
        "redis": { "url": "${REDIS_URL}" },
        "extraEnv": [{ "name": "REDIS_URL",
                       "valueFrom": { "secretKeyRef": { "name": "redis-credentials", "key": "url" } } }]
    })));
    let objs = by_kind(&files);
    let (config, env) = check_objects(
        &objs,
        &[("REDIS_URL", "rediss://:hunter2@redis.example:6380")],
    );
    let cfg: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(cfg["rate_limiting"]["redis_url"], "${REDIS_URL}");
    assert_eq!(env.len(), 3);
    schema_validate(&files);
}

/// The unit file's `[Section]` -> key -> values (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        assert!(!section.is_empty(), "line {}: outside a section", n + 1);
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let path = root().join("deploy/systemd/kairos-rs.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let unit = parse_unit(&text);
    let service = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = service
            .get(k)
            .unwrap_or_else(|| panic!("[Service] has no {k}"));
        v.last().unwrap()
    };
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec[1..], ["--config", "/etc/kairos/config.json"]);
    // The gateway reloads its config on SIGHUP (src/server.rs).
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(k), v, "[Service] {k}");
    }
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(nofile >= 65536);
    // The stop timeout covers the default drain (server.shutdown_timeout, 30 s).
    let stop: u64 = one("TimeoutStopSec")
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop > 30);
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);

    // The ExecStart's command line is the gateway's: it validates a config given that way.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"version": 1, "routes": []}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
        .args(["config", "validate"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // systemd's own check (the unit's binary path replaced by the one built here: verify
    // checks that it exists and is executable). Required: scripts/test.sh installs systemd.
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test.sh installs it)");
    println!(
        "verifying with {}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let copy = dir.path().join("kairos-rs.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/kairos-rs", env!("CARGO_BIN_EXE_kairos-rs")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
