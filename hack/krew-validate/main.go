// Command krew-validate checks agentguard's krew plugin manifest (deploy/krew/agentguard.yaml)
// for what krew's own validator cannot know: that it is the manifest of this release.
//
// krew's validation (ValidatePlugin) lives in an internal package of sigs.k8s.io/krew, which no
// other module may import; krew publishes it as the command
// sigs.k8s.io/krew/cmd/validate-krew-manifest, which this module pins with a tool directive
// (go.mod) and hack/release-check.sh runs first. This program then decodes the manifest into
// krew's own types (sigs.k8s.io/krew/pkg/index), strictly: a misspelt field, which krew would
// silently drop, fails here. It checks the version, the four platforms, that each uri names
// the archive the release workflow uploads, the binary and files each archive holds, and the
// sha256s: 64 zeros in the committed template, or, with -sums, each archive's sum.
//
//	krew-validate -manifest deploy/krew/agentguard.yaml -version v0.1.0 \
//	  -release-url https://github.com/agentguard/agentguard/releases/download [-license]
//	  [-sums SHA256SUMS [-fill out/agentguard.yaml]]
//
// -fill writes the manifest with each platform's zeros replaced by its archive's sum (the
// text is otherwise unchanged) and checks the written file; without -fill, -sums checks a
// manifest already filled in.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"

	"sigs.k8s.io/krew/pkg/constants"
	"sigs.k8s.io/krew/pkg/index"
	"sigs.k8s.io/yaml"
)

const (
	pluginName = "agentguard"
	binary     = "kubectl-agentguard"
	zeroSum    = "0000000000000000000000000000000000000000000000000000000000000000"
)

// The platforms a release builds, in the manifest's order.
var platforms = []struct{ os, arch string }{
	{"linux", "amd64"},
	{"linux", "arm64"},
	{"darwin", "amd64"},
	{"darwin", "arm64"},
}

var hexSum = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Archive is the name of the release asset for one platform; the release workflow names its
// uploads the same way.
func archive(version, goos, arch string) string {
	return fmt.Sprintf("%s-%s-%s-%s.tar.gz", binary, version, goos, arch)
}

type options struct {
	manifest, version, releaseURL, sums, fill string
	license                                   bool
}

func main() {
	var o options
	flag.StringVar(&o.manifest, "manifest", "", "path to the krew manifest")
	flag.StringVar(&o.version, "version", "", "expected spec.version, v + Cargo.toml's version")
	flag.StringVar(&o.releaseURL, "release-url", "", "GitHub release download URL, without the tag")
	flag.BoolVar(&o.license, "license", false, "the archives carry LICENSE, so files must list it")
	flag.StringVar(&o.sums, "sums", "", "sha256sum output for the archives; without it every sha256 must be the template's 64 zeros")
	flag.StringVar(&o.fill, "fill", "", "write the manifest with the sums of -sums filled in to this path, then check it")
	flag.Parse()
	if o.manifest == "" || o.version == "" || o.releaseURL == "" || (o.fill != "" && o.sums == "") {
		fmt.Fprintln(os.Stderr, "usage: krew-validate -manifest FILE -version vX.Y.Z -release-url URL [-license] [-sums FILE [-fill OUT]]")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "krew-validate: %s: %v\n", o.manifest, err)
		os.Exit(1)
	}
}

func run(o options) error {
	raw, err := os.ReadFile(o.manifest)
	if err != nil {
		return err
	}
	var sums map[string]string
	if o.sums != "" {
		if sums, err = readSums(o.sums); err != nil {
			return err
		}
	}
	checked := o.manifest
	if o.fill != "" {
		filled, err := fill(raw, sums)
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.fill, filled, 0o644); err != nil {
			return err
		}
		raw, checked = filled, o.fill
	}
	if err := check(raw, o, sums); err != nil {
		if checked != o.manifest {
			return fmt.Errorf("%s (written to %s): %w", "filled manifest", checked, err)
		}
		return err
	}
	what := "sha256s are the template's zeros"
	if sums != nil {
		what = fmt.Sprintf("sha256s are the archives' sums from %s", o.sums)
	}
	files := binary
	if o.license {
		files += " and LICENSE"
	}
	fmt.Printf("%s: strict decode into krew's types, plugin %s %s, platforms %s, uris under %s/%s, bin %s, files %s, %s\n",
		checked, pluginName, o.version, platformList(), o.releaseURL, o.version, binary, files, what)
	return nil
}

func platformList() string {
	var s []string
	for _, p := range platforms {
		s = append(s, p.os+"/"+p.arch)
	}
	return strings.Join(s, " ")
}

func check(raw []byte, o options, sums map[string]string) error {
	var p index.Plugin
	if err := yaml.UnmarshalStrict(raw, &p); err != nil {
		return fmt.Errorf("not a krew Plugin manifest (strict decode): %w", err)
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if p.APIVersion != constants.CurrentAPIVersion || p.Kind != constants.PluginKind {
		fail("apiVersion/kind %s/%s, want %s/%s", p.APIVersion, p.Kind, constants.CurrentAPIVersion, constants.PluginKind)
	}
	if p.Name != pluginName {
		fail("metadata.name %q, want %q", p.Name, pluginName)
	}
	if p.Spec.Version != o.version {
		fail("spec.version %q, want %q (v + Cargo.toml's version)", p.Spec.Version, o.version)
	}
	if p.Spec.Homepage == "" || p.Spec.ShortDescription == "" || p.Spec.Description == "" {
		fail("homepage, shortDescription and description must all be set")
	}
	if len(p.Spec.Platforms) != len(platforms) {
		fail("%d platforms, want %d (%s)", len(p.Spec.Platforms), len(platforms), platformList())
	}
	wantFiles := []index.FileOperation{{From: binary, To: "."}}
	if o.license {
		wantFiles = append(wantFiles, index.FileOperation{From: "LICENSE", To: "."})
	}
	for i, pl := range p.Spec.Platforms {
		if i >= len(platforms) {
			break
		}
		want := platforms[i]
		at := fmt.Sprintf("spec.platforms[%d] (%s/%s)", i, want.os, want.arch)
		if pl.Selector == nil || len(pl.Selector.MatchExpressions) != 0 || len(pl.Selector.MatchLabels) != 2 ||
			pl.Selector.MatchLabels["os"] != want.os || pl.Selector.MatchLabels["arch"] != want.arch {
			fail("%s: selector must be exactly matchLabels {os: %s, arch: %s}", at, want.os, want.arch)
		}
		name := archive(o.version, want.os, want.arch)
		if wantURI := o.releaseURL + "/" + o.version + "/" + name; pl.URI != wantURI {
			fail("%s: uri %q, want %q", at, pl.URI, wantURI)
		}
		if pl.Bin != binary {
			fail("%s: bin %q, want %q", at, pl.Bin, binary)
		}
		if fmt.Sprint(pl.Files) != fmt.Sprint(wantFiles) {
			fail("%s: files %v, want %v (what the release archives hold)", at, pl.Files, wantFiles)
		}
		switch {
		case sums == nil && pl.Sha256 != zeroSum:
			fail("%s: sha256 %q: the committed manifest holds 64 zeros, which the release replaces", at, pl.Sha256)
		case sums != nil && sums[name] == "":
			fail("%s: no sum for %s in %s", at, name, o.sums)
		case sums != nil && pl.Sha256 != sums[name]:
			fail("%s: sha256 %q, but %s has %s", at, pl.Sha256, name, sums[name])
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// readSums reads sha256sum's output: "<64 hex>  <file>" (or " *<file>") per line.
func readSums(file string) (map[string]string, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 || !hexSum.MatchString(fields[0]) {
			return nil, fmt.Errorf("%s:%d: not a sha256sum line: %q", file, n, sc.Text())
		}
		sums[path.Base(strings.TrimPrefix(fields[1], "*"))] = fields[0]
	}
	return sums, sc.Err()
}

var (
	uriLine = regexp.MustCompile(`^\s*(?:-\s+)?uri:\s*(\S+)\s*$`)
	sumLine = regexp.MustCompile(`^(\s*(?:-\s+)?sha256:\s*)"?` + zeroSum + `"?\s*$`)
)

// fill replaces each platform's template sha256 with the sum of the archive its uri names; the
// rest of the text, comments included, is kept. Every sha256 line must follow its uri line (as
// in the committed manifest) and every platform must be filled.
func fill(raw []byte, sums map[string]string) ([]byte, error) {
	lines := strings.SplitAfter(string(raw), "\n")
	asset, filled := "", 0
	for i, line := range lines {
		body := strings.TrimRight(line, "\n")
		if m := uriLine.FindStringSubmatch(body); m != nil {
			asset = path.Base(m[1])
			continue
		}
		m := sumLine.FindStringSubmatch(body)
		if m == nil {
			continue
		}
		if asset == "" {
			return nil, fmt.Errorf("line %d: a template sha256 before any uri", i+1)
		}
		sum, ok := sums[asset]
		if !ok {
			return nil, fmt.Errorf("line %d: no sum for %s", i+1, asset)
		}
		lines[i] = fmt.Sprintf("%s%q\n", m[1], sum)
		asset = ""
		filled++
	}
	if filled != len(platforms) {
		return nil, fmt.Errorf("filled %d template sha256s, want %d", filled, len(platforms))
	}
	return []byte(strings.Join(lines, "")), nil
}
