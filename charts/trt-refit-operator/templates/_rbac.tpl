{{/*
The operator's rights. Each rule names the code that needs it; a test runs the operator with exactly these
rights against a real API server, so a missing verb fails there and an unneeded one is a review question.
*/}}

{{/* Cluster-scoped and read-only. */}}
{{- define "trtrefit.clusterRules" -}}
# kopf discovers the TRTModel resource and notices CRD changes.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# With explicit namespaces kopf observes which of them exist; refused, it retries for about a minute with
# errors before it falls back to assuming they do.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}

{{/* Namespaced: everything the reconcile loop reads and writes. */}}
{{- define "trtrefit.namespacedRules" -}}
# The watched resource: kopf lists/watches it, patches its progress annotations and finalizers.
- apiGroups: [trtrefit.dev]
  resources: [trtmodels]
  verbs: [get, list, watch, patch]
# The single status write per pass.
- apiGroups: [trtrefit.dev]
  resources: [trtmodels/status]
  verbs: [patch]
# The refit Job: created, followed, superseded (deleted).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# The refit pod's termination message carries the worker's result; InPlace: the serving Deployment's pods
# (their IPs and readiness). Listed by label, never watched.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# InPlace: the desired-refit ConfigMap a starting serving pod reads; created, read by name, moved on after
# the canary passed. Never listed or watched.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# InPlace: the refit token Secret, created once and read by name to authenticate to the pods. Never listed,
# watched, updated or deleted (garbage collection removes it with the TRTModel).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# The serving Deployment: its pod template gets the new engine; the rollout is followed.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, patch]
# Events on the TRTModel tell the story in `kubectl describe`.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{- define "trtrefit.operatorSubject" -}}
- kind: ServiceAccount
  name: {{ include "trtrefit.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
