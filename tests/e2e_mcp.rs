//! End-to-end: the agent tools people use. The two Kubernetes MCP servers agents use most, from
//! their npm packages (`kubernetes-mcp-server`, a Go binary, and `mcp-server-kubernetes`, which
//! runs kubectl), run with a kubeconfig from `kubectl agentguard agent create` and are driven over
//! MCP stdio as an agent host drives them (`initialize`, then `tools/call` of their delete and
//! patch tools). agentguard's denial reaches the model word for word in each server's result;
//! after a human's approval the same call goes through. Installs the packages into the tool
//! cache with npm (`hack/build-tools.sh` does not: npm is needed only here).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};
use support::{Cluster, Guard, TestNamespace, stderr};

const KUBERNETES_MCP_SERVER: &str = "kubernetes-mcp-server@0.0.67";
const MCP_SERVER_KUBERNETES: &str = "mcp-server-kubernetes@4.1.7";

/// The npm packages, installed once into the tool cache.
fn mcp_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    let dir = cache.join("agentguard").join(format!(
        "mcp-{}-{}",
        KUBERNETES_MCP_SERVER.replace('@', "-"),
        MCP_SERVER_KUBERNETES.replace('@', "-")
    ));
    let bins = ["kubernetes-mcp-server", "mcp-server-kubernetes"];
    if !bins
        .iter()
        .all(|b| dir.join("node_modules/.bin").join(b).exists())
    {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args([KUBERNETES_MCP_SERVER, MCP_SERVER_KUBERNETES])
            .output()
            .expect("npm (Node.js) is needed to run the MCP servers");
        assert!(out.status.success(), "npm install: {}", stderr(&out));
    }
    dir.join("node_modules/.bin")
}

/// An MCP server over stdio: newline-delimited JSON-RPC.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Mcp {
    fn start(bin: &Path, kubeconfig: &Path, tools: &Path) -> Self {
        let path = format!(
            "{}:{}",
            tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(bin)
            .env("KUBECONFIG", kubeconfig)
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut mcp = Self {
            child,
            stdin,
            stdout,
            next: 1,
        };
        let init = mcp.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "agentguard-e2e", "version": "1"}}),
        );
        assert!(init["result"]["serverInfo"].is_object(), "{init}");
        mcp.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        mcp
    }

    fn send(&mut self, message: &Value) {
        writeln!(self.stdin, "{message}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the MCP server closed its output");
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if message["id"] == json!(id) {
                return message;
            }
        }
    }

    /// A tool call's text as the model reads it (every text content, joined), and whether the
    /// server marked it an error.
    fn call(&mut self, tool: &str, arguments: Value) -> (String, bool) {
        let answer = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        if let Some(error) = answer.get("error") {
            return (
                error["message"].as_str().unwrap_or_default().to_owned(),
                true,
            );
        }
        let result = &answer["result"];
        let text = result["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        (text, result["isError"] == json!(true))
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The denial's lines the agent must read as they are (DESIGN.md's shape).
fn denial_lines(ns: &str, name: &str, user: &str) -> Vec<String> {
    vec![
        format!("agentguard: DENIED delete of PersistentVolumeClaim {ns}/{name} by {user}."),
        "Do not retry, and do not try another way to delete, move, or unprotect it.".to_owned(),
        format!(
            "Stop and ask a human to approve: kubectl agentguard approve persistentvolumeclaim/{name} -n {ns} --for 30m"
        ),
    ]
}

#[test]
fn mcp_servers_pass_the_denial_word_for_word_and_approvals_work_through_them() {
    let bin = mcp_dir();
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "mcp");
    let probe = ns.agent("probe");
    let (edit, _) = ns.install_agent_roles();
    let agents_ns = format!("{}-agents", ns.name);
    ns.owns_cluster_object(&format!("namespace/{agents_ns}"));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("agent.kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args([
            "agent",
            "create",
            "mcp",
            "--agents-namespace",
            &agents_ns,
            "--namespaces",
            &ns.name,
            "--role",
            &edit,
            "--ttl",
            "1h",
            "--kubeconfig-out",
        ])
        .arg(&kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "agent create: {}", stderr(&out));
    let user = format!("system:serviceaccount:{agents_ns}:mcp");
    for claim in ["data", "logs"] {
        ns.pvc(claim, true);
    }
    let _guard = Guard::start(&ns, &probe);

    let mut go = Mcp::start(
        &bin.join("kubernetes-mcp-server"),
        &kubeconfig,
        &cluster.tools,
    );
    let mut node = Mcp::start(
        &bin.join("mcp-server-kubernetes"),
        &kubeconfig,
        &cluster.tools,
    );
    let go_delete = |mcp: &mut Mcp, name: &str| {
        mcp.call(
            "resources_delete",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": name, "namespace": ns.name}),
        )
    };
    let node_delete = |mcp: &mut Mcp, name: &str| {
        mcp.call(
            "kubectl_delete",
            json!({"resourceType": "persistentvolumeclaim", "name": name, "namespace": ns.name}),
        )
    };

    // The deletes: refused, and the model reads agentguard's words, not a tool's rewording.
    for (server, (text, is_error)) in [
        ("kubernetes-mcp-server", go_delete(&mut go, "data")),
        ("mcp-server-kubernetes", node_delete(&mut node, "data")),
    ] {
        assert!(is_error, "{server}: the delete was not an error: {text}");
        for line in denial_lines(&ns.name, "data", &user) {
            assert!(text.contains(&line), "{server} lost {line:?}:\n{text}");
        }
        assert!(!text.contains("not found"), "{server}: {text}");
    }
    // The patches that would unprotect it: refused too.
    let (text, is_error) = go.call(
        "resources_create_or_update",
        json!({"resource": json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": ns.name, "annotations": {"agentguard.dev/protected": "false"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}).to_string()}),
    );
    assert!(
        is_error && text.contains("agentguard: DENIED"),
        "kubernetes-mcp-server patch: {text}"
    );
    let (text, is_error) = node.call(
        "kubectl_patch",
        json!({"resourceType": "persistentvolumeclaim", "name": "data", "namespace": ns.name,
            "patchType": "merge", "patchData": {"metadata": {"annotations": {"agentguard.dev/protected": null}}}}),
    );
    assert!(
        is_error && text.contains("agentguard: DENIED"),
        "mcp-server-kubernetes patch: {text}"
    );
    assert!(ns.pvc_intact("data"));

    // A human approves each claim; the same calls now go through.
    for claim in ["data", "logs"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args([
                "-n",
                &ns.name,
                "approve",
                &format!("pvc/{claim}"),
                "--for",
                "10m",
            ])
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "approve {claim}: {}", stderr(&out));
    }
    let (text, is_error) = go_delete(&mut go, "data");
    assert!(!is_error, "kubernetes-mcp-server, approved: {text}");
    let (text, is_error) = node_delete(&mut node, "logs");
    assert!(!is_error, "mcp-server-kubernetes, approved: {text}");
    ns.wait_pvc_gone("data");
    ns.wait_pvc_gone("logs");
}
