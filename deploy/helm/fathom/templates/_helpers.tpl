{{/* Name of every object: the release name, with "-fathom" unless it already says fathom. */}}
{{- define "fathom.fullname" -}}
{{- if contains "fathom" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-fathom" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: app.kubernetes.io/name is what the alerts' job="fathom" comes from. */}}
{{- define "fathom.selectorLabels" -}}
app.kubernetes.io/name: fathom
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fathom.labels" -}}
{{ include "fathom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "fathom.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* A runtime socket flag value: the socket path, or "" to turn the runtime off. */}}
{{- define "fathom.socketPath" -}}
{{- if .enabled -}}{{ printf "%s/%s" .hostDir .socket }}{{- end -}}
{{- end -}}
