{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "file-system.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already holds the chart name. */}}
{{- define "file-system.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "file-system.selectorLabels" -}}
app.kubernetes.io/name: {{ include "file-system.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "file-system.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "file-system.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "file-system.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding credentials: the user's own, or the chart's. */}}
{{- define "file-system.secretName" -}}
{{- default (include "file-system.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "file-system.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "file-system.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Database settings that are not secret, as container env entries. */}}
{{- define "file-system.databaseEnv" -}}
{{- if and (not .Values.database.url) .Values.database.host }}
- name: POSTGRES_HOST
  value: {{ .Values.database.host | quote }}
- name: POSTGRES_PORT
  value: {{ .Values.database.port | quote }}
- name: POSTGRES_USERNAME
  value: {{ .Values.database.username | quote }}
- name: POSTGRES_DB_NAME
  value: {{ .Values.database.dbName | quote }}
{{- end }}
{{- end -}}

{{/* Refuses a release that cannot work: no database configured. */}}
{{- define "file-system.validate" -}}
{{- if not (or .Values.database.url .Values.database.host .Values.existingSecret) -}}
{{- fail "set database.url or database.host (PostgreSQL), or existingSecret with DATABASE_URL" -}}
{{- end -}}
{{- end -}}
