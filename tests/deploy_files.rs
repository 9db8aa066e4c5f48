//! The deployment examples under examples/deploy/ parse, agree with each other,
//! refer only to metrics limpet exports, and embed a config limpet accepts.

use std::collections::BTreeSet;
use std::path::Path;

use prometheus::core::Collector;
use serde::Deserialize;
use serde_yaml::Value;

const DIR: &str = "examples/deploy";

/// SPEC section 7.
const SPEC_METRICS: [&str; 11] = [
    "limpet_requests_total",
    "limpet_request_duration_seconds",
    "limpet_backend_up",
    "limpet_backend_state",
    "limpet_backend_in_flight",
    "limpet_affinity_total",
    "limpet_retries_total",
    "limpet_health_checks_total",
    "limpet_downstream_connections",
    "limpet_config_reloads_total",
    "limpet_build_info",
];

fn read(name: &str) -> String {
    let path = Path::new(DIR).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(name: &str) -> Value {
    serde_yaml::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> &'v str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {v:?}"))
}

/// The metric families a PromQL expression names (histogram series mapped to
/// their family).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("limpet_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| SPEC_METRICS.contains(base))
            .unwrap_or(name);
        out.push(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_spec_metrics_are_the_ones_limpet_registers() {
    let m = limpet::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let collectors: [&dyn Collector; 11] = [
        &m.requests,
        &m.duration,
        &m.backend_up,
        &m.backend_state,
        &m.backend_in_flight,
        &m.affinity,
        &m.retries,
        &m.health_checks,
        &m.downstream_connections,
        &m.config_reloads,
        &m.build_info,
    ];
    let registered: BTreeSet<String> = collectors
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| d.fq_name.clone())
        .collect();
    let spec: BTreeSet<String> = SPEC_METRICS.iter().map(|s| s.to_string()).collect();
    assert_eq!(registered, spec);
}

#[test]
fn prometheus_scrapes_the_admin_metrics() {
    let config = yaml("prometheus.yml");
    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    assert!(jobs.len() >= 2);
    for job in jobs {
        assert!(str_at(job, &["job_name"]).starts_with("limpet"));
        assert_eq!(str_at(job, &["metrics_path"]), "/metrics");
    }
    let static_target = jobs[0]["static_configs"][0]["targets"][0]
        .as_str()
        .expect("a static target");
    assert!(static_target.parse::<std::net::SocketAddr>().is_ok());
    for rules in config["rule_files"].as_sequence().expect("rule_files") {
        let name = rules.as_str().unwrap();
        assert!(Path::new(DIR).join(name).exists(), "{name} is shipped");
    }
}

#[test]
fn the_alert_rules_parse_and_use_limpet_metrics() {
    let rules = yaml("limpet-alerts.yml");
    let mut count = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            count += 1;
            let alert = str_at(rule, &["alert"]);
            str_at(rule, &["labels", "severity"]);
            str_at(rule, &["annotations", "summary"]);
            let metrics = metrics_in(str_at(rule, &["expr"]));
            assert!(!metrics.is_empty(), "{alert}");
            for m in metrics {
                assert!(SPEC_METRICS.contains(&m.as_str()), "{alert}: {m}");
            }
        }
    }
    assert!(count >= 3);
}

#[test]
fn the_grafana_dashboard_covers_every_metric_and_nothing_else() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("valid JSON");
    assert_eq!(dash["title"], "limpet");
    let variables: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let metrics = metrics_in(expr);
            assert!(!metrics.is_empty(), "{title}: {expr}");
            for m in metrics {
                assert!(SPEC_METRICS.contains(&m.as_str()), "{title}: {m}");
                used.insert(m);
            }
            for var in ["$job", "$upstream", "$datasource"] {
                if expr.contains(var) {
                    assert!(variables.contains(&var[1..]), "{title}: {var}");
                }
            }
        }
    }
    for m in SPEC_METRICS {
        assert!(used.contains(m), "no panel shows {m}");
    }
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_reads_the_secret_from_a_file() {
    let unit = read("limpet.service");
    let mut section = "";
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name;
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        keys.push((section.to_string(), k.to_string(), v.to_string()));
    }
    let values = |s: &str, k: &str| -> Vec<String> {
        keys.iter()
            .filter(|(sec, key, _)| sec == s && key == k)
            .map(|(_, _, v)| v.clone())
            .collect()
    };
    assert!(values("Service", "ExecReload")
        .iter()
        .any(|v| v == "/bin/kill -HUP $MAINPID"));
    assert!(values("Service", "ExecStart")[0].contains(" run --config "));
    assert_eq!(
        values("Service", "EnvironmentFile"),
        ["/etc/limpet/limpet.env"]
    );
    assert!(read("limpet.env.example").contains("\nLIMPET_SECRET="));
    let stop: humantime::Duration = values("Service", "TimeoutStopSec")[0].parse().unwrap();
    assert!(
        *stop > limpet::config::DEFAULT_SHUTDOWN_GRACE,
        "systemd must wait out shutdown_grace"
    );
    assert_eq!(values("Install", "WantedBy"), ["multi-user.target"]);
}

#[derive(Deserialize)]
struct Meta {
    kind: String,
    metadata: Value,
}

#[test]
fn the_kubernetes_manifests_agree_and_embed_a_valid_config() {
    let text = read("kubernetes.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect();
    let find = |kind: &str, name: &str| -> &Value {
        docs.iter()
            .find(|d| {
                let m: Meta = serde_yaml::from_value((*d).clone()).expect("kind and metadata");
                m.kind == kind && m.metadata["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let secret = find("Secret", "limpet-cookie");
    let config_map = find("ConfigMap", "limpet-config");
    let deployment = find("Deployment", "limpet");
    let service = find("Service", "limpet");
    find("PodDisruptionBudget", "limpet");

    // Two instances, one secret, one config.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(2));
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);
    assert_eq!(&service["spec"]["selector"], pod_labels);
    assert_eq!(str_at(service, &["spec", "sessionAffinity"]), "None");
    let container = &spec["template"]["spec"]["containers"][0];
    let env = container["env"].as_sequence().unwrap();
    let secret_env = env
        .iter()
        .find(|e| e["name"].as_str() == Some("LIMPET_SECRET"))
        .expect("LIMPET_SECRET in the environment");
    let key_ref = &secret_env["valueFrom"]["secretKeyRef"];
    assert_eq!(str_at(key_ref, &["name"]), "limpet-cookie");
    let key = str_at(key_ref, &["key"]);
    assert!(secret["stringData"][key].is_string());

    let port = |name: &str| -> u16 {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}")) as u16
    };
    assert_eq!(
        str_at(&service["spec"]["ports"][0], &["targetPort"]),
        "http"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(str_at(&container[probe]["httpGet"], &["path"]), "/healthz");
        assert_eq!(str_at(&container[probe]["httpGet"], &["port"]), "admin");
    }

    // The config the pods read: mounted where --config points.
    let volume = &spec["template"]["spec"]["volumes"][0];
    assert_eq!(str_at(volume, &["configMap", "name"]), "limpet-config");
    let mount = &container["volumeMounts"][0];
    assert_eq!(str_at(mount, &["name"]), str_at(volume, &["name"]));
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    assert_eq!(str_at(mount, &["mountPath"]), dir);
    let toml = str_at(config_map, &["data", file]);

    // Give the pod's environment its test value, then parse it as limpet would
    // (backend names are resolved at run time, not by parsing).
    assert!(toml.contains("secret = \"env:LIMPET_SECRET\""));
    let local = toml.replace("\"env:LIMPET_SECRET\"", "\"test-secret\"");
    let config = limpet::Config::parse(&local, "kubernetes.yaml#limpet-config")
        .unwrap_or_else(|e| panic!("{e}"));
    let shop = &config.upstreams[0];

    // Every backend is a pod of the app's StatefulSet, by its name under the
    // headless Service: POD.SERVICE:PORT, backend name = pod name.
    let app = find("StatefulSet", "shop");
    let service_name = str_at(app, &["spec", "serviceName"]);
    let headless = find("Service", service_name);
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), "None");
    let app_labels = &app["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&app["spec"]["selector"]["matchLabels"], app_labels);
    assert_eq!(&headless["spec"]["selector"], app_labels);
    let app_port = app["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        .as_u64()
        .expect("the app's container port") as u16;
    let replicas = app["spec"]["replicas"].as_u64().expect("replicas") as usize;
    assert_eq!(shop.backends.len(), replicas, "one backend per pod");
    for (i, b) in shop.backends.iter().enumerate() {
        let pod = format!("shop-{i}");
        assert_eq!(b.name, pod);
        assert_eq!(
            b.addr,
            limpet::config::BackendAddr::Name {
                host: format!("{pod}.{service_name}"),
                port: app_port,
            }
        );
    }
    assert!(shop.resolve_interval <= std::time::Duration::from_secs(10));
    assert_eq!(shop.failover, limpet::config::Failover::Replica);
    assert!(shop.backends.iter().all(|b| b.replica.is_some()));
    assert_eq!(config.listen.http[0].port(), port("http"));
    assert_eq!(config.admin.as_ref().unwrap().listen.port(), port("admin"));

    // Pods get time to finish requests in flight.
    let grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(grace > config.timeouts.shutdown_grace.as_secs());
}
