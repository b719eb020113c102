//! The Kubernetes manifests (deploy/kubernetes/), checked without a cluster.
//!
//! No cluster runs in CI, so nothing else would notice a manifest that disagrees with the binary
//! before a user's `kubectl apply -k` does, or worse, after: a flag or `TOKENWATCH_*` variable
//! `run` refuses, a config key it does not know, a probe on a path it does not serve or on another
//! port, a Service that selects no pod, a rules ConfigMap that drifted from rules/, a KEDA trigger
//! on a group or topic tokenwatch does not use, more replicas than partitions. These tests parse
//! every manifest and check exactly those things against the crate itself: the configuration is
//! resolved by tokenwatch's own flags and configuration code ([`resolve_run`]), the probes are
//! asked of tokenwatch's own HTTP server, the rules are loaded by its own loader.
//! Set TOKENWATCH_BLESS=1 to rewrite rules.yaml from rules/ after editing a rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use marked_yaml::types::{MarkedMappingNode, Node};

use super::compose::{
    compose, dockerfile, field, flag_value, mapping, read, resolve_run, root, service, strings, text, yaml,
};
use tokenwatch::config::Role;
use tokenwatch::service::{ServiceConfig, ShuffleConfig};
use tokenwatch::sinks::alerts::AlertTarget;

const DIR: &str = "deploy/kubernetes";

/// What the cluster is given: the files kustomization.yaml lists, parsed.
fn resources() -> Vec<(String, Node)> {
    let k = yaml(&format!("{DIR}/kustomization.yaml"));
    strings(mapping(&k, "kustomization.yaml").get("resources"))
        .into_iter()
        .map(|file| {
            let doc = yaml(&format!("{DIR}/{file}"));
            (file, doc)
        })
        .collect()
}

/// The one resource of `kind` (named `name`, when given).
fn resource(kind: &str, name: Option<&str>) -> Node {
    let mut found: Vec<Node> = resources()
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| str_at(doc, "kind") == kind && name.is_none_or(|n| str_at(doc, "metadata.name") == n))
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name:?} in {DIR}");
    found.remove(0)
}

/// The node at a dotted path of mapping keys: `spec.template.spec`.
fn at<'a>(node: &'a Node, path: &str) -> &'a Node {
    path.split('.').fold(node, |n, key| field(mapping(n, path), key, path))
}

fn str_at<'a>(node: &'a Node, path: &str) -> &'a str {
    text(at(node, path), path)
}

fn list<'a>(node: &'a Node, path: &str) -> Vec<&'a MarkedMappingNode> {
    at(node, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
        .iter()
        .map(|n| mapping(n, path))
        .collect()
}

fn get<'a>(m: &'a MarkedMappingNode, key: &str) -> Option<&'a str> {
    m.get(key).map(|n| text(n, key))
}

/// A mapping of strings (labels, selectors, ConfigMap data).
fn string_map(node: &Node, what: &str) -> BTreeMap<String, String> {
    mapping(node, what)
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), text(v, what).to_string()))
        .collect()
}

fn deployment() -> Node {
    resource("Deployment", None)
}

/// The pod's one container.
fn container(deploy: &Node) -> &MarkedMappingNode {
    let containers = list(deploy, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "the pod runs tokenwatch alone");
    containers[0]
}

/// The container's port of this name.
fn container_port(deploy: &Node, name: &str) -> u16 {
    let ports = container(deploy).get("ports").expect("the container declares no ports");
    ports
        .as_sequence()
        .expect("ports is not a list")
        .iter()
        .map(|p| mapping(p, "a port"))
        .find(|p| get(p, "name") == Some(name))
        .map(|p| {
            text(field(p, "containerPort", "a port"), "containerPort")
                .parse()
                .unwrap()
        })
        .unwrap_or_else(|| panic!("the container has no port named {name}"))
}

/// A port as a probe or a Service names it: a number, or the name of a container port.
fn port_number(deploy: &Node, port: &str) -> u16 {
    port.parse().unwrap_or_else(|_| container_port(deploy, port))
}

/// Where a Secret stands in for a value the repository does not hold.
fn secret_stand_in(var: &str) -> &'static str {
    match var {
        "TOKENWATCH_REDIS" => "rediss://tokenwatch:secret@redis.example:6380",
        other => panic!("{other} comes from a Secret: give it a stand-in value here"),
    }
}

/// The container's environment, Secret references replaced by stand-ins.
fn container_env(deploy: &Node) -> BTreeMap<String, String> {
    let Some(env) = container(deploy).get("env") else {
        return BTreeMap::new();
    };
    env.as_sequence()
        .expect("env is not a list")
        .iter()
        .map(|e| {
            let e = mapping(e, "an env entry");
            let name = text(field(e, "name", "an env entry"), "name").to_string();
            let value = match (get(e, "value"), e.get("valueFrom")) {
                (Some(v), None) => v.to_string(),
                (None, Some(from)) => {
                    assert!(
                        mapping(from, "valueFrom").get("secretKeyRef").is_some(),
                        "{name}: only Secrets may supply a value"
                    );
                    secret_stand_in(&name).to_string()
                }
                _ => panic!("{name} needs a value or a valueFrom"),
            };
            (name, value)
        })
        .collect()
}

/// The ConfigMap a volume of the pod mounts at `mount_path`, if one does.
fn mounted_config_map(deploy: &Node, mount_path: &str) -> Option<Node> {
    let mount = container(deploy)
        .get("volumeMounts")?
        .as_sequence()?
        .iter()
        .map(|m| mapping(m, "a volume mount"))
        .find(|m| get(m, "mountPath") == Some(mount_path))?;
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount is never updated: a ConfigMap edit would not reach the pod"
    );
    let volume = get(mount, "name").unwrap();
    let volume = list(deploy, "spec.template.spec.volumes")
        .into_iter()
        .find(|v| get(v, "name") == Some(volume))
        .unwrap_or_else(|| panic!("no volume {volume}"));
    let config_map = mapping(field(volume, "configMap", "a volume"), "configMap");
    assert!(
        config_map.get("items").is_none(),
        "items would hide files of the ConfigMap"
    );
    Some(resource(
        "ConfigMap",
        Some(text(field(config_map, "name", "configMap"), "name")),
    ))
}

/// The text of the file at `path` in the container, from the ConfigMap mounted above it.
fn mounted_file(deploy: &Node, path: &str) -> String {
    let path = Path::new(path);
    let dir = path.parent().and_then(Path::to_str).unwrap();
    let key = path.file_name().and_then(|n| n.to_str()).unwrap();
    let cm = mounted_config_map(deploy, dir).unwrap_or_else(|| panic!("no ConfigMap is mounted at {dir}"));
    string_map(at(&cm, "data"), "data")
        .remove(key)
        .unwrap_or_else(|| panic!("the ConfigMap mounted at {dir} has no {key}"))
}

/// `tokenwatch run` as the Deployment starts it: its arguments, its environment and the config
/// file from its ConfigMap, resolved by tokenwatch's own code.
fn deployed_config(deploy: &Node) -> (ServiceConfig, std::net::SocketAddr) {
    let args = strings(container(deploy).get("args"));
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "the image's ENTRYPOINT is tokenwatch; args start with the subcommand"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = flag_value(&args, "--config").map(|c| {
        let file = dir.path().join("tokenwatch.toml");
        std::fs::write(&file, mounted_file(deploy, &c)).unwrap();
        file
    });
    resolve_run(&args, &container_env(deploy), config.as_deref())
}

/// Partitions kafka-init gives `topic` in the compose stack, the deployment the manifests'
/// numbers are written for.
fn compose_partitions(topic: &str) -> i32 {
    let doc = compose();
    let init = strings(service(&doc, "kafka-init").get("command")).join(" ");
    let create = init
        .split("kafka-topics.sh")
        .find(|cmd| cmd.contains("--create") && cmd.contains(&format!("--topic {topic} ")))
        .unwrap_or_else(|| panic!("kafka-init does not create {topic}"));
    let words: Vec<&str> = create.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "--partitions")
        .expect("no --partitions");
    words[at + 1].parse().unwrap()
}

/// Kubernetes' memory quantities as this directory writes them.
fn bytes(quantity: &str) -> usize {
    let (n, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap_or(quantity.len()));
    let n: usize = n.parse().unwrap_or_else(|_| panic!("quantity {quantity}"));
    n << match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        other => panic!("write memory in Ki, Mi or Gi, not {other}"),
    }
}

#[test]
fn kustomize_applies_every_manifest_and_each_is_a_resource() {
    let listed: BTreeSet<String> = resources().into_iter().map(|(file, _)| file).collect();
    let present: BTreeSet<String> = std::fs::read_dir(root().join(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml should list every manifest beside it"
    );
    let mut kinds: Vec<String> = resources()
        .iter()
        .map(|(file, doc)| {
            for key in ["apiVersion", "kind", "metadata.name"] {
                assert!(!str_at(doc, key).is_empty(), "{file}: no {key}");
            }
            str_at(doc, "kind").to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "ScaledObject",
            "Service",
            "ServiceMonitor"
        ]
    );
    // kustomize replaces the image by its name: the container must use that name.
    let k = yaml(&format!("{DIR}/kustomization.yaml"));
    let images = list(&k, "images");
    let deploy = deployment();
    let image = get(container(&deploy), "image").expect("no image");
    assert!(
        images.iter().any(|i| get(i, "name") == Some(image)),
        "kustomization.yaml names no image `{image}`: the container would pull `{image}` as is"
    );
}

#[test]
fn the_deployment_runs_what_tokenwatch_run_accepts() {
    let deploy = deployment();
    let (cfg, metrics) = deployed_config(&deploy);
    assert_eq!(cfg.shuffle.role, Role::Both, "every pod runs both stages");
    assert!(
        metrics.ip().is_unspecified(),
        "tokenwatch listens on {metrics}: probes and Prometheus reach only all interfaces"
    );
    assert_eq!(
        metrics.port(),
        container_port(&deploy, "metrics"),
        "tokenwatch listens on {metrics}, the container declares another port"
    );
    assert_eq!(
        metrics.port(),
        tokenwatch::config::Config::default().metrics_addr.port(),
        "the binary's default port, the one the image EXPOSEs"
    );
    // The rules are read where the rules ConfigMap is mounted.
    let rules = cfg.rules_dir.to_str().unwrap();
    let cm = mounted_config_map(&deploy, rules).unwrap_or_else(|| panic!("no ConfigMap is mounted at {rules}"));
    assert_eq!(str_at(&cm, "metadata.name"), "tokenwatch-rules");
    // SIGTERM finishes the batch within shutdown_timeout; the kubelet kills only after the grace
    // period.
    let grace: u64 = str_at(&deploy, "spec.template.spec.terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    assert!(
        grace > cfg.shutdown_timeout.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed shutdown_timeout {:?}",
        cfg.shutdown_timeout
    );
}

#[tokio::test]
async fn probes_ask_the_port_and_paths_tokenwatch_serves() {
    let deploy = deployment();
    let (_, metrics_addr) = deployed_config(&deploy);
    let probe = |kind: &str| -> String {
        let c = container(&deploy);
        let get = mapping(
            field(mapping(field(c, kind, "the container"), kind), "httpGet", kind),
            "httpGet",
        );
        let port = port_number(&deploy, text(field(get, "port", kind), "port"));
        assert_eq!(port, metrics_addr.port(), "{kind} asks port {port}");
        text(field(get, "path", kind), "path").to_string()
    };
    let (liveness, readiness) = (probe("livenessProbe"), probe("readinessProbe"));

    let m = tokenwatch::metrics::Metrics::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(tokenwatch::metrics::serve(l, m.clone()));
    let status = |path: String| async move { tokenwatch::metrics::http_get(addr, &path).await.unwrap().0 };

    // Not ready (no partitions, Redis never answered): alive all the same, or a Redis outage
    // would have the kubelet restart every pod.
    assert_eq!(
        status(liveness.clone()).await,
        200,
        "liveness {liveness} on a live process"
    );
    assert_eq!(
        status(readiness.clone()).await,
        503,
        "readiness {readiness} before partitions and Redis"
    );
    m.assigned_partitions.set(3);
    m.redis_up.set(1);
    assert_eq!(
        status(readiness.clone()).await,
        200,
        "readiness {readiness} once consuming"
    );
    assert_eq!(status(liveness.clone()).await, 200, "liveness {liveness}");
}

#[test]
fn the_service_and_the_servicemonitor_reach_the_metrics_port() {
    let deploy = deployment();
    let (_, metrics) = deployed_config(&deploy);
    let pod_labels = string_map(at(&deploy, "spec.template.metadata.labels"), "pod labels");
    let selects = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(
        selects(
            &string_map(at(&deploy, "spec.selector.matchLabels"), "selector"),
            &pod_labels
        ),
        "the Deployment's selector does not match its pods"
    );

    let svc = resource("Service", None);
    assert!(
        selects(&string_map(at(&svc, "spec.selector"), "selector"), &pod_labels),
        "the Service selects no tokenwatch pod"
    );
    let ports = list(&svc, "spec.ports");
    assert_eq!(ports.len(), 1, "the Service exposes the metrics port only");
    let target = get(ports[0], "targetPort").expect("no targetPort");
    assert_eq!(
        port_number(&deploy, target),
        metrics.port(),
        "the Service forwards to another port than tokenwatch's"
    );
    let port_name = get(ports[0], "name").expect("the Service port has no name (the ServiceMonitor names it)");

    let monitor = resource("ServiceMonitor", None);
    assert!(
        selects(
            &string_map(at(&monitor, "spec.selector.matchLabels"), "selector"),
            &string_map(at(&svc, "metadata.labels"), "Service labels")
        ),
        "the ServiceMonitor selects no tokenwatch Service"
    );
    let endpoints = list(&monitor, "spec.endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(get(endpoints[0], "port"), Some(port_name), "ServiceMonitor port");
    assert_eq!(get(endpoints[0], "path"), Some("/metrics"), "ServiceMonitor path");
    // The operator names the job after the Service; the alerts select that job.
    let job = str_at(&svc, "metadata.name");
    assert!(
        read("deploy/prometheus/alerts.yml").contains(&format!("job=\"{job}\"")),
        "alerts.yml does not select the job `{job}` the ServiceMonitor scrapes"
    );
}

/// rules.yaml as it must be: every file of rules/, byte for byte, in a ConfigMap.
fn rules_config_map() -> String {
    let mut out = String::from(
        "# Generated from rules/ by tests/it/deploy.rs (TOKENWATCH_BLESS=1 cargo test --test it deploy::):\n\
         # every file of the repository's rule directory, mounted at /etc/tokenwatch/rules. Edit the\n\
         # rules there (or replace this ConfigMap with your own rule set); a test fails when this copy\n\
         # differs from rules/.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tokenwatch-rules\ndata:\n",
    );
    for (name, content) in rules_dir() {
        // A block scalar keeps the text as is; its chomping indicator says how it ends.
        let chomp = match content.strip_suffix('\n') {
            None => "-",
            Some(rest) if rest.ends_with('\n') => "+",
            Some(_) => "",
        };
        let indent = if content.starts_with([' ', '\t']) { "4" } else { "" };
        out.push_str(&format!("  {name}: |{indent}{chomp}\n"));
        for line in content.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

fn rules_dir() -> BTreeMap<String, String> {
    std::fs::read_dir(root().join("rules"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_rules_config_map_is_a_copy_of_the_rules_directory() {
    if std::env::var_os("TOKENWATCH_BLESS").is_some() {
        std::fs::write(root().join(DIR).join("rules.yaml"), rules_config_map()).unwrap();
    }
    let cm = resource("ConfigMap", Some("tokenwatch-rules"));
    let data = string_map(at(&cm, "data"), "data");
    let rules = rules_dir();
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&data),
        names(&rules),
        "rules.yaml and rules/ hold different files (TOKENWATCH_BLESS=1 rewrites rules.yaml)"
    );
    for (name, text) in &rules {
        assert!(
            data[name] == *text,
            "rules.yaml's {name} differs from rules/{name} (TOKENWATCH_BLESS=1 rewrites rules.yaml)"
        );
    }
}

#[test]
fn the_rules_load_from_a_config_map_volume() {
    // The kubelet writes a ConfigMap volume as a timestamped directory, a `..data` link to it,
    // and one link per key through `..data`; an update swaps `..data`.
    let cm = resource("ConfigMap", Some("tokenwatch-rules"));
    let dir = tempfile::tempdir().unwrap();
    let stamped = dir.path().join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&stamped).unwrap();
    for (name, text) in string_map(at(&cm, "data"), "data") {
        std::fs::write(stamped.join(&name), text).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(&name), dir.path().join(&name)).unwrap();
    }
    std::os::unix::fs::symlink(stamped.file_name().unwrap(), dir.path().join("..data")).unwrap();
    let ids = |d: &Path| -> Vec<String> {
        tokenwatch_core::rules::load_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .rules
            .iter()
            .map(|r| r.id.to_string())
            .collect()
    };
    let loaded = ids(dir.path());
    assert!(!loaded.is_empty());
    assert_eq!(
        loaded,
        ids(&root().join("rules")),
        "the mounted rules are not the repository's"
    );
}

#[test]
fn keda_scales_on_the_lag_of_the_groups_and_topics_tokenwatch_reads() {
    let deploy = deployment();
    let (cfg, _) = deployed_config(&deploy);
    let scaled = resource("ScaledObject", None);
    assert_eq!(
        str_at(&scaled, "spec.scaleTargetRef.name"),
        str_at(&deploy, "metadata.name"),
        "the ScaledObject scales another Deployment"
    );
    assert!(
        mapping(at(&deploy, "spec"), "spec").get("replicas").is_none(),
        "the Deployment sets `replicas`, which fights KEDA's count on every apply"
    );

    let mut wanted: BTreeSet<(String, String)> = cfg.topics.iter().map(|t| (t.clone(), cfg.group.clone())).collect();
    wanted.insert((
        cfg.shuffle.events_topic.clone(),
        ShuffleConfig::detect_group(&cfg.group),
    ));
    let reset = tokenwatch::source::kafka::base_config(&cfg.brokers, &cfg.group, &BTreeMap::new())
        .get("auto.offset.reset")
        .map(str::to_string);
    let mut triggered = BTreeSet::new();
    for t in list(&scaled, "spec.triggers") {
        assert_eq!(get(t, "type"), Some("kafka"));
        let meta = mapping(field(t, "metadata", "a trigger"), "metadata");
        let m = |key: &str| get(meta, key).unwrap_or_else(|| panic!("a trigger has no {key}"));
        assert_eq!(m("bootstrapServers"), cfg.brokers, "KEDA asks other brokers");
        assert_eq!(
            Some(m("offsetResetPolicy")),
            reset.as_deref(),
            "KEDA counts the lag of a new partition from elsewhere than tokenwatch reads it"
        );
        assert!(m("lagThreshold").parse::<u64>().is_ok_and(|n| n > 0));
        triggered.insert((m("topic").to_string(), m("consumerGroup").to_string()));
    }
    assert_eq!(
        triggered, wanted,
        "the triggers should be the gateway topics in tokenwatch's group and the internal topic in the detect group"
    );
    // The by-key topic exists only for rules that need it (none of the default ones): its
    // trigger is a comment to uncomment, which must name the topic tokenwatch creates.
    let text = std::fs::read_to_string(root().join(DIR).join("scaledobject.yaml")).unwrap();
    assert!(
        text.contains(&format!("#     topic: {}", cfg.shuffle.by_key_topic)),
        "the commented by-key trigger names another topic than {}",
        cfg.shuffle.by_key_topic
    );

    let max: i32 = str_at(&scaled, "spec.maxReplicaCount").parse().unwrap();
    let min: i32 = str_at(&scaled, "spec.minReplicaCount").parse().unwrap();
    assert!((1..=max).contains(&min), "minReplicaCount {min}, maxReplicaCount {max}");
    let gateway: i32 = cfg.topics.iter().map(|t| compose_partitions(t)).sum();
    assert!(
        max <= gateway && max <= cfg.shuffle.partitions,
        "maxReplicaCount {max}: more pods than the {gateway} gateway partitions or the {} internal ones would sit idle",
        cfg.shuffle.partitions
    );
}

#[test]
fn the_pod_runs_unprivileged_on_a_read_only_root_within_its_memory() {
    let deploy = deployment();
    let (cfg, _) = deployed_config(&deploy);
    let pod = at(&deploy, "spec.template.spec.securityContext");
    assert_eq!(str_at(pod, "runAsNonRoot"), "true");
    let user = dockerfile()
        .into_iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, u)| u)
        .expect("the image has no USER");
    assert_eq!(
        str_at(pod, "runAsUser"),
        user.split(':').next().unwrap(),
        "runAsUser should be the image's user"
    );
    let c = container(&deploy);
    let sc = field(c, "securityContext", "the container");
    assert_eq!(str_at(sc, "readOnlyRootFilesystem"), "true");
    assert_eq!(str_at(sc, "allowPrivilegeEscalation"), "false");
    assert_eq!(strings(Some(at(sc, "capabilities.drop"))), ["ALL"]);
    // Nothing tokenwatch is told to write goes to a file: a read-only root would refuse it.
    assert!(
        matches!(cfg.alerts, AlertTarget::Stdout | AlertTarget::None) && cfg.dead_letter.is_none(),
        "decisions or dead letters go to a file, which the read-only root refuses"
    );

    let res = field(c, "resources", "the container");
    assert_eq!(str_at(res, "requests.cpu"), "2", "a 2-core instance");
    assert_eq!(str_at(res, "limits.cpu"), "2", "a 2-core instance");
    // Rule state and the token cache are budgets of the process (each internal partition's
    // engine gets its share of state_bytes).
    let limit = bytes(str_at(res, "limits.memory"));
    let budgets = cfg.pipeline.engine.state_bytes + cfg.pipeline.token_cache_bytes;
    assert!(
        limit > budgets,
        "memory limit {limit} B is below the budgets' {budgets} B (state_bytes + token_cache_bytes)"
    );
}

#[test]
fn the_redis_secret_is_created_as_the_documentation_says() {
    let deploy = deployment();
    let refs: Vec<(String, String)> = container(&deploy)
        .get("env")
        .and_then(Node::as_sequence)
        .into_iter()
        .flat_map(|s| s.iter())
        .filter_map(|e| mapping(e, "env").get("valueFrom"))
        .map(|from| {
            let r = at(from, "secretKeyRef");
            (str_at(r, "name").to_string(), str_at(r, "key").to_string())
        })
        .collect();
    assert!(!refs.is_empty(), "the Redis URL should come from a Secret");
    for (name, key) in refs {
        let command = format!("create secret generic {name} --from-literal={key}=");
        for doc in ["README.md", "deploy/kubernetes/kustomization.yaml"] {
            assert!(
                read(doc).contains(&command),
                "{doc} should show `kubectl ... {command}...`, the Secret the Deployment reads"
            );
        }
    }
}
