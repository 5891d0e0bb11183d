{{/* Every object is named after the release: several releases can share a namespace. */}}
{{- define "mcp-authz.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-authz.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "mcp-authz.fullname" .) -}}
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

{{/* repository:tag, or repository@digest when a digest pins it. */}}
{{- define "mcp-authz.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL that goes into the ConfigMap; a Secret's URL, or a URL with a password
from a Secret, is set in the pod (mcp-authz.redisEnv). */}}
{{- define "mcp-authz.redisUrl" -}}
{{- if .Values.redis.passwordSecret.name -}}
{{- else if .Values.redis.url -}}
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

{{/* redis.url with $(MCP_AUTHZ_REDIS_PASSWORD) in it, for Kubernetes to substitute from the
variable set just before it: after scheme:// or, for a socket, in the query. */}}
{{- define "mcp-authz.redisUrlWithPassword" -}}
{{- $url := .Values.redis.url -}}
{{- $ref := "$(MCP_AUTHZ_REDIS_PASSWORD)" -}}
{{- if contains $ref $url -}}
{{- $url -}}
{{- else if hasPrefix "unix://" $url -}}
{{- printf "%s%spassword=%s" $url (ternary "&" "?" (contains "?" $url)) $ref -}}
{{- else -}}
{{- $parts := splitn "://" 2 $url -}}
{{- printf "%s://:%s@%s" $parts._0 $ref $parts._1 -}}
{{- end -}}
{{- end -}}

{{/* The env entries of the counter store that cannot sit in the ConfigMap. */}}
{{- define "mcp-authz.redisEnv" -}}
{{- if .Values.redis.passwordSecret.name }}
- name: MCP_AUTHZ_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.passwordSecret.name }}
      key: {{ .Values.redis.passwordSecret.key }}
- name: MCP_AUTHZ_REDIS_URL
  value: {{ include "mcp-authz.redisUrlWithPassword" . | quote }}
{{- else if .Values.redis.existingSecret.name }}
- name: MCP_AUTHZ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret.name }}
      key: {{ .Values.redis.existingSecret.key }}
{{- end }}
{{- end -}}

{{- define "mcp-authz.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* A container's securityContext: the restricted defaults, the container's own uid, then the
user's additions (values.schema.json refuses any that weaken the defaults). Call with
(dict "uid" 10001 "extra" .Values.securityContext); uid 0 for none. */}}
{{- define "mcp-authz.securityContext" -}}
{{- $base := fromYaml (include "mcp-authz.restricted" .) -}}
{{- if .uid -}}
{{- $_ := set $base "runAsUser" .uid -}}
{{- $_ := set $base "runAsGroup" .uid -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $base (deepCopy (.extra | default dict))) -}}
{{- end -}}

{{/* `mcp-authz validate` on the mounted policy: the pod's init container (the policy path
from the settings ConfigMap, the one serve reads) and, with (dict "root" . "hook" true), the
hook Job's, which runs before that ConfigMap exists. */}}
{{- define "mcp-authz.validateContainer" -}}
{{- $v := .root.Values -}}
- name: validate-policy
  image: {{ include "mcp-authz.image" $v.image | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .hook }}
  args: [validate, {{ printf "/etc/mcp-authz/%s" $v.policy.key | quote }}]
  {{- else }}
  args: [validate, "$(MCP_AUTHZ_POLICY)"]
  envFrom:
    - configMapRef:
        name: {{ include "mcp-authz.fullname" .root }}-env
  {{- end }}
  # The validation errors become the termination message: `kubectl describe pod` and the
  # pod's events show them.
  terminationMessagePolicy: FallbackToLogsOnError
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- include "mcp-authz.securityContext" (dict "uid" 10001 "extra" $v.securityContext) | nindent 4 }}
  volumeMounts:
    - name: policy
      mountPath: /etc/mcp-authz
      readOnly: true
{{- end -}}


{{/* Where the chart's pods may run, for the Deployment and the hook and test pods alike. */}}
{{- define "mcp-authz.placement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pod-level securityContext: the restricted defaults, then podSecurityContext. */}}
{{- define "mcp-authz.podSecurityContext" -}}
{{- $pod := dict "runAsNonRoot" true "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mustMergeOverwrite $pod (deepCopy .Values.podSecurityContext)) -}}
{{- end -}}
