// Command peer is a PEER for comparison, not part of agentguard: the smallest controller-runtime
// validating webhook that enforces bench/run.sh's one rule — deny DELETE of a
// PersistentVolumeClaim annotated agentguard.dev/protected=true by a ServiceAccount of the
// namespace `agents` — with controller-runtime's defaults (webhook.Server: HTTP/2 over TLS,
// certificate watcher, request metrics). It keeps no cache and watches nothing: it judges each
// review from the review alone.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"strings"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

type guard struct{ agentPrefix string }

func (g guard) Handle(_ context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Delete || !strings.HasPrefix(req.UserInfo.Username, g.agentPrefix) {
		return admission.Allowed("")
	}
	var old metav1.PartialObjectMetadata
	if err := json.Unmarshal(req.OldObject.Raw, &old); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if old.Annotations["agentguard.dev/protected"] == "true" {
		return admission.Denied("peer: DENIED delete of protected " + req.Kind.Kind + " " +
			req.Namespace + "/" + req.Name + " by " + req.UserInfo.Username)
	}
	return admission.Allowed("")
}

func main() {
	host := flag.String("host", "127.0.0.1", "listen address")
	port := flag.Int("port", 9443, "HTTPS port")
	certDir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	agents := flag.String("agent-namespace", "agents", "ServiceAccounts of this namespace are agents")
	flag.Parse()
	ctrl.SetLogger(logr.Discard())

	srv := webhook.NewServer(webhook.Options{Host: *host, Port: *port, CertDir: *certDir})
	srv.Register("/validate", &webhook.Admission{
		Handler: guard{agentPrefix: "system:serviceaccount:" + *agents + ":"},
	})
	if err := srv.Start(ctrl.SetupSignalHandler()); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
