{{/* The name of every object: the release name, or kairos-rs when the release is named so. */}}
{{- define "kairos-rs.fullname" -}}
{{- if eq .Release.Name .Chart.Name -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels the Deployment selects its pods by, and the Service and the PDB too. */}}
{{- define "kairos-rs.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kairos-rs.labels" -}}
{{ include "kairos-rs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Secret holding KAIROS_ADMIN_TOKEN and JWT_SECRET. */}}
{{- define "kairos-rs.secretName" -}}
{{- if .Values.secrets.create -}}
{{- include "kairos-rs.fullname" . -}}-secrets
{{- else -}}
{{- required "secrets.name: the Secret holding KAIROS_ADMIN_TOKEN and JWT_SECRET" .Values.secrets.name -}}
{{- end -}}
{{- end -}}

{{/*
The config.json: .Values.config with redis.url put where the config uses Redis; with
etcd.endpoints, only the instance's own members and cluster.config_store (the rest lives in
the etcd key).
*/}}
{{- define "kairos-rs.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.redis.url -}}
{{- if hasKey $config "rate_limiting" -}}
{{- $_ := set (index $config "rate_limiting") "redis_url" .Values.redis.url -}}
{{- end -}}
{{- if hasKey $config "caching" -}}
{{- $_ := set (index $config "caching") "redis_url" .Values.redis.url -}}
{{- end -}}
{{- end -}}
{{- if .Values.etcd.endpoints -}}
{{- $store := dict "type" "etcd" "endpoints" .Values.etcd.endpoints "key" .Values.etcd.key -}}
{{- $config = pick $config "version" "server" "admin" "logging" -}}
{{- $_ := set $config "cluster" (dict "config_store" $store) -}}
{{- end -}}
{{- toPrettyJson $config -}}
{{- end -}}
