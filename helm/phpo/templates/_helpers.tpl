{{- define "phpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "phpo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "phpo.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "phpo.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "phpo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "phpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selector labels of one component: include "phpo.selector" (list . "server") */}}
{{- define "phpo.selector" -}}
app.kubernetes.io/name: {{ include "phpo.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "phpo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "phpo.dbSecret" -}}
{{- if .Values.database.external.enabled -}}
{{- required "database.external.existingSecret: name the Secret holding the PostgreSQL URL" .Values.database.external.existingSecret -}}
{{- else -}}
{{- printf "%s-db" (include "phpo.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "phpo.dbKey" -}}
{{- if .Values.database.external.enabled -}}{{ .Values.database.external.key }}{{- else -}}url{{- end -}}
{{- end -}}

{{- define "phpo.agentTokenSecret" -}}
{{- default (printf "%s-agent-token" (include "phpo.fullname" .)) .Values.agents.tokenSecret.existingSecret -}}
{{- end -}}

{{- define "phpo.serverUrl" -}}
{{- default (printf "http://%s:%d" (include "phpo.fullname" .) (int .Values.service.port)) .Values.agents.serverUrl -}}
{{- end -}}

{{/* the environment every phpo container gets: settings from the ConfigMap, the database URL from its Secret */}}
{{- define "phpo.env" -}}
- name: PHPO_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "phpo.dbSecret" . }}
      key: {{ include "phpo.dbKey" . }}
{{- end -}}

{{- define "phpo.artifactClaim" -}}
{{- default (printf "%s-artifacts" (include "phpo.fullname" .)) .Values.artifacts.persistence.existingClaim -}}
{{- end -}}
