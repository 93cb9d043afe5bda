//! `deploy/kubernetes/`: the manifests say what the README says they do, and the Deployment's
//! container runs a `baton` command line this `baton` accepts.
//!
//! No cluster is involved: the manifests are read as YAML, and the container's arguments are
//! run by the `baton` under test, once as they are (`config`, which validates every option but
//! opens no store) and once for real on a scratch SQLite store in place of `kubernetes:`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use rustix::process::Signal;
use serde_json::Value;

use super::{Running, Scratch, free_port, http_get, run, text};

/// The verbs the Role grants on leases (README, "Running in a cluster"): read and follow,
/// create on the first acquire, conditional writes to acquire, renew and release; delete for the
/// presence records only (a stopping candidate's, and those that ran out).
const LEASE_VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// A name the downward API could give a pod of the Deployment.
const POD_NAME: &str = "baton-5d8f7c9b4-x2x7q";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// One manifest, parsed.
fn manifest(name: &str) -> Value {
    let path = deploy_dir().join(name);
    let yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

/// Whether `name` is a valid name for a Lease: a DNS-1123 subdomain, as the API server
/// validates object names (apimachinery's `IsDNS1123Subdomain`): at most 253 characters, dot
/// separated labels of lowercase letters, digits and `-`, each starting and ending with a
/// letter or digit.
fn is_lease_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

/// The container's arguments, and the Lease name after `--key`.
fn container(deployment: &Value) -> (&Value, Vec<String>) {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let container = &containers[0];
    let args = strings(&container["args"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    (container, args)
}

/// The value following `flag` among the options before the subcommand.
fn option<'a>(args: &'a [String], flag: &str) -> &'a str {
    let run = args.iter().position(|a| a == "run").expect("a run command");
    let at = args[..run]
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} before `run` in {args:?}"));
    &args[at + 1]
}

#[test]
fn lease_names_are_dns_subdomains() {
    for good in ["baton-demo", "a", "my.app-1", &"a".repeat(253)] {
        assert!(is_lease_name(good), "{good}");
    }
    // Baton's default key is not one: a Deployment must name its Lease.
    for bad in [
        "baton:leader",
        "Baton",
        "-a",
        "a-",
        "a..b",
        "",
        &"a".repeat(254),
    ] {
        assert!(!is_lease_name(bad), "{bad}");
    }
}

#[test]
fn deploy_role_grants_only_the_lease_verbs_the_store_needs() {
    let role = manifest("role.yaml");
    assert_eq!(role["apiVersion"], "rbac.authorization.k8s.io/v1");
    assert_eq!(role["kind"], "Role", "namespaced, not a ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let rule = rules[0].as_object().unwrap();
    let keys: BTreeSet<&str> = rule.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiGroups", "resources", "verbs"]),
        "no resourceNames, no nonResourceURLs"
    );
    assert_eq!(strings(&rule["apiGroups"]), ["coordination.k8s.io"]);
    assert_eq!(strings(&rule["resources"]), ["leases"]);
    let verbs = strings(&rule["verbs"]);
    assert_eq!(verbs.len(), LEASE_VERBS.len(), "no verb twice: {verbs:?}");
    assert_eq!(
        verbs.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(LEASE_VERBS)
    );
}

#[test]
fn deploy_rolebinding_binds_the_role_to_the_service_account() {
    let account = manifest("serviceaccount.yaml");
    let role = manifest("role.yaml");
    let binding = manifest("rolebinding.yaml");
    let kustomization = manifest("kustomization.yaml");
    assert_eq!(account["kind"], "ServiceAccount");
    assert_eq!(binding["kind"], "RoleBinding");
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        })
    );
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account["metadata"]["name"]);
    // Applied without kustomize, the subject must name the namespace the objects land in.
    assert_eq!(subjects[0]["namespace"], kustomization["namespace"]);
}

#[test]
fn deploy_kustomization_applies_every_manifest() {
    let kustomization = manifest("kustomization.yaml");
    let listed: BTreeSet<&str> = strings(&kustomization["resources"]).into_iter().collect();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(deploy_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            files.insert(name);
        }
    }
    assert_eq!(
        listed,
        files.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for file in &files {
        let object = manifest(file);
        assert!(
            object
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .is_none(),
            "{file}: the kustomization sets the namespace"
        );
    }
}

#[test]
fn deploy_deployment_runs_three_baton_runs_as_the_service_account() {
    let deployment = manifest("deployment.yaml");
    let account = manifest("serviceaccount.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let labels = &spec["template"]["metadata"]["labels"];
    for (name, value) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[name], value, "the selector selects the pods");
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    // Time to stop the command (--kill-after is at most a quarter of the 15 s lease) and
    // release, before the kubelet's SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("set");
    assert!((10..=60).contains(&grace), "{grace}");

    let (container, args) = container(&deployment);
    // The image's entrypoint runs baton; the container only passes arguments.
    assert!(container.get("command").is_none(), "{container}");
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let entrypoint = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert!(entrypoint.ends_with("baton\"]"), "{entrypoint}");
    assert!(
        dockerfile.contains("cargo install --locked --path crates/baton-cli "),
        "the image has this workspace's baton, its dependencies as locked"
    );

    assert_eq!(option(&args, "--store"), "kubernetes:");
    let key = option(&args, "--key");
    assert!(is_lease_name(key), "--key {key} is not a valid Lease name");
    let run = args.iter().position(|a| a == "run").unwrap();
    assert_eq!(
        args.get(run + 1).map(String::as_str),
        Some("--"),
        "{args:?}"
    );
    assert!(args.len() > run + 2, "a command after --");

    let env = container["env"].as_array().expect("env");
    let id = env
        .iter()
        .find(|e| e["name"] == "BATON_ID")
        .expect("BATON_ID");
    assert_eq!(
        id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "the candidate id is the pod's name"
    );
    // The probe's named port is where BATON_METRICS_ADDR serves /healthz.
    let probe_port = &container["livenessProbe"]["httpGet"]["port"];
    let port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| &p["name"] == probe_port)
        .expect("the probe's port")["containerPort"]
        .as_u64()
        .unwrap();
    let metrics = env
        .iter()
        .find(|e| e["name"] == "BATON_METRICS_ADDR")
        .expect("BATON_METRICS_ADDR");
    assert_eq!(metrics["value"], format!("0.0.0.0:{port}"));
    let requests = &container["resources"]["requests"];
    assert!(requests["cpu"].is_string() && requests["memory"].is_string());
}

/// The environment the kubelet gives the container: plain values as written, the pod's name
/// for `metadata.name`.
fn container_env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => v.clone(),
                (_, Value::String(path)) if path == "metadata.name" => POD_NAME.to_owned(),
                _ => panic!("an env entry this test cannot supply: {e}"),
            };
            (name, value)
        })
        .collect()
}

#[test]
fn deploy_container_args_are_a_baton_command_line_that_runs() {
    let deployment = manifest("deployment.yaml");
    let (container, args) = container(&deployment);
    let env = container_env(container);
    let key = option(&args, "--key").to_owned();
    let scratch = Scratch::new("deploy");

    // As written: `config` validates every option and the environment, and opens no store.
    let run_at = args.iter().position(|a| a == "run").unwrap();
    let out = run(scratch
        .baton()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(&args[..run_at])
        .args(["config", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["store"]["value"], "kubernetes:");
    assert_eq!(config["key"]["value"], key.as_str());
    assert_eq!(config["id"]["value"], POD_NAME);
    assert_eq!(config["id"]["source"], "BATON_ID");

    // For real, on a scratch store and a free metrics port: the command runs while leading,
    // with the pod's name as candidate id, /healthz (the liveness probe) answers 200, and
    // SIGTERM (what the kubelet sends) stops it and exits 0.
    let mut args = args.clone();
    let store_at = args.iter().position(|a| a == "--store").unwrap() + 1;
    args[store_at] = scratch.store();
    let port = free_port();
    let mut baton = scratch.baton();
    baton.args(&args);
    for (name, value) in &env {
        match name.as_str() {
            "BATON_METRICS_ADDR" => baton.env(name, format!("127.0.0.1:{port}")),
            _ => baton.env(name, value),
        };
    }
    let mut baton = Running::spawn(baton);
    let line = baton.wait_line("the command's line", |l| l.contains(" leads "));
    assert_eq!(
        line,
        format!("{POD_NAME} leads {key} with fencing token 1"),
        "{}",
        baton.stderr()
    );
    let probe = &container["livenessProbe"]["httpGet"];
    let (code, _) = http_get(port, probe["path"].as_str().expect("an HTTP probe"));
    assert_eq!(code, 200);
    baton.signal(Signal::TERM);
    let (status, _) = baton.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", baton.stderr());
}
