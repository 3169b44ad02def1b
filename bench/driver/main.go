// Command driver is the load client of bench/run.sh: it talks to the API server with client-go,
// as the agent's ServiceAccount (a TokenRequest token) and, for the human's writes, as the
// admin (a client certificate), and measures what each client sees.
//
// Modes:
//
//	driver load   -server URL -ca-file F -token-file F ...   latency and throughput cells, JSON out
//	driver create -server URL -ca-file F -cert-file F -key-file F -namespace NS -count N
//	              creates N annotated claims as the admin (the scale phase)
//
// Every loop is bounded by a request count and a wall-clock cap; nothing here retries.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Cell is one measured (operation, concurrency) pair of one configuration.
type Cell struct {
	Config      string  `json:"config"`
	Op          string  `json:"op"`
	Concurrency int     `json:"concurrency"`
	Requests    int     `json:"requests"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	P50us       float64 `json:"p50_us"`
	P90us       float64 `json:"p90_us"`
	P99us       float64 `json:"p99_us"`
	MeanUs      float64 `json:"mean_us"`
	MaxUs       float64 `json:"max_us"`
	WallS       float64 `json:"wall_s"`
	PerSecond   float64 `json:"req_per_s"`
	// CPU seconds (user+system, /proc/<pid>/stat) consumed during the cell.
	WebhookCPUs   float64 `json:"webhook_cpu_s"`
	APIServerCPUs float64 `json:"apiserver_cpu_s"`
	// VmHWM of the webhook process at the end of the cell, in KiB (0 without a webhook).
	WebhookHWMKiB int64 `json:"webhook_vmhwm_kib"`
	// Admission reviews the webhook answered during the cell (agentguard_admission_requests_total
	// from -metrics-url, before and after); absent without -metrics-url. Shows whether the
	// API server sent the cell's requests to the webhook at all.
	WebhookReviews *int64 `json:"webhook_reviews,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: driver load|create [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "load":
		err = load(os.Args[2:])
	case "create":
		err = create(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "driver:", err)
		os.Exit(1)
	}
}

func restConfig(server, caFile string) (*rest.Config, error) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	return &rest.Config{
		Host:            server,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		// The measurement is of the server side: no client-side throttling.
		RateLimiter: flowcontrol.NewFakeAlwaysRateLimiter(),
		Timeout:     30 * time.Second,
		UserAgent:   "agentguard-bench-driver",
	}, nil
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	server := fs.String("server", "", "API server URL")
	caFile := fs.String("ca-file", "", "API server CA (PEM)")
	tokenFile := fs.String("token-file", "", "the agent's bearer token")
	config := fs.String("config", "", "configuration label written into every cell")
	namespace := fs.String("namespace", "bench", "namespace of the claims")
	deleteName := fs.String("delete-name", "protected", "the protected claim the agent tries to delete")
	updatePrefix := fs.String("update-prefix", "labelled-", "claims <prefix><worker> the agent labels")
	humanCert := fs.String("human-cert-file", "", "the human's client certificate (human-* and configmap-update ops)")
	humanKey := fs.String("human-key-file", "", "the human's client key")
	humanPrefix := fs.String("human-update-prefix", "human-", "annotated claims <prefix><worker> the human labels")
	policyPrefix := fs.String("policy-update-prefix", "selected-", "policy-selected claims <prefix><worker> the human labels")
	configMapPrefix := fs.String("configmap-prefix", "cm-", "ConfigMaps <prefix><worker> the human patches")
	metricsURL := fs.String("metrics-url", "", "the webhook's Prometheus endpoint, to count the reviews of each cell (agentguard)")
	ops := fs.String("ops", "delete,delete-dry,update", "operations: delete (expect denied), delete-dry (dryRun=All; expect -dry-expect), "+
		"update (the agent labels an annotated claim), human-update (the human labels an annotated claim), "+
		"human-update-policy (the human labels a claim a policy selects), configmap-update (the human patches a ConfigMap's data)")
	dryExpect := fs.String("dry-expect", "denied", "what a dry-run delete must get: denied or allowed")
	levels := fs.String("concurrency", "1,8,32", "concurrency levels")
	requests := fs.Int("requests", 2000, "measured requests per cell")
	warmup := fs.Int("warmup", 200, "unmeasured requests before each cell")
	maxCell := fs.Duration("max-cell", 120*time.Second, "wall-clock cap per cell")
	webhookPid := fs.Int("webhook-pid", 0, "pid of the webhook process (0: none)")
	apiserverPid := fs.Int("apiserver-pid", 0, "pid of kube-apiserver")
	out := fs.String("out", "", "JSON file to write the cells to")
	_ = fs.Parse(args)

	cfg, err := restConfig(*server, *caFile)
	if err != nil {
		return err
	}
	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		return err
	}
	cfg.BearerToken = strings.TrimSpace(string(token))
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	claims := client.CoreV1().PersistentVolumeClaims(*namespace)
	// The human: the admin's client certificate, a person to agentguard (neither an agent nor
	// one of the cluster's controllers).
	var human *kubernetes.Clientset
	if *humanCert != "" {
		hcfg, err := restConfig(*server, *caFile)
		if err != nil {
			return err
		}
		hcfg.CertFile, hcfg.KeyFile = *humanCert, *humanKey
		if human, err = kubernetes.NewForConfig(hcfg); err != nil {
			return err
		}
	}
	var seq atomic.Int64
	labelPatch := func() []byte {
		return []byte(fmt.Sprintf(`{"metadata":{"labels":{"bench-seq":"%d"}}}`, seq.Add(1)))
	}
	humanLabels := func(prefix string) func(context.Context, int) error {
		return func(ctx context.Context, worker int) error {
			_, err := human.CoreV1().PersistentVolumeClaims(*namespace).Patch(ctx, prefix+strconv.Itoa(worker),
				types.MergePatchType, labelPatch(), metav1.PatchOptions{})
			return err
		}
	}
	run := map[string]func(ctx context.Context, worker int) error{
		"delete": func(ctx context.Context, _ int) error {
			return expectDenied(claims.Delete(ctx, *deleteName, metav1.DeleteOptions{}))
		},
		"delete-dry": func(ctx context.Context, _ int) error {
			err := claims.Delete(ctx, *deleteName, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			if *dryExpect == "allowed" {
				return err
			}
			return expectDenied(err)
		},
		"update": func(ctx context.Context, worker int) error {
			_, err := claims.Patch(ctx, *updatePrefix+strconv.Itoa(worker), types.MergePatchType,
				labelPatch(), metav1.PatchOptions{})
			return err
		},
		"human-update":        humanLabels(*humanPrefix),
		"human-update-policy": humanLabels(*policyPrefix),
		"configmap-update": func(ctx context.Context, worker int) error {
			patch := fmt.Sprintf(`{"data":{"bench-seq":"%d"}}`, seq.Add(1))
			_, err := human.CoreV1().ConfigMaps(*namespace).Patch(ctx, *configMapPrefix+strconv.Itoa(worker),
				types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			return err
		},
	}
	var cells []Cell
	for _, op := range strings.Split(*ops, ",") {
		fn, ok := run[op]
		if !ok {
			return fmt.Errorf("unknown op %q", op)
		}
		if (strings.HasPrefix(op, "human-") || op == "configmap-update") && human == nil {
			return fmt.Errorf("op %s needs -human-cert-file and -human-key-file", op)
		}
		for _, l := range strings.Split(*levels, ",") {
			c, err := strconv.Atoi(l)
			if err != nil || c < 1 {
				return fmt.Errorf("bad concurrency %q", l)
			}
			drive(fn, c, *warmup, *maxCell)
			reviews, reviewsErr := reviewCount(*metricsURL)
			cpuW, cpuA := cpuSeconds(*webhookPid), cpuSeconds(*apiserverPid)
			cell := drive(fn, c, *requests, *maxCell)
			cell.WebhookCPUs = cpuSeconds(*webhookPid) - cpuW
			cell.APIServerCPUs = cpuSeconds(*apiserverPid) - cpuA
			if *metricsURL != "" {
				after, err := reviewCount(*metricsURL)
				if err == nil && reviewsErr == nil {
					n := after - reviews
					cell.WebhookReviews = &n
				} else {
					fmt.Fprintf(os.Stderr, "    reviews not counted: %v %v\n", reviewsErr, err)
				}
			}
			cell.WebhookHWMKiB = statusKiB(*webhookPid, "VmHWM")
			cell.Config, cell.Op = *config, op
			reviewed := ""
			if cell.WebhookReviews != nil {
				reviewed = fmt.Sprintf(", %d reviews", *cell.WebhookReviews)
			}
			fmt.Fprintf(os.Stderr, "  %-22s %-19s conc %2d: %5d req, %d err, p50 %7.0f µs, p99 %7.0f µs, %6.0f req/s%s\n",
				cell.Config, op, c, cell.Requests, cell.Errors, cell.P50us, cell.P99us, cell.PerSecond, reviewed)
			if cell.Errors > 0 {
				fmt.Fprintf(os.Stderr, "    first unexpected answer: %s\n", cell.FirstError)
			}
			cells = append(cells, cell)
			if cell.Errors > 0 {
				// Every answer is known in advance: one unexpected answer means the
				// configuration (or the control plane) is not what the figures claim.
				break
			}
		}
	}
	data, err := json.MarshalIndent(cells, "", "  ")
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = os.Stdout.Write(data)
	} else {
		err = os.WriteFile(*out, data, 0o644)
	}
	if err != nil {
		return err
	}
	for _, c := range cells {
		if c.Errors > 0 {
			return fmt.Errorf("%s %s at concurrency %d: %d unexpected answers, first: %s",
				c.Config, c.Op, c.Concurrency, c.Errors, c.FirstError)
		}
	}
	return nil
}

// reviewCount sums agentguard_admission_requests_total (every decision, every operation) from
// a Prometheus text endpoint; 0 and no error without a URL.
func reviewCount(url string) (int64, error) {
	if url == "" {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var total float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "agentguard_admission_requests_total{") {
			continue
		}
		fields := strings.Fields(line[strings.LastIndexByte(line, '}')+1:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("bad sample %q", line)
		}
		total += v
	}
	return int64(total), nil
}

// expectDenied accepts only an admission denial: an RBAC refusal or a success is an error.
func expectDenied(err error) error {
	if err == nil {
		return errors.New("allowed, but the agent's delete must be denied")
	}
	if !strings.Contains(err.Error(), "denied") {
		return err
	}
	return nil
}

// drive sends `requests` requests from `concurrency` workers, each back to back.
func drive(fn func(context.Context, int) error, concurrency, requests int, maxCell time.Duration) Cell {
	ctx, cancel := context.WithTimeout(context.Background(), maxCell)
	defer cancel()
	var next atomic.Int64
	var mu sync.Mutex
	var all []time.Duration
	var errs int
	var first string
	var failing atomic.Int64
	var wg sync.WaitGroup
	started := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func(worker int) {
			defer wg.Done()
			local := make([]time.Duration, 0, requests/concurrency+1)
			localErrs, localFirst := 0, ""
			for next.Add(1) <= int64(requests) && ctx.Err() == nil && failing.Load() < 20 {
				t := time.Now()
				err := fn(ctx, worker)
				local = append(local, time.Since(t))
				if err != nil {
					failing.Add(1)
					localErrs++
					if localFirst == "" {
						localFirst = err.Error()
					}
				}
			}
			mu.Lock()
			all = append(all, local...)
			errs += localErrs
			if first == "" {
				first = localFirst
			}
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	wall := time.Since(started)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	cell := Cell{Concurrency: concurrency, Requests: len(all), Errors: errs, FirstError: first, WallS: wall.Seconds()}
	if len(all) == 0 {
		return cell
	}
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	cell.P50us, cell.P90us, cell.P99us = us(pct(all, 50)), us(pct(all, 90)), us(pct(all, 99))
	cell.MeanUs = us(sum / time.Duration(len(all)))
	cell.MaxUs = us(all[len(all)-1])
	cell.PerSecond = float64(len(all)) / wall.Seconds()
	return cell
}

// pct is the nearest-rank percentile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}

// cpuSeconds is utime+stime of a process from /proc/<pid>/stat (clock ticks of 1/100 s).
func cpuSeconds(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; fields after it start past the last ')'.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100
}

func statusKiB(pid int, field string) int64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

func create(args []string) error {
	fs := flag.NewFlagSet("create", flag.ExitOnError)
	server := fs.String("server", "", "API server URL")
	caFile := fs.String("ca-file", "", "API server CA (PEM)")
	certFile := fs.String("cert-file", "", "admin client certificate")
	keyFile := fs.String("key-file", "", "admin client key")
	namespace := fs.String("namespace", "scale", "namespace to fill")
	count := fs.Int("count", 10000, "claims to create")
	concurrency := fs.Int("concurrency", 16, "parallel creates")
	maxTime := fs.Duration("max-time", 30*time.Minute, "wall-clock cap")
	_ = fs.Parse(args)

	cfg, err := restConfig(*server, *caFile)
	if err != nil {
		return err
	}
	cfg.CertFile, cfg.KeyFile = *certFile, *keyFile
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	claims := client.CoreV1().PersistentVolumeClaims(*namespace)
	ctx, cancel := context.WithTimeout(context.Background(), *maxTime)
	defer cancel()
	var next, done, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	started := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*count) || ctx.Err() != nil {
					return
				}
				pvc := &corev1.PersistentVolumeClaim{
					ObjectMeta: metav1.ObjectMeta{
						Name:        fmt.Sprintf("claim-%06d", i),
						Annotations: map[string]string{"agentguard.dev/protected": "true"},
						Labels:      map[string]string{"app": "scale", "shard": strconv.FormatInt(i%16, 10)},
					},
					Spec: corev1.PersistentVolumeClaimSpec{
						AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
						Resources: corev1.VolumeResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
						},
					},
				}
				if _, err := claims.Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				if n := done.Add(1); n%10000 == 0 {
					fmt.Fprintf(os.Stderr, "  created %d claims in %.0fs\n", n, time.Since(started).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf(`{"created": %d, "failed": %d, "seconds": %.1f}`+"\n", done.Load(), failed.Load(), time.Since(started).Seconds())
	if failed.Load() > 0 {
		return fmt.Errorf("%d creates failed, first: %v", failed.Load(), firstErr.Load())
	}
	return nil
}
