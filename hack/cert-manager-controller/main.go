// Command cert-manager-controller runs cert-manager's own controllers, from the packages of the
// published github.com/cert-manager/cert-manager module, for agentguard's end-to-end tests.
//
// cert-manager's real binary lives in the github.com/cert-manager/cert-manager/cmd/controller
// module, which the Go module proxy does not serve; its app package only parses flags and starts
// what the main module registers in controller.Known(). This command does the same for the
// controllers a CA chain needs: the Issuer controller with the SelfSigned and CA issuers, the
// CertificateRequest approver and SelfSigned and CA signers, and the Certificate controllers
// (trigger, key manager, request manager, issuing, readiness, revision manager). It runs out of
// cluster, without leader election or the metrics and health servers.
//
// hack/build-tools.sh copies this file into a wrapper module pinned to CERT_MANAGER_VERSION and
// installs the binary beside the control-plane tools.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each registers its controller in controllerpkg.Known().
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// Each registers its issuer type with the Issuer controllers.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	var opts controllerpkg.ContextOptions
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server")
	flag.StringVar(&opts.APIServerHost, "master", "", "API server address (overrides the kubeconfig's)")
	flag.StringVar(&opts.Namespace, "namespace", "", "only watch this namespace (all when empty)")
	flag.StringVar(&opts.ClusterResourceNamespace, "cluster-resource-namespace", "cert-manager",
		"namespace of the Secrets ClusterIssuers refer to")
	leaderElect := flag.Bool("leader-elect", false, "accepted for cert-manager's flag; only false is supported")
	workers := flag.Int("workers", 5, "workers per controller")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	if *leaderElect {
		fmt.Fprintln(os.Stderr, "--leader-elect=true is not supported: this command runs one controller out of cluster")
		os.Exit(2)
	}
	logf.InitLogs()
	defer logf.FlushLogs()

	// cert-manager's own defaults (cmd/controller/app/options).
	opts.KubernetesAPIQPS = 20
	opts.KubernetesAPIBurst = 50
	opts.CertificateRequestMinimumBackoffDuration = time.Hour
	opts.CertificateRequestMaximumBackoffDuration = 32 * time.Hour
	opts.CopiedAnnotationPrefixes = []string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	log := logf.FromContext(ctx)

	factory, err := controllerpkg.NewContextFactory(ctx, opts)
	if err != nil {
		log.Error(err, "error building the controller context")
		os.Exit(1)
	}
	names := make([]string, 0, len(controllerpkg.Known()))
	for name := range controllerpkg.Known() {
		names = append(names, name)
	}
	sort.Strings(names)
	var wg sync.WaitGroup
	for _, name := range names {
		if opts.Namespace != "" && name == "clusterissuers" {
			continue
		}
		iface, err := controllerpkg.Known()[name](factory)
		if err != nil {
			log.Error(err, "error constructing controller", "controller", name)
			os.Exit(1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.Info("starting controller", "controller", name)
			if err := iface.Run(*workers, ctx); err != nil {
				log.Error(err, "controller failed", "controller", name)
				os.Exit(1)
			}
		}()
	}
	// The informers every controller registered share these factories; start them only now.
	shared, err := factory.Build()
	if err != nil {
		log.Error(err, "error building the controller context")
		os.Exit(1)
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	if shared.GatewaySolverEnabled {
		shared.GWShared.Start(ctx.Done())
	}
	log.Info("controllers started", "controllers", names)
	wg.Wait()
	log.Info("control loops exited")
}
