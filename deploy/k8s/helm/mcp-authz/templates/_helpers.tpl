{{/* Every object is named after the release: several releases can share a namespace. */}}
{{- define "mcp-authz.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-authz.selectorLabels" -}}
app.kubernetes.io/name: mcp-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mcp-authz.labels" -}}
{{ include "mcp-authz.selectorLabels" . }}
app.kubernetes.io/part-of: mcp-authz
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mcp-authz.redisLabels" -}}
app.kubernetes.io/name: mcp-authz-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mcp-authz.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The Redis URL that goes into the ConfigMap; a Secret's URL is referenced in the pod. */}}
{{- define "mcp-authz.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.deploy -}}
{{- printf "redis://%s-redis:6379/0" (include "mcp-authz.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "mcp-authz.policyConfigMap" -}}
{{- .Values.policy.existingConfigMap | default (printf "%s-policy" (include "mcp-authz.fullname" .)) -}}
{{- end -}}

{{- define "mcp-authz.envoyConfigMap" -}}
{{- .Values.envoy.existingConfigMap | default (printf "%s-envoy" (include "mcp-authz.fullname" .)) -}}
{{- end -}}

{{- define "mcp-authz.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
