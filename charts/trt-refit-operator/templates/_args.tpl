{{/* `trtrefit operator ...` arguments (the image's entrypoint is `trtrefit`). */}}
{{- define "trtrefit.operatorArgs" -}}
- operator
{{- if .Values.watchNamespaces }}
{{- range uniq .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.health.port }}/healthz
- --metrics-port={{ if .Values.metrics.enabled }}{{ .Values.metrics.port }}{{ else }}0{{ end }}
- --log-format={{ .Values.operator.logFormat | default "text" }}
{{- if eq .Values.operator.logLevel "debug" }}
- --verbose
{{- end }}
{{- with .Values.operator.extraArgs }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
