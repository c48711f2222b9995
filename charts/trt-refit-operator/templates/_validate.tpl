{{/* Checks a JSON schema cannot express, with messages that say what to do. */}}
{{- define "trtrefit.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %v, but must be 0 or 1: the operator runs standalone (no kopf peering), so a second replica would reconcile every TRTModel twice. Use 0 to pause it." .Values.replicaCount) }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.health.port)) }}
{{- fail (printf "metrics.port and health.port are both %v: the metrics server and kopf's liveness endpoint need different ports" .Values.metrics.port) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: there is no metrics Service to scrape" }}
{{- end }}
{{- end }}
