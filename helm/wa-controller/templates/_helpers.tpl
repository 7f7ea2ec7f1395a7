{{- define "wa-controller.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wa-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wa-controller.labels" -}}
{{ include "wa-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Secret with the API key, webhook HMAC secret and rediscover token. */}}
{{- define "wa-controller.secretName" -}}
{{- .Values.secret.existingSecret | default (include "wa-controller.fullname" .) -}}
{{- end -}}

{{/* The namespaces served, one per line (cluster-wide: none). */}}
{{- define "wa-controller.namespaces" -}}
{{- if not .Values.clusterWide -}}
{{- range (.Values.watchNamespaces | default (list .Release.Namespace)) }}
{{ . }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wa-controller.secretCreated" -}}
{{- and (not .Values.secret.existingSecret) .Values.secret.apiKey -}}
{{- end -}}

{{- define "wa-controller.databaseUrlFromValues" -}}
{{- and (not .Values.mirror.existingSecret) .Values.mirror.databaseUrl -}}
{{- end -}}

{{/* What the operator does in every namespace it serves. */}}
{{- define "wa-controller.servingRules" -}}
- apiGroups: [wa-controller.io]
  resources: [waaccounts]
  verbs: [get, list, watch, patch]
- apiGroups: [wa-controller.io]
  resources: [waaccounts/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [{{ .Values.relay.secretName }}]
  verbs: [get]
{{- end -}}
