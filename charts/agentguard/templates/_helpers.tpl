{{- define "agentguard.name" -}}agentguard{{- end }}

{{- define "agentguard.fullname" -}}
{{- if contains "agentguard" .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ printf "%s-agentguard" .Release.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "agentguard.labels" -}}
app.kubernetes.io/name: agentguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "agentguard.selectorLabels" -}}
app.kubernetes.io/name: agentguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- /* The image reference: registry/repository@digest, or :tag (default appVersion). */}}
{{- define "agentguard.image" -}}
{{- $ref := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $ref = printf "%s/%s" . $ref }}{{ end -}}
{{- if .Values.image.digest -}}
{{ $ref }}@{{ .Values.image.digest }}
{{- else -}}
{{ $ref }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}
