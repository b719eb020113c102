//! The docker-compose demo stack and its Prometheus and Grafana files, checked without Docker.
//!
//! No Docker engine runs in CI, so nothing else would notice a broken stack before a user's
//! `docker compose up` does: a missing service or port, a bind mount of a path that is not in the
//! repository, a file a container is told to read that no mount provides, a topic one service
//! writes and another never reads, a panel or an alert on a metric tokenwatch does not export.
//! These tests read docker-compose.yml, the Dockerfile and deploy/ and check exactly those things.
//! The one piece of the crate they use is the list of metric families it registers
//! ([`tokenwatch::metrics::Metrics::families`]), so a dashboard is checked against what the
//! service really exports.
//! The alert rules' behaviour is tested with promtool in tests/it/alerts.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use marked_yaml::types::{MarkedMappingNode, Node};
use serde_json::Value;
use tokenwatch::config::flags::RunFlags;
use tokenwatch::config::Role;
use tokenwatch::service::ServiceConfig;

/// The metric families the stack must show, on the dashboard or in an alert; each must be one
/// tokenwatch exports. When the service gains a metric an operator must watch, add it here and
/// put it on the dashboard.
const SHOWN: &[&str] = &[
    "tokenwatch_events_total",
    "tokenwatch_decode_errors_total",
    "tokenwatch_decisions_total",
    "tokenwatch_revocations_total",
    "tokenwatch_redis_errors_total",
    "tokenwatch_consumer_lag",
    "tokenwatch_tracked_keys",
    "tokenwatch_rules_loaded",
    "tokenwatch_rule_reloads_total",
    "tokenwatch_decision_delay_seconds",
    "tokenwatch_build_info",
    "tokenwatch_evicted_keys_total",
    "tokenwatch_late_events_total",
    "tokenwatch_redis_up",
    "tokenwatch_kafka_assigned_partitions",
    "tokenwatch_alert_errors_total",
    "tokenwatch_dead_letters_total",
    "tokenwatch_redis_refused",
    "tokenwatch_http_accept_errors_total",
    "tokenwatch_rule_tripped",
    "tokenwatch_posture_tokens_total",
    "tokenwatch_posture_token_lifetime_seconds",
    "tokenwatch_posture_tokens_in_url_total",
    "tokenwatch_posture_tokens_over_http_total",
    "tokenwatch_posture_unverified_tokens_total",
    "tokenwatch_posture_signing_key_age_seconds",
];

/// The metric families tokenwatch exports, read from the service's own registry. A dashboard
/// or alert on any other name shows nothing or never fires, silently.
fn exported() -> Vec<tokenwatch::metrics::Family> {
    tokenwatch::metrics::Metrics::new().families().to_vec()
}

/// The histograms among them: Prometheus stores each as `_bucket`, `_sum` and `_count`
/// series, and queries name those, never the family itself.
fn histograms() -> Vec<String> {
    exported().into_iter().filter(|f| f.histogram).map(|f| f.name).collect()
}

/// Series Prometheus writes itself for every scrape target.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// The services of the stack; `docker compose up` users are told about each of them.
const SERVICES: &[&str] = &[
    "kafka",
    "kafka-init",
    "redis",
    "tokenwatch-1",
    "tokenwatch-2",
    "tokenwatch-3",
    "traffic",
    "prometheus",
    "grafana",
];

/// The tokenwatch instances of the stack (one consumer group, `--role both`) and the host port
/// each publishes its metrics on. They are one service written three times (Compose's `extends`
/// would add a second published port to each, and YAML anchors are not read here), so
/// [`three_instances_of_one_group_differ_only_in_their_published_port`] holds them equal, and
/// the other checks look at the first.
const INSTANCES: [(&str, u16); 3] = [("tokenwatch-1", 9464), ("tokenwatch-2", 9465), ("tokenwatch-3", 9466)];

pub(super) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path in the repository, as Compose resolves `./...` against the directory of the file.
fn repo_path(rel: &str) -> PathBuf {
    root().join(rel.trim_start_matches("./"))
}

pub(super) fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub(super) fn yaml(rel: &str) -> Node {
    marked_yaml::parse_yaml(0, read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

pub(super) fn mapping<'a>(node: &'a Node, what: &str) -> &'a MarkedMappingNode {
    node.as_mapping().unwrap_or_else(|| panic!("{what} is not a mapping"))
}

pub(super) fn field<'a>(m: &'a MarkedMappingNode, key: &str, what: &str) -> &'a Node {
    m.get(key).unwrap_or_else(|| panic!("{what} has no `{key}`"))
}

pub(super) fn text<'a>(node: &'a Node, what: &str) -> &'a str {
    node.as_scalar()
        .unwrap_or_else(|| panic!("{what} is not a scalar"))
        .as_str()
}

/// A scalar or a sequence of scalars (Compose accepts both for `command`, `depends_on`, ...).
pub(super) fn strings(node: Option<&Node>) -> Vec<String> {
    match node {
        None => Vec::new(),
        Some(Node::Scalar(s)) => vec![s.as_str().to_string()],
        Some(Node::Sequence(seq)) => seq.iter().map(|n| text(n, "a list item").to_string()).collect(),
        Some(Node::Mapping(_)) => panic!("expected a string or a list of strings, found a mapping"),
    }
}

pub(super) fn compose() -> Node {
    yaml("docker-compose.yml")
}

fn services(doc: &Node) -> &MarkedMappingNode {
    mapping(
        field(mapping(doc, "docker-compose.yml"), "services", "docker-compose.yml"),
        "services",
    )
}

pub(super) fn service<'a>(doc: &'a Node, name: &str) -> &'a MarkedMappingNode {
    let node = services(doc)
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"));
    mapping(node, name)
}

/// `environment:` as a map, from either of Compose's two spellings (mapping or `KEY=value` list).
fn env(svc: &MarkedMappingNode) -> BTreeMap<String, String> {
    match svc.get("environment") {
        None => BTreeMap::new(),
        Some(Node::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.as_scalar().map_or("", |s| s.as_str()).to_string(),
                )
            })
            .collect(),
        Some(list) => strings(Some(list))
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect(),
    }
}

/// Published ports as (host port, container port); entries without a host port are left out.
fn published(svc: &MarkedMappingNode) -> Vec<(u16, u16)> {
    let port = |s: &str| s.parse::<u16>().unwrap_or_else(|e| panic!("port `{s}`: {e}"));
    let Some(Node::Sequence(seq)) = svc.get("ports") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in seq.iter() {
        match item {
            Node::Mapping(m) => {
                if let Some(host) = m.get("published") {
                    out.push((
                        port(text(host, "published")),
                        port(text(field(m, "target", "a port"), "target")),
                    ));
                }
            }
            _ => {
                // [IP:]HOST:CONTAINER[/PROTOCOL]
                let spec = text(item, "a port").split('/').next().unwrap_or_default();
                let mut parts = spec.rsplit(':');
                let container = port(parts.next().unwrap_or_default());
                if let Some(host) = parts.next() {
                    out.push((port(host), container));
                }
            }
        }
    }
    out
}

struct Mount {
    source: String,
    target: String,
    bind: bool,
}

/// `volumes:` of a service, short (`SRC:DST[:MODE]`) or long syntax. A source that is a path
/// (starts with `.`, `/` or `~`) is a bind mount; anything else names a volume.
fn mounts(svc: &MarkedMappingNode) -> Vec<Mount> {
    let Some(Node::Sequence(seq)) = svc.get("volumes") else {
        return Vec::new();
    };
    seq.iter()
        .map(|item| match item {
            Node::Mapping(m) => Mount {
                source: m
                    .get("source")
                    .map(|s| text(s, "source").to_string())
                    .unwrap_or_default(),
                target: text(field(m, "target", "a volume"), "target").to_string(),
                bind: m.get("type").map(|t| text(t, "type")) == Some("bind"),
            },
            _ => {
                let spec = text(item, "a volume");
                let mut parts = spec.split(':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("volume `{spec}` has no target"))
                    .to_string();
                let bind = source.starts_with(['.', '/', '~']);
                Mount { source, target, bind }
            }
        })
        .collect()
}

/// The file in the repository that a service sees at `container_path`, through its bind mounts.
fn host_path(svc: &MarkedMappingNode, container_path: &str) -> Option<PathBuf> {
    let wanted = Path::new(container_path);
    mounts(svc)
        .into_iter()
        .filter(|m| m.bind)
        .filter_map(|m| {
            wanted
                .strip_prefix(&m.target)
                .ok()
                .map(|rest| (m.target.len(), m.source, rest.to_path_buf()))
        })
        .max_by_key(|(len, _, _)| *len)
        // Joining an empty rest would add a trailing slash, which a file does not accept.
        .map(|(_, source, rest)| {
            if rest.as_os_str().is_empty() {
                repo_path(&source)
            } else {
                repo_path(&source).join(rest)
            }
        })
}

/// The first tokenwatch instance, which stands for the three.
fn instance(doc: &Node) -> &MarkedMappingNode {
    service(doc, INSTANCES[0].0)
}

/// What tokenwatch makes of these arguments (`run` and its flags) and this environment: parsed by
/// the binary's own flags ([`RunFlags`], what `main` gives the `run` subcommand) and resolved by
/// its configuration code, so an unknown flag, an unknown `TOKENWATCH_*` variable or a key the
/// config file must not have fails here as it would at start. `--config` names a path inside a
/// container; `config_file` is the file on this machine that is mounted there.
pub(super) fn resolve_run(
    args: &[String],
    env: &BTreeMap<String, String>,
    config_file: Option<&Path>,
) -> (ServiceConfig, SocketAddr) {
    #[derive(clap::Parser)]
    #[command(name = "tokenwatch")]
    enum Cmd {
        Run(RunFlags),
    }
    let argv = std::iter::once("tokenwatch".to_string()).chain(args.iter().cloned());
    let Cmd::Run(mut flags) =
        Cmd::try_parse_from(argv).unwrap_or_else(|e| panic!("tokenwatch refuses `{}`: {e}", args.join(" ")));
    if flags.config.is_some() {
        flags.config = Some(
            config_file
                .unwrap_or_else(|| panic!("`{}` names a config file, but none is mounted", args.join(" ")))
                .to_path_buf(),
        );
    }
    flags
        .resolve(env.clone())
        .unwrap_or_else(|e| panic!("tokenwatch refuses `{}` with {env:?}: {e}", args.join(" ")))
}

/// The value following `flag` in an argument list (`--flag value` or `--flag=value`).
pub(super) fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

#[test]
fn the_stack_has_every_service() {
    let doc = compose();
    let root_map = mapping(&doc, "docker-compose.yml");
    assert!(
        root_map.get("version").is_none(),
        "the Compose spec has no top-level `version:`; remove it"
    );
    let names: BTreeSet<&str> = services(&doc)
        .keys()
        .map(marked_yaml::types::MarkedScalarNode::as_str)
        .collect();
    for s in SERVICES {
        assert!(
            names.contains(s),
            "docker-compose.yml has no service `{s}` (it has {names:?})"
        );
    }
}

#[test]
fn kafka_runs_in_kraft_mode_with_listeners_for_containers_and_for_the_host() {
    let doc = compose();
    let kafka = service(&doc, "kafka");
    let image = text(field(kafka, "image", "kafka"), "kafka.image");
    assert!(
        image.starts_with("apache/kafka:"),
        "kafka should use the official apache/kafka image, not `{image}`"
    );
    let env = env(kafka);
    let roles: BTreeSet<&str> = env
        .get("KAFKA_PROCESS_ROLES")
        .map_or("", String::as_str)
        .split(',')
        .collect();
    assert!(
        roles.contains("broker") && roles.contains("controller"),
        "KAFKA_PROCESS_ROLES must be broker,controller for a single KRaft node, found {roles:?}"
    );
    assert!(
        env.contains_key("CLUSTER_ID"),
        "apache/kafka refuses to start in KRaft mode without CLUSTER_ID"
    );
    let advertised = env.get("KAFKA_ADVERTISED_LISTENERS").cloned().unwrap_or_default();
    assert!(
        advertised.contains("://kafka:9092"),
        "containers reach the broker as kafka:9092: {advertised}"
    );
    // Whoever can produce to the log topic writes the evidence tokenwatch acts on: the broker
    // stays inside the compose network, reachable from no host port.
    assert!(
        published(kafka).is_empty() && kafka.get("ports").is_none(),
        "kafka must not publish a port to the host (anyone could produce forged evidence)"
    );
    assert!(
        !advertised.contains("localhost"),
        "no listener is advertised for the host: {advertised}"
    );
    assert!(
        kafka.get("healthcheck").is_some(),
        "kafka needs a healthcheck: the other services wait for it"
    );
}

#[test]
fn the_topic_traffic_writes_is_created_up_front_and_read_by_tokenwatch() {
    let doc = compose();
    let tokenwatch_args = strings(instance(&doc).get("command"));
    let traffic_args = strings(service(&doc, "traffic").get("command"));
    let read_topic = flag_value(&tokenwatch_args, "--topic").expect("tokenwatch's command names no --topic");
    let written_topic = flag_value(&traffic_args, "--topic").expect("traffic's command names no --topic");
    assert_eq!(
        read_topic, written_topic,
        "traffic writes one topic and tokenwatch reads another"
    );
    assert_eq!(
        traffic_args.first().map(String::as_str),
        Some("gen"),
        "traffic runs `tokenwatch gen`"
    );

    let brokers = env(instance(&doc))
        .get("TOKENWATCH_BROKERS")
        .cloned()
        .expect("no TOKENWATCH_BROKERS");
    assert_eq!(
        flag_value(&traffic_args, "--kafka").as_deref(),
        Some(brokers.as_str()),
        "traffic and tokenwatch use different brokers"
    );
    let advertised = env(service(&doc, "kafka"))
        .get("KAFKA_ADVERTISED_LISTENERS")
        .cloned()
        .unwrap_or_default();
    assert!(
        advertised.contains(&format!("://{brokers}")),
        "{brokers} is not a listener kafka advertises: {advertised}"
    );

    // Auto-creation is off, so the topic exists only if kafka-init creates it, with its partitions.
    let init = strings(service(&doc, "kafka-init").get("command")).join(" ");
    let create = init
        .split("kafka-topics.sh")
        .find(|cmd| cmd.contains("--create") && cmd.contains(&format!("--topic {read_topic} ")))
        .unwrap_or_else(|| panic!("kafka-init does not create {read_topic}: {init}"));
    assert!(
        create.contains("--partitions 6"),
        "{read_topic} should have 6 partitions: {create}"
    );
    let alerts_topic =
        flag_value(&tokenwatch_args, "--alerts-topic").expect("tokenwatch's command has no --alerts-topic");
    assert!(
        init.contains(&format!("--topic {alerts_topic} ")),
        "kafka-init does not create {alerts_topic}: {init}"
    );
    for name in [INSTANCES[0].0, "traffic"] {
        let deps = mapping(field(service(&doc, name), "depends_on", name), "depends_on");
        let cond = deps
            .get("kafka-init")
            .and_then(|d| d.as_mapping())
            .and_then(|d| d.get("condition"));
        assert_eq!(
            cond.map(|c| text(c, "condition")),
            Some("service_completed_successfully"),
            "{name} must wait for kafka-init to have created the topics"
        );
    }
}

#[test]
fn published_ports_reach_the_listening_services() {
    let doc = compose();
    for (name, port) in [("prometheus", 9090), ("grafana", 3000)] {
        let ports = published(service(&doc, name));
        assert!(
            ports.contains(&(port, port)),
            "{name} should publish {port}:{port}, publishes {ports:?}"
        );
    }
    // Inside the container tokenwatch must listen on all interfaces, or the published port and
    // Prometheus reach nothing; and on the port the binary listens on by default, which the
    // image EXPOSEs and the Kubernetes manifests name.
    let addr = env(instance(&doc))
        .get("TOKENWATCH_METRICS_ADDR")
        .cloned()
        .unwrap_or_default();
    assert_eq!(addr, "0.0.0.0:9464", "TOKENWATCH_METRICS_ADDR");
    assert_eq!(
        tokenwatch::config::Config::default().metrics_addr.port(),
        9464,
        "the binary's default metrics port"
    );
    for (name, port) in INSTANCES {
        assert_eq!(
            published(service(&doc, name)),
            [(port, 9464)],
            "{name} should publish its metrics on host port {port}"
        );
    }
}

#[test]
fn three_instances_of_one_group_differ_only_in_their_published_port() {
    let doc = compose();
    let mut running: Vec<&str> = services(&doc)
        .iter()
        .filter(|(name, svc)| {
            strings(mapping(svc, name.as_str()).get("command"))
                .first()
                .map(String::as_str)
                == Some("run")
        })
        .map(|(name, _)| name.as_str())
        .collect();
    running.sort_unstable();
    assert_eq!(
        running,
        INSTANCES.map(|(name, _)| name),
        "the services that run `tokenwatch run`"
    );
    let first = instance(&doc);
    for (name, _) in &INSTANCES[1..] {
        let other = service(&doc, name);
        let keys = |m: &MarkedMappingNode| -> BTreeSet<String> { m.keys().map(|k| k.as_str().to_string()).collect() };
        assert_eq!(
            keys(other),
            keys(first),
            "{name} and {} set different keys",
            INSTANCES[0].0
        );
        for (key, value) in first.iter() {
            if key.as_str() != "ports" {
                assert_eq!(
                    other.get(key.as_str()),
                    Some(value),
                    "{name}.{} differs from {}'s",
                    key.as_str(),
                    INSTANCES[0].0
                );
            }
        }
    }
}

#[test]
fn the_instances_command_and_environment_are_what_tokenwatch_run_accepts() {
    let doc = compose();
    let svc = instance(&doc);
    let args = strings(svc.get("command"));
    let config = flag_value(&args, "--config").map(|c| host_path(svc, &c).expect("the config file is not mounted"));
    let (cfg, metrics) = resolve_run(&args, &env(svc), config.as_deref());
    assert_eq!(cfg.shuffle.role, Role::Both, "the instances split the work by key");
    assert_eq!(metrics.to_string(), "0.0.0.0:9464", "where the instances listen");
    // The healthcheck asks the port the instance listens on.
    let health = mapping(field(svc, "healthcheck", "tokenwatch"), "healthcheck");
    let check = strings(Some(field(health, "test", "healthcheck"))).join(" ");
    assert!(
        check.contains(&format!("/dev/tcp/127.0.0.1/{} ", metrics.port())) && check.contains("GET /readyz "),
        "the healthcheck asks another port or path: {check}"
    );
}

#[test]
fn tokenwatch_has_time_to_finish_its_batch_when_stopped() {
    let doc = compose();
    let grace = instance(&doc)
        .get("stop_grace_period")
        .map(|g| text(g, "stop_grace_period").to_string());
    let grace = grace.expect("tokenwatch has no stop_grace_period: Docker kills it after 10s");
    let secs = match grace.split_at(grace.len() - 1) {
        (n, "s") => n.parse::<u64>().ok(),
        (n, "m") => n.parse::<u64>().ok().map(|m| m * 60),
        _ => None,
    };
    let secs = secs.unwrap_or_else(|| panic!("stop_grace_period `{grace}`: write it as NNs or NNm"));
    assert!(
        secs > 30,
        "stop_grace_period {grace} must exceed tokenwatch's default shutdown_timeout (30s)"
    );
}

#[test]
fn every_bind_mount_is_a_path_in_the_repository() {
    let doc = compose();
    let declared: BTreeSet<String> = mapping(&doc, "docker-compose.yml")
        .get("volumes")
        .and_then(Node::as_mapping)
        .map(|m| m.keys().map(|k| k.as_str().to_string()).collect())
        .unwrap_or_default();
    let mut binds = 0;
    for (name, svc) in services(&doc).iter() {
        let name = name.as_str();
        for m in mounts(mapping(svc, name)) {
            if m.bind {
                binds += 1;
                assert!(
                    m.source.starts_with("./"),
                    "{name}: mount {} from inside the repository (./...)",
                    m.source
                );
                let path = repo_path(&m.source);
                assert!(
                    path.exists(),
                    "{name} mounts {} but {} does not exist",
                    m.source,
                    path.display()
                );
            } else {
                assert!(
                    declared.contains(&m.source),
                    "{name} uses volume `{}`, not declared under top-level volumes",
                    m.source
                );
            }
        }
    }
    assert!(
        binds >= 5,
        "expected the rules, config, Prometheus and Grafana mounts, found {binds}"
    );
}

#[test]
fn dependencies_exist_and_wait_only_on_health_that_is_checked() {
    let doc = compose();
    let all = services(&doc);
    for (name, svc) in all.iter() {
        let name = name.as_str();
        let Some(deps) = mapping(svc, name).get("depends_on") else {
            continue;
        };
        let conditions: Vec<(String, String)> = match deps {
            Node::Mapping(m) => m
                .iter()
                .map(|(dep, spec)| {
                    let cond = mapping(spec, dep.as_str())
                        .get("condition")
                        .map_or("service_started", |c| text(c, "condition"));
                    (dep.as_str().to_string(), cond.to_string())
                })
                .collect(),
            other => strings(Some(other))
                .into_iter()
                .map(|d| (d, "service_started".to_string()))
                .collect(),
        };
        for (dep, cond) in conditions {
            let target = all
                .get(dep.as_str())
                .unwrap_or_else(|| panic!("{name} depends on unknown service {dep}"));
            if cond == "service_healthy" {
                assert!(
                    mapping(target, &dep).get("healthcheck").is_some(),
                    "{name} waits for {dep} to be healthy, but {dep} has no healthcheck: it would wait forever"
                );
            }
        }
    }
    let tokenwatch = mapping(field(instance(&doc), "depends_on", "tokenwatch"), "depends_on");
    for (dep, cond) in [("kafka", "service_healthy"), ("redis", "service_healthy")] {
        let got = tokenwatch
            .get(dep)
            .and_then(Node::as_mapping)
            .and_then(|d| d.get("condition"))
            .map(|c| text(c, "condition"));
        assert_eq!(got, Some(cond), "tokenwatch should wait for {dep}");
    }
}

/// Dockerfile instructions as (KEYWORD, arguments), with continuation lines joined and comments
/// and parser directives dropped.
pub(super) fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (kw, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_with_rust_and_runs_tokenwatch_unprivileged_in_a_slim_image() {
    let all = dockerfile();
    let from: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(
        from.len() >= 2,
        "the Dockerfile should have a build stage and a runtime stage"
    );
    assert!(
        all[from[0]].1.starts_with("rust:1-bookworm"),
        "build stage: {}",
        all[from[0]].1
    );
    let last = *from.last().unwrap();
    assert_eq!(all[last].1, "debian:bookworm-slim", "runtime stage");
    let fin = &all[last..];
    let one = |kw: &str| -> String {
        fin.iter()
            .rev()
            .find(|(k, _)| k == kw)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("final stage has no {kw}"))
    };
    let exec_form = |kw: &str| -> Vec<String> {
        serde_json::from_str(&one(kw)).unwrap_or_else(|e| panic!("{kw} should be in exec (JSON) form: {e}"))
    };
    assert_eq!(exec_form("ENTRYPOINT"), ["tokenwatch"]);
    assert_eq!(exec_form("CMD"), ["run", "--config", "/etc/tokenwatch/tokenwatch.toml"]);
    let user = one("USER");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap_or_default()),
        "the image runs as root: USER {user}"
    );
    assert!(
        one("EXPOSE").split_whitespace().any(|p| p == "9464"),
        "the image should EXPOSE 9464"
    );

    // Every file copied from the build context must exist and must not be excluded from it.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for required in ["target", ".git"] {
        assert!(
            ignored.iter().any(|i| i == required),
            ".dockerignore should exclude {required}"
        );
    }
    let copies: Vec<&String> = all
        .iter()
        .filter(|(k, a)| k == "COPY" && !a.starts_with("--from"))
        .map(|(_, a)| a)
        .collect();
    assert!(!copies.is_empty(), "no COPY from the build context");
    for args in copies {
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        for src in &words[..words.len() - 1] {
            if *src == "." {
                continue;
            }
            assert!(
                root().join(src).exists(),
                "the Dockerfile copies {src}, which does not exist"
            );
            let first = src.trim_start_matches("./").split('/').next().unwrap_or_default();
            assert!(
                !ignored.iter().any(|i| i == first),
                "the Dockerfile copies {src}, which .dockerignore excludes"
            );
        }
    }
}

#[test]
fn files_the_containers_are_told_to_read_are_mounted_from_the_repository() {
    let doc = compose();
    let must_exist = |svc: &str, container_path: &str| -> PathBuf {
        let path = host_path(service(&doc, svc), container_path)
            .unwrap_or_else(|| panic!("{svc} reads {container_path}, but no bind mount provides it"));
        assert!(
            path.exists(),
            "{svc} reads {container_path} = {}, which does not exist",
            path.display()
        );
        path
    };

    // tokenwatch: the config of its command, and its rules.
    let args = strings(instance(&doc).get("command"));
    must_exist(
        INSTANCES[0].0,
        &flag_value(&args, "--config").expect("tokenwatch's command has no --config"),
    );
    let rules = env(instance(&doc)).get("TOKENWATCH_RULES").cloned();
    assert!(
        must_exist(INSTANCES[0].0, &rules.expect("tokenwatch has no TOKENWATCH_RULES"))
            .join("token-replay.yaml")
            .is_file()
    );

    // Prometheus: its config, and the rule files that config names (relative to the config).
    let args = strings(service(&doc, "prometheus").get("command"));
    let config = flag_value(&args, "--config.file").expect("prometheus' command has no --config.file");
    let config = must_exist("prometheus", &config);
    let prom = marked_yaml::parse_yaml(0, std::fs::read_to_string(&config).unwrap()).unwrap();
    let rule_files = strings(mapping(&prom, "prometheus.yml").get("rule_files"));
    assert!(!rule_files.is_empty(), "{} loads no rule files", config.display());
    for f in rule_files {
        let path = config.parent().unwrap().join(&f);
        assert!(
            path.is_file(),
            "{} loads {f}, which is not next to it",
            config.display()
        );
    }

    // Grafana: the provisioned datasource, the dashboards directory its provider reads, and the
    // home dashboard.
    must_exist("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml");
    let providers = yaml("deploy/grafana/provisioning/dashboards/tokenwatch.yml");
    let providers = field(
        mapping(&providers, "dashboard providers"),
        "providers",
        "dashboard providers",
    );
    for p in providers.as_sequence().expect("providers is not a list").iter() {
        let options = mapping(field(mapping(p, "provider"), "options", "provider"), "options");
        let dir = must_exist("grafana", text(field(options, "path", "options"), "path"));
        assert!(
            dir.join("tokenwatch.json").is_file(),
            "{} has no tokenwatch.json",
            dir.display()
        );
    }
    let home = env(service(&doc, "grafana"))
        .get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .cloned();
    must_exist("grafana", &home.expect("grafana has no home dashboard"));
    assert_eq!(
        env(service(&doc, "grafana"))
            .get("GF_AUTH_ANONYMOUS_ENABLED")
            .map(String::as_str),
        Some("true"),
        "the demo's Grafana should be viewable without logging in"
    );
}

#[test]
fn prometheus_scrapes_tokenwatch_where_it_listens() {
    let doc = compose();
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let jobs = field(mapping(&prom, "prometheus.yml"), "scrape_configs", "prometheus.yml");
    let job = jobs
        .as_sequence()
        .expect("scrape_configs is not a list")
        .iter()
        .map(|j| mapping(j, "a scrape config"))
        .find(|j| j.get("job_name").map(|n| text(n, "job_name")) == Some("tokenwatch"))
        .expect("no scrape job `tokenwatch` (the alerts select up{job=\"tokenwatch\"})");
    let interval = job
        .get("scrape_interval")
        .map(|i| text(i, "scrape_interval").to_string());
    assert_eq!(interval.as_deref(), Some("5s"), "tokenwatch is scraped every 5s");
    let targets: Vec<String> = field(job, "static_configs", "job tokenwatch")
        .as_sequence()
        .expect("static_configs is not a list")
        .iter()
        .flat_map(|c| strings(mapping(c, "a static config").get("targets")))
        .collect();
    let metrics_port = env(instance(&doc))
        .get("TOKENWATCH_METRICS_ADDR")
        .and_then(|a| a.rsplit(':').next().map(str::to_string))
        .expect("no TOKENWATCH_METRICS_ADDR");
    let wanted: Vec<String> = INSTANCES
        .iter()
        .map(|(name, _)| format!("{name}:{metrics_port}"))
        .collect();
    assert_eq!(
        targets, wanted,
        "Prometheus should scrape every instance where it listens"
    );
}

#[test]
fn grafana_datasource_is_the_prometheus_service() {
    let doc = compose();
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let list = field(mapping(&ds, "datasources file"), "datasources", "datasources file");
    let ds = mapping(&list.as_sequence().expect("datasources is not a list")[0], "datasource");
    assert_eq!(
        text(field(ds, "uid", "datasource"), "uid"),
        "prometheus",
        "the dashboard names uid `prometheus`"
    );
    assert_eq!(text(field(ds, "type", "datasource"), "type"), "prometheus");
    let url = text(field(ds, "url", "datasource"), "url");
    assert_eq!(url, "http://prometheus:9090");
    assert!(
        services(&doc).get("prometheus").is_some(),
        "the datasource points at a service that does not exist"
    );
}

// ---- PromQL ----------------------------------------------------------------------------------

/// Words of PromQL that are not metric names when they are not followed by `(`.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects: identifiers that are not functions, aggregations
/// or keywords, outside label matchers, strings, ranges and Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // Index just past the string whose opening quote is at `i`.
    let skip_string = |mut i: usize| {
        let quote = b[i];
        i += 1;
        while i < b.len() && b[i] != quote {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    // Index just past the `close` that balances the `open` at `i`, skipping quoted strings.
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        b.len()
    };
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if label_list_next && c == b'(' {
            i = skip_group(i, b'(', b')');
            label_list_next = false;
            continue;
        }
        label_list_next = false;
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(i),
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'$' => {
                // A Grafana variable: $name or ${name}.
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    i = skip_group(i, b'{', b'}');
                }
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' => {
                // Numbers and durations: 0.99, 1e3, 5m, 0x1f.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    label_list_next = true;
                    continue;
                }
                let next = skip_ws(i);
                let called = b.get(next) == Some(&b'(');
                let rest = &expr[next..];
                let aggregated = ["by", "without"].iter().any(|kw| {
                    rest.get(..kw.len()).is_some_and(|w| w.eq_ignore_ascii_case(kw))
                        && !rest.as_bytes().get(kw.len()).copied().is_some_and(ident)
                });
                if !called && !aggregated && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn known_metrics() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = PROMETHEUS_SERIES.iter().map(std::string::ToString::to_string).collect();
    for f in exported() {
        if f.histogram {
            known.extend(["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", f.name)));
        } else {
            known.insert(f.name);
        }
    }
    known
}

/// Metric names in `expr` that tokenwatch (or Prometheus) does not export.
fn unknown_metrics(expr: &str) -> Vec<String> {
    let known = known_metrics();
    metric_names(expr).into_iter().filter(|m| !known.contains(m)).collect()
}

fn family(series: &str) -> String {
    histograms()
        .into_iter()
        .find(|h| {
            series
                .strip_prefix(h.as_str())
                .is_some_and(|s| s.is_empty() || s.starts_with('_'))
        })
        .unwrap_or_else(|| series.to_string())
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(tokenwatch_decision_delay_seconds_bucket{le!=\"+Inf\", job=~\"a|b\"}[$__rate_interval])))"),
        ["tokenwatch_decision_delay_seconds_bucket"]
    );
    assert_eq!(names("up{job=\"tokenwatch\"} == 0"), ["up"]);
    assert_eq!(
        names("sum without (instance) (a) / ignoring(result) group_left b offset 5m > bool 1"),
        ["a", "b"]
    );
    assert_eq!(names("sum(x) by (topic) and on (instance) y unless z"), ["x", "y", "z"]);
    assert_eq!(
        names("label_replace(foo, \"dst\", \"$1\", \"src\", \"(bar.*)\") * 1e3"),
        ["foo"]
    );
    assert_eq!(
        names("max by(topic) (tokenwatch_consumer_lag) > 100000"),
        ["tokenwatch_consumer_lag"]
    );
    assert_eq!(names("increase(c[${__range}]) or vector(0)"), ["c"]);
    assert!(names("vector(1) + time()").is_empty());
}

#[test]
fn unknown_metric_names_are_reported() {
    assert_eq!(
        unknown_metrics("sum(rate(tokenwatch_event_total[5m]))"),
        ["tokenwatch_event_total"]
    );
    assert_eq!(
        unknown_metrics("tokenwatch_decision_delay_seconds > 1"),
        ["tokenwatch_decision_delay_seconds"]
    );
    assert_eq!(
        unknown_metrics("rate(process_cpu_seconds_total[1m]) + tokenwatch_redis_up"),
        ["process_cpu_seconds_total"]
    );
    assert!(unknown_metrics("rate(tokenwatch_decision_delay_seconds_count[5m]) * up").is_empty());
}

/// Every panel of a dashboard, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            out.push(p);
            walk(p.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| p.get("targets").and_then(Value::as_array).into_iter().flatten())
        .filter_map(|t| t.get("expr").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn alert_exprs() -> Vec<(String, String)> {
    let doc = yaml("deploy/prometheus/alerts.yml");
    let groups = field(mapping(&doc, "alerts.yml"), "groups", "alerts.yml");
    let mut out = Vec::new();
    for g in groups.as_sequence().expect("groups is not a list").iter() {
        for r in field(mapping(g, "group"), "rules", "group")
            .as_sequence()
            .expect("rules is not a list")
            .iter()
        {
            let r = mapping(r, "rule");
            let name = r
                .get("alert")
                .or_else(|| r.get("record"))
                .map_or("?", |n| text(n, "alert"));
            out.push((name.to_string(), text(field(r, "expr", name), "expr").to_string()));
        }
    }
    out
}

#[test]
fn dashboard_panels_query_prometheus_for_metrics_tokenwatch_exports() {
    let dash = json("deploy/grafana/dashboards/tokenwatch.json");
    let schema = dash.get("schemaVersion").and_then(Value::as_u64).unwrap_or(0);
    assert!(
        schema >= 36,
        "schemaVersion {schema}: Grafana 9+ dashboards reference datasources by uid"
    );
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels(&dash) {
        let title = p.get("title").and_then(Value::as_str).unwrap_or("?");
        let id = p
            .get("id")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("panel {title} has no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is used twice");
        if p.get("type").and_then(Value::as_str) == Some("row") {
            continue;
        }
        let uid = |v: &Value| {
            v.get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        assert_eq!(uid(p).as_deref(), Some("prometheus"), "panel {title}: datasource uid");
        let targets = p.get("targets").and_then(Value::as_array).cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in &targets {
            assert!(
                uid(t).is_none_or(|u| u == "prometheus"),
                "panel {title}: a query uses another datasource"
            );
            let expr = t
                .get("expr")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("panel {title}: a query has no expr"));
            assert!(
                !metric_names(expr).is_empty(),
                "panel {title}: no metric found in `{expr}`"
            );
            let unknown = unknown_metrics(expr);
            assert!(
                unknown.is_empty(),
                "panel {title} queries {unknown:?}, which tokenwatch does not export: {expr}"
            );
            queries += 1;
        }
    }
    assert!(queries >= 10, "only {queries} queries on the dashboard");
    let exprs = dashboard_exprs(&dash).join("\n");
    for q in ["0.5", "0.99"] {
        let wanted = format!("histogram_quantile({q}, sum by (le) (rate(tokenwatch_decision_delay_seconds_bucket");
        assert!(
            exprs.contains(&wanted),
            "the dashboard should show the decision delay's p{q}"
        );
    }
}

#[test]
fn alert_rules_use_only_metrics_tokenwatch_exports() {
    let rules = alert_exprs();
    assert!(
        rules.len() >= 7,
        "expected at least the 7 documented alerts, found {}",
        rules.len()
    );
    for (name, expr) in rules {
        assert!(!metric_names(&expr).is_empty(), "{name}: no metric found in `{expr}`");
        let unknown = unknown_metrics(&expr);
        assert!(
            unknown.is_empty(),
            "alert {name} uses {unknown:?}, which tokenwatch does not export: {expr}"
        );
    }
}

#[test]
fn every_metric_is_on_the_dashboard_or_in_an_alert() {
    let mut used: BTreeSet<String> = BTreeSet::new();
    for expr in dashboard_exprs(&json("deploy/grafana/dashboards/tokenwatch.json")) {
        used.extend(metric_names(&expr).iter().map(|m| family(m)));
    }
    for (_, expr) in alert_exprs() {
        used.extend(metric_names(&expr).iter().map(|m| family(m)));
    }
    let names: BTreeSet<String> = exported().into_iter().map(|f| f.name).collect();
    let gone: Vec<&&str> = SHOWN.iter().filter(|m| !names.contains(**m)).collect();
    assert!(gone.is_empty(), "shown but no longer exported: {gone:?}");
    let unused: Vec<&&str> = SHOWN.iter().filter(|m| !used.contains(**m)).collect();
    assert!(
        unused.is_empty(),
        "exported but neither shown nor alerted on: {unused:?}"
    );
}
