{{/* `trtrefit operator ...` arguments (the image's entrypoint is `trtrefit`). */}}
{{- define "trtrefit.operatorArgs" -}}
- operator
- --standalone
{{- if .Values.watchNamespaces }}
{{- range uniq .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.health.port }}/healthz
{{- if .Values.metrics.enabled }}
- --metrics-port={{ .Values.metrics.port }}
{{- end }}
{{- if eq .Values.operator.logLevel "verbose" }}
- --verbose
{{- else if eq .Values.operator.logLevel "debug" }}
- --debug
{{- end }}
{{- with .Values.operator.extraArgs }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
