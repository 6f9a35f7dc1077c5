// helm-render renders a Helm chart the way `helm template` does, for the chart tests on
// machines without helm: Go's text/template with the sprig functions (the engine Helm uses)
// plus Helm's own include, toYaml, required and tpl, and .Values, .Chart, .Release and
// .Template. It needs only Debian's golang-go, golang-github-masterminds-sprig-dev and
// golang-gopkg-yaml.v3-dev (GOPATH mode).
//
// Usage: helm-render CHART_DIR [VALUES_FILE...]   (later files override earlier ones)
// Output: every rendered manifest as "---\n# Source: PATH\n..." on stdout; errors exit 1.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

func readYAML(path string) map[string]interface{} {
	raw, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(raw, &out); err != nil {
		fail("%s: %v", path, err)
	}
	return out
}

// merge overlays src onto dst, recursively for maps (as helm -f does).
func merge(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

func toYaml(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "helm-render: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: helm-render CHART_DIR [VALUES_FILE...]")
	}
	dir := os.Args[1]
	meta := readYAML(filepath.Join(dir, "Chart.yaml"))
	values := readYAML(filepath.Join(dir, "values.yaml"))
	for _, f := range os.Args[2:] {
		merge(values, readYAML(f))
	}
	name := fmt.Sprint(meta["name"])
	chart := map[string]interface{}{
		"Name": name, "Version": fmt.Sprint(meta["version"]),
		"AppVersion": fmt.Sprint(meta["appVersion"]),
	}
	base := name + "/templates"
	root := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYaml
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := template.New("tpl").Funcs(funcs).Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs)
	files, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
	if err != nil {
		fail("%v", err)
	}
	sort.Strings(files)
	var manifests []string
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		tname := base + "/" + filepath.Base(f)
		if _, err := root.New(tname).Parse(string(src)); err != nil {
			fail("%v", err)
		}
		b := filepath.Base(f)
		if !strings.HasPrefix(b, "_") && (strings.HasSuffix(b, ".yaml") || strings.HasSuffix(b, ".yml")) {
			manifests = append(manifests, tname)
		}
	}
	for _, tname := range manifests {
		data := map[string]interface{}{
			"Values": values,
			"Chart":  chart,
			"Release": map[string]interface{}{
				"Name": "fs", "Namespace": "default", "Service": "Helm",
				"IsInstall": true, "IsUpgrade": false, "Revision": 1,
			},
			"Template":     map[string]interface{}{"BasePath": base, "Name": tname},
			"Capabilities": map[string]interface{}{},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, tname, data); err != nil {
			fail("%v", err)
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range strings.Split(out, "\n---") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			fmt.Printf("---\n# Source: %s\n%s\n", tname, strings.TrimLeft(doc, "\n"))
		}
	}
}
