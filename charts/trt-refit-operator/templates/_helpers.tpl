{{/* Names, labels and image references shared by the templates. */}}

{{- define "trtrefit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trtrefit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "trtrefit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trtrefit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trtrefit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trtrefit.labels" -}}
helm.sh/chart: {{ include "trtrefit.chart" . }}
{{ include "trtrefit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trt-refit-operator
{{- end }}

{{- define "trtrefit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trtrefit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trtrefit.refitServiceAccountName" -}}
{{- default (printf "%s-refit" (include "trtrefit.fullname" .)) .Values.refit.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The namespaces that get the refit ServiceAccount. */}}
{{- define "trtrefit.refitNamespaces" -}}
{{- $namespaces := .Values.refit.serviceAccount.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/* repository[:tag][@digest] of an image block; the tag defaults to the chart's appVersion. */}}
{{- define "trtrefit.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- $ref := printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- if $image.digest }}
{{- $ref = printf "%s@%s" $ref $image.digest }}
{{- end }}
{{- $ref }}
{{- end }}
