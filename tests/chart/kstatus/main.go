// kstatus-check prints what sigs.k8s.io/cli-utils/pkg/kstatus (the library Flux's kustomize-controller
// waits with) computes for Kubernetes objects: one JSON object per input line, one result per output line.
//
//	echo '{"apiVersion":"trtrefit.dev/v1alpha1","kind":"TRTModel",...}' | kstatus-check
//	{"status":"Current","message":"Resource is current"}
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var obj map[string]interface{}
		// The apimachinery decoder keeps integers int64, as the API server's objects have them.
		if err := utiljson.Unmarshal(in.Bytes(), &obj); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: not a JSON object: %v\n", err)
			os.Exit(2)
		}
		res, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %v\n", err)
			os.Exit(1)
		}
		if err := out.Encode(result{Status: res.Status.String(), Message: res.Message}); err != nil {
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus-check: %v\n", err)
		os.Exit(2)
	}
}
