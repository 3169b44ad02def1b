#!/usr/bin/env python3
"""Captures real AdmissionReviews from the local control plane into fuzz/corpus/review/.

Serves HTTPS on a free port with a throwaway certificate (agentguard certs), registers a
ValidatingWebhookConfiguration (failurePolicy Ignore, one namespace) that sends it claims'
and namespaces' writes, runs a few kubectl operations an agent would, saves every review body
the API server sent, and cleans up. Seeds for `cargo +nightly fuzz run review`.

    hack/cluster.sh up && python3 hack/capture-reviews.py
"""

import base64
import http.server
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus", "review")
TOOLS = subprocess.run([os.path.join(ROOT, "hack", "build-tools.sh"), "--print"],
                       capture_output=True, text=True, check=True).stdout.strip()
KUBECONFIG = os.environ.get("KUBECONFIG", os.path.join(ROOT, ".cluster", "kubeconfig"))
NS = "capture-reviews"
NAME = "agentguard-capture-reviews"


def kubectl(*args, stdin=None, check=True):
    return subprocess.run([os.path.join(TOOLS, "kubectl"), "--kubeconfig", KUBECONFIG, *args],
                          input=stdin, capture_output=True, text=True, check=check)


def main():
    os.makedirs(OUT, exist_ok=True)
    certs = tempfile.mkdtemp()
    subprocess.run(["cargo", "run", "-q", "--", "certs", "--out-dir", certs],
                   cwd=ROOT, check=True)
    bodies = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            bodies.append(body)
            uid = __import__("json").loads(body)["request"]["uid"]
            answer = ('{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
                      '"response":{"uid":"%s","allowed":true}}' % uid).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_):
            pass

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(certs, "tls.crt"), os.path.join(certs, "tls.key"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ca = base64.b64encode(open(os.path.join(certs, "ca.crt"), "rb").read()).decode()

    kubectl("create", "namespace", NS, check=False)
    kubectl("apply", "-f", "-", stdin=f"""apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {NAME}}}
webhooks:
  - name: validate.agentguard.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Ignore
    clientConfig: {{url: "https://127.0.0.1:{port}/validate", caBundle: {ca}}}
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {NS}}}}}
    rules:
      - operations: [CREATE, UPDATE, DELETE]
        apiGroups: ["", apps]
        apiVersions: [v1]
        resources: [persistentvolumeclaims, statefulsets, configmaps, namespaces]
""")
    try:
        pvc = f"""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {NS}, annotations: {{agentguard.dev/protected: "true"}}, labels: {{app: db}}}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
"""
        import time
        time.sleep(2)
        kubectl("apply", "-f", "-", stdin=pvc)
        kubectl("-n", NS, "annotate", "pvc", "data", "agentguard.dev/approved-by=alice",
                "agentguard.dev/approved-until=2030-01-01T00:00:00Z", "--overwrite")
        kubectl("-n", NS, "label", "pvc", "data", "cleanup.kyverno.io/ttl=1m")
        kubectl("-n", NS, "delete", "pvc", "data", "--dry-run=server")
        kubectl("-n", NS, "delete", "pvc", "--all", "--dry-run=server")
        kubectl("-n", NS, "create", "configmap", "owner")
        kubectl("-n", NS, "delete", "configmap", "owner", "--cascade=orphan")
        kubectl("delete", "namespace", NS, "--dry-run=server")
    finally:
        kubectl("delete", "validatingwebhookconfiguration", NAME, check=False)
        kubectl("delete", "namespace", NS, "--wait=false", check=False)
        server.shutdown()
    for i, body in enumerate(bodies):
        with open(os.path.join(OUT, f"captured-{i:02}.json"), "wb") as f:
            f.write(body)
    print(f"captured {len(bodies)} reviews into {OUT}")
    return 0 if bodies else 1


if __name__ == "__main__":
    sys.exit(main())
